"""The `gotr1` command: one subcommand per job, each registered by the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gotr1 import __version__
from gotr1.errors import UserError

# Each module here defines `register(subparsers)`, adding its subcommands with a `func` default
# that takes the parsed namespace and returns an exit code. Registration must stay cheap (no
# torch import): handlers import what they need when they run.
COMMAND_MODULES: tuple[str, ...] = (
    "gotr1.world.commands",
    "gotr1.policy.commands",
    "gotr1.rewards.commands",
    "gotr1.eval.commands",
    "gotr1.train.commands",
    "gotr1.demo.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the full `gotr1` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="gotr1",
        description="Reasoning-driven image generation (GoT-R1): SFT, GRPO, judges, benchmarks.",
    )

    parser.add_argument("--version", action="version", version=f"gotr1 {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gotr1` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"gotr1 {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gotr1 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
