"""`gotr1 demo` and `gotr1 ablate`.

    gotr1 demo   --out DIR [--quick] [--seed S] [--seeds 0 1 2] [--threads N] [--set F=V ...]
    gotr1 ablate --out DIR [--quick] [--seed S] [--from-demo DEMO_DIR] [--arms product sum ...]

Registration imports nothing heavy; the handlers import torch when they run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gotr1.demo.config import DemoConfig, parse_settings
from gotr1.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` and `ablate` subcommands to the `gotr1` parser."""
    demo = subparsers.add_parser(
        "demo",
        help="the whole recipe in the built-in world on CPU: tokenizer, SFT, GRPO, benchmark, report",
        description=(
            "Train an image tokenizer and a GoT model from scratch on the built-in world of "
            "coloured shapes, improve it with GRPO and the dual-stage reward (exact world judge, "
            "product of the four rewards), score both on held-out prompts and write "
            "DIR/metrics.json, DIR/report.html and DIR/train_log.jsonl. Finished stages are "
            "cached in DIR: a second run skips them."
        ),
    )
    _add_run_options(demo, "a smoke run: small budgets, 60 held-out prompts")
    demo.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="run one demo per seed in DIR/seed-S (sharing DIR/tokenizer) and write "
        "DIR/seeds.json and DIR/seeds.md with the per-seed and mean results",
    )
    _add_threads_and_set(demo)
    demo.set_defaults(func=run_demo_command)

    ablate = subparsers.add_parser(
        "ablate",
        help="the paper's reward ablations in the world, from one SFT checkpoint",
        description=(
            "GRPO from one SFT checkpoint with each reward arm of the paper's ablation (all four "
            "as product; as sum; without R_sem; without R_spa; R_PI only; R_RI only; R_sem + "
            "R_spa only), the same seed and budget per arm; every arm is scored on the held-out "
            "benchmark. Writes DIR/ablation.md and DIR/ablation.json."
        ),
    )
    _add_run_options(ablate, "small budgets (a smoke run)")
    ablate.add_argument(
        "--from-demo",
        type=Path,
        default=None,
        metavar="DEMO_DIR",
        help="reuse the tokenizer and SFT stages of a demo run (same settings) instead of "
        "training them in DIR",
    )
    ablate.add_argument(
        "--arms", nargs="+", default=None, metavar="ARM", help="only these arms (see ablate.ARMS)"
    )
    _add_threads_and_set(ablate)
    ablate.set_defaults(func=run_ablate_command)


def _add_run_options(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """--out, --quick and --seed, as `gotr1 demo` and `gotr1 ablate` share them."""
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seed", type=int, default=0, help="seed of SFT, GRPO and sampling")


def _add_threads_and_set(parser: argparse.ArgumentParser) -> None:
    """--threads, --no-progress and --set FIELD=VALUE (`gotr1.demo.config.parse_settings`)."""
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        dest="settings",
        help="change a demo setting (gotr1.demo.config.DemoConfig; repeatable), e.g. "
        "--set grpo_steps=24 --set grpo_num_prompts=64; lists are comma-separated; stages "
        "whose settings change rerun",
    )


def _demo_config(args: argparse.Namespace, **overrides: object) -> DemoConfig:
    values: dict[str, object] = dict(
        out=str(args.out), seed=args.seed, threads=args.threads, progress=not args.no_progress
    )
    values.update(parse_settings(args.settings))
    values.update(overrides)
    if args.quick:
        return DemoConfig.quick_settings(**values)
    return DemoConfig.full(**values)


def run_demo_command(args: argparse.Namespace) -> int:
    """Handler of `gotr1 demo`."""
    if args.seeds is None:
        from gotr1.demo.pipeline import run_demo

        run_demo(_demo_config(args))
        return 0
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds repeats a seed: {args.seeds}")
    from gotr1.demo.pipeline import run_seeds

    configs = [
        _demo_config(
            args,
            seed=seed,
            out=str(args.out / f"seed-{seed}"),
            tokenizer_dir=str(args.out / "tokenizer"),
        )
        for seed in args.seeds
    ]
    run_seeds(configs, args.out)
    return 0


def run_ablate_command(args: argparse.Namespace) -> int:
    """Handler of `gotr1 ablate`."""
    from gotr1.demo.ablate import run_ablation

    run_ablation(_demo_config(args), arms=args.arms, from_demo=args.from_demo)
    return 0
