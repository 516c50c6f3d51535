"""`gotr1 world ...` subcommands: look at the embedded world and check its detector."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gotr1.errors import UserError
from gotr1.world.chains import CHAIN_COLORS
from gotr1.world.detector_check import detector_accuracy
from gotr1.world.preview import write_preview


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `gotr1 world preview` and `gotr1 world detector-check`."""
    world = subparsers.add_parser(
        "world", help="the embedded compositional world of coloured shapes"
    )
    world_sub = world.add_subparsers(dest="world_command", metavar="WORLD_COMMAND", required=True)

    preview = world_sub.add_parser(
        "preview", help="write an HTML page of sampled prompts, scenes, chains"
    )
    preview.add_argument("--out", type=Path, required=True, help="folder for index.html and images")
    preview.add_argument(
        "--per-category", type=int, default=4, help="examples per category and split"
    )
    preview.add_argument("--seed", type=int, default=0, help="sampling seed")
    preview.add_argument("--size", type=int, default=64, help="scene render size in pixels")
    preview.add_argument(
        "--chain-colors",
        choices=CHAIN_COLORS,
        default="drawn",
        help="chains name each object's drawn colour (as SFT trains by default) or the prompt's words",
    )
    preview.set_defaults(func=_preview)

    check = world_sub.add_parser(
        "detector-check", help="measure the pixel detector on random scenes, clean and degraded"
    )
    check.add_argument("--scenes", type=int, default=1000, help="number of random scenes")
    check.add_argument("--seed", type=int, default=0, help="sampling seed")
    check.add_argument("--blur", type=float, default=0.6, help="Gaussian blur radius (degraded)")
    check.add_argument("--noise", type=float, default=8.0, help="pixel noise std (degraded)")
    check.add_argument("--size", type=int, default=64, help="render size in pixels")
    check.set_defaults(func=_detector_check)


def _preview(args: argparse.Namespace) -> int:
    """Handler of `gotr1 world preview`."""
    if args.per_category < 1 or args.size < 16:
        raise UserError("--per-category must be >= 1 and --size >= 16")
    page = write_preview(
        args.out,
        per_category=args.per_category,
        seed=args.seed,
        size=args.size,
        chain_colors=args.chain_colors,
    )
    print(f"wrote {page}")
    return 0


def _detector_check(args: argparse.Namespace) -> int:
    """Handler of `gotr1 world detector-check`."""
    if args.scenes < 1 or args.size < 16 or args.blur < 0 or args.noise < 0:
        raise UserError("--scenes must be >= 1, --size >= 16, --blur and --noise >= 0")
    report = detector_accuracy(args.scenes, args.seed, args.blur, args.noise, args.size)
    print(json.dumps(report, indent=2))
    return 0
