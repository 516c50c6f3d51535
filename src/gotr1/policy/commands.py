"""`gotr1` subcommands of the policy: ``convert`` and ``train-vq``.

Registration imports nothing heavy; each handler imports torch/transformers when it runs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from gotr1.errors import UserError
from gotr1.policy.presets import get_preset, janus_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the policy subcommands to the `gotr1` parser."""
    register_convert(subparsers)
    register_train_vq(subparsers)


# --- convert -----------------------------------------------------------------------------------


def register_convert(subparsers: argparse._SubParsersAction) -> None:
    """``gotr1 convert SRC DST``: DeepSeek-format Janus / GoT-R1 checkpoint -> HF folder."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a DeepSeek-format Janus/GoT-R1 checkpoint into a Hugging Face folder",
        description=(
            "Convert an original DeepSeek-format Janus-Pro or GoT-R1 checkpoint (config.json with "
            "model_type multi_modality, safetensors or pytorch_model*.bin weights (tensors only), "
            "tokenizer) into a plain Hugging Face "
            "folder that JanusForConditionalGeneration.from_pretrained opens. The GoT markup tokens "
            "are added to the tokenizer when missing."
        ),
    )
    parser.add_argument("src", help="folder of the DeepSeek-format checkpoint")
    parser.add_argument("dst", help="output folder (created; must be empty unless --overwrite)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="cast floating weights to this dtype (default: keep the checkpoint's)",
    )
    parser.add_argument(
        "--markup-init",
        choices=("keep", "mean"),
        default="keep",
        help=(
            "embedding rows of newly added markup tokens that already exist in the matrix: keep "
            "them (GoT-R1 trained them; default) or reset them to the mean embedding (base Janus-Pro)"
        ),
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """Handler of ``gotr1 convert``."""
    from gotr1.policy.convert import convert_checkpoint

    dst = convert_checkpoint(
        args.src, args.dst, dtype=args.dtype, markup_init=args.markup_init, overwrite=args.overwrite
    )
    print(f"converted {args.src} -> {dst}")
    return 0


# --- train-vq ----------------------------------------------------------------------------------


def register_train_vq(subparsers: argparse._SubParsersAction) -> None:
    """``gotr1 train-vq --out DIR``: train the world image tokenizer (a JanusVQVAE)."""
    parser = subparsers.add_parser(
        "train-vq",
        help="train the world image tokenizer (a tiny JanusVQVAE) on world renders",
        description=(
            "Train a JanusVQVAE of a preset on random world renders and save it as a Hugging Face "
            "folder (JanusVQVAE.from_pretrained opens it), with report.json: detector agreement on "
            "reconstructions of held-out scenes, codebook usage, PSNR and training time."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--preset", default="world-tiny", help="preset name or YAML path")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=None, help="renders per step")
    parser.add_argument("--learning-rate", type=float, default=None, help="peak learning rate")
    parser.add_argument(
        "--foreground-weight", type=float, default=None, help="extra loss weight of object pixels"
    )
    parser.add_argument(
        "--foreground-margin",
        type=int,
        default=None,
        help="background pixels this close to an object get its weight (default 2, for 64 px)",
    )
    parser.add_argument(
        "--consistency-weight",
        type=float,
        default=None,
        help="weight of the loss pulling identical pixel patches to one latent (0: off)",
    )
    parser.add_argument(
        "--consistency-from",
        type=float,
        default=None,
        help="fraction of steps before the consistency loss starts (0-1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed")
    parser.add_argument("--eval-scenes", type=int, default=500, help="held-out scenes to evaluate")
    parser.set_defaults(func=run_train_vq)


def run_train_vq(args: argparse.Namespace) -> int:
    """Handler of ``gotr1 train-vq``."""
    import torch
    from transformers.models.janus.modeling_janus import JanusVQVAE

    from gotr1.policy.vq import VQTrainConfig, evaluate_vq, save_report, train_vq

    try:
        preset = get_preset(args.preset)
    except (KeyError, ValueError, OSError) as error:
        raise UserError(f"--preset: {error}") from error
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
    }
    for name, value in overrides.items():
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    weights = {
        "foreground_weight": args.foreground_weight,
        "foreground_margin": args.foreground_margin,
        "consistency_weight": args.consistency_weight,
    }
    for name, value in weights.items():
        if value is not None and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.consistency_from is not None and not 0 <= args.consistency_from <= 1:
        raise UserError(f"--consistency-from must be in [0, 1], got {args.consistency_from}")
    settings = overrides | weights | {"consistency_from": args.consistency_from}
    config = replace(
        VQTrainConfig(seed=args.seed, image_size=preset.image_size),
        **{k: v for k, v in settings.items() if v is not None},
    )
    torch.manual_seed(args.seed)
    vq = JanusVQVAE(janus_config(preset).vq_config)
    train_stats = train_vq(vq, config)
    eval_stats = evaluate_vq(vq, scenes=args.eval_scenes, image_size=preset.image_size)
    args.out.mkdir(parents=True, exist_ok=True)
    vq.save_pretrained(args.out)
    save_report(args.out / "report.json", train_stats, eval_stats, config)
    print(json.dumps({"train": train_stats, "eval": eval_stats}, indent=2))
    return 0
