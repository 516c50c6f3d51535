"""`gotr1 sft` and `gotr1 grpo`: a YAML config plus ``--field value`` overrides, ``--resume``.

    gotr1 sft  --config configs/sft-world-tiny.yaml  [--max_steps 500 ...] [--resume]
    gotr1 grpo --config configs/grpo-world-tiny.yaml [--beta 0.04 ...]    [--resume [CKPT]]
    accelerate launch --config_file configs/accelerate/ddp.yaml -m gotr1.cli grpo --config ...

Every config field is an option (``--help`` lists them with their help and default); dashes and
underscores are interchangeable. Registration imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import os
import typing
from pathlib import Path
from typing import Any

from gotr1.errors import UserError
from gotr1.train.config import GRPOConfig, SFTConfig, TrainConfig, field_help, load_config

_RESERVED = {"config", "resume", "command", "func"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sft` and `grpo` subcommands to the `gotr1` parser."""
    sft = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning on GoT examples (chain tokens + image tokens)",
        description=(
            "Train the policy to write a GoT chain and then the image tokens (cross-entropy on "
            "both, prompt masked, CFG dropout). model: a preset (new model: the world tokenizer "
            "and VQ are trained first) or an HF folder. Writes checkpoints, train_log.jsonl, "
            "samples/ and final/ in output_dir."
        ),
        allow_abbrev=False,
    )
    _add_common(sft, SFTConfig)
    sft.set_defaults(func=run_sft, config_class=SFTConfig)

    grpo = subparsers.add_parser(
        "grpo",
        help="GRPO with the dual-stage GoT-R1 reward",
        description=(
            "Reinforce the policy with GRPO: rollouts (chain, then image), the dual-stage judge "
            "reward, group-normalised advantages, clipped ratio + k3 KL. Works under "
            "`accelerate launch` (each process holds whole groups)."
        ),
        allow_abbrev=False,
    )
    _add_common(grpo, GRPOConfig)
    grpo.set_defaults(func=run_grpo, config_class=GRPOConfig)

    signal = subparsers.add_parser(
        "grpo-signal",
        help="does a GRPO step's gradient carry signal? (before you train)",
        description=(
            "Take the gradients of the first --batches GRPO steps of a config at its start "
            "weights (its prompts, reward, advantages and loss) and measure the share of one "
            "batch's squared gradient that is signal rather than sampling noise, for the chain "
            "tokens, the image tokens and both, beside the same batches with shuffled advantages "
            "(no signal by construction). Prints a table; --json writes it. Single process; "
            "memory: 4 x batches gradient vectors on the CPU (small models or LoRA)."
        ),
        allow_abbrev=False,
    )
    signal.add_argument(
        "--batches", type=int, default=6, help="independent batches (>= 2; default: 6)"
    )
    signal.add_argument("--json", metavar="FILE", default=None, help="write the report here")
    _add_common(signal, GRPOConfig, with_resume=False)
    signal.set_defaults(func=run_grpo_signal, config_class=GRPOConfig)


def _add_common(
    parser: argparse.ArgumentParser, cls: type[TrainConfig], with_resume: bool = True
) -> None:
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML file of field: value")
    if with_resume:
        parser.add_argument(
            "--resume",
            nargs="?",
            const=True,
            default=False,
            metavar="CHECKPOINT",
            help="continue from the newest checkpoint in output_dir (or from CHECKPOINT)",
        )
    group = parser.add_argument_group(
        "config fields", "override any field of the YAML file (--name value)"
    )
    hints = typing.get_type_hints(cls)
    for name, (text, default) in field_help(cls).items():
        if name in _RESERVED:
            continue
        flags = [f"--{name}"]
        if "_" in name:
            flags.append(f"--{name.replace('_', '-')}")
        hint = hints[name]
        kwargs: dict[str, Any] = {
            "dest": f"field__{name}",
            "default": argparse.SUPPRESS,
            "metavar": _metavar(hint),
            "help": f"{text} (default: {default!r})".replace("%", "%%"),
        }
        if hint is bool:
            kwargs.update(nargs="?", const="true")
        group.add_argument(*flags, **kwargs)


def _metavar(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (list, tuple):
        return "A,B,..."
    if origin is dict:
        return "K=V,..."
    if args:
        hint = args[0]
    return {int: "INT", float: "FLOAT", bool: "BOOL", str: "TEXT"}.get(hint, "VALUE")


def overrides_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The config fields given on the command line, as {field: raw value}."""
    return {
        key[len("field__") :]: value
        for key, value in vars(args).items()
        if key.startswith("field__")
    }


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Load the YAML config (if any), apply the overrides, validate (errors name the field)."""
    return load_config(args.config_class, args.config, overrides_from_args(args))


def is_main_process() -> bool:
    """Whether this is the first (or only) process of a launch (torchrun / accelerate set RANK)."""
    return os.environ.get("RANK", "0") == "0"


def run_sft(args: argparse.Namespace) -> int:
    """Handler of `gotr1 sft`."""
    config = config_from_args(args)
    config.check_files()
    from gotr1.train.sft import train_sft

    final = train_sft(config, resume=args.resume)
    if is_main_process():
        print(f"sft: final model in {final}")
    return 0


def run_grpo(args: argparse.Namespace) -> int:
    """Handler of `gotr1 grpo`."""
    config = config_from_args(args)
    config.check_files()
    from gotr1.train.grpo import train_grpo

    final = train_grpo(config, resume=args.resume)
    if is_main_process():
        print(f"grpo: final policy in {final}")
    return 0


def run_grpo_signal(args: argparse.Namespace) -> int:
    """Handler of `gotr1 grpo-signal`."""
    from gotr1.train.signal import measure_gradient_signal

    if args.batches < 2:
        raise UserError(
            f"--batches must be >= 2 (pairs of independent gradients), got {args.batches}"
        )
    config = config_from_args(args)
    config.check_files()
    report = measure_gradient_signal(config, args.batches, log=print)
    print(report.table())
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"grpo-signal: report in {path}")
    return 0
