"""`gotr1` subcommands of the policy: ``convert`` (and ``generate``, added by the rollout work).

Registration imports nothing heavy; each handler imports torch/transformers when it runs.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the policy subcommands to the `gotr1` parser."""
    register_convert(subparsers)
    register_generate(subparsers)


# --- convert -----------------------------------------------------------------------------------


def register_convert(subparsers: argparse._SubParsersAction) -> None:
    """``gotr1 convert SRC DST``: DeepSeek-format Janus / GoT-R1 checkpoint -> HF folder."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a DeepSeek-format Janus/GoT-R1 checkpoint into a Hugging Face folder",
        description=(
            "Convert an original DeepSeek-format Janus-Pro or GoT-R1 checkpoint (config.json with "
            "model_type multi_modality, safetensors weights, tokenizer) into a plain Hugging Face "
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


# --- generate (rollout work) ---------------------------------------------------------------------


def register_generate(subparsers: argparse._SubParsersAction) -> None:
    """``gotr1 generate --model DIR PROMPT --out OUT``: chains and images (gotr1.policy.generate)."""
    from gotr1.policy.generate import add_generate_parser

    add_generate_parser(subparsers)
