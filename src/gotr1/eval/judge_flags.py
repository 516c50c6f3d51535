"""The judge flags of `gotr1 generate` and `gotr1 eval compbench|geneval` (``--plan-judge`` and
``--judge-*``) and the judges they build: one definition for every command that takes them.

Registration imports nothing heavy; the builders import the judges when they run.
"""

from __future__ import annotations

import argparse
from typing import Any

from gotr1.errors import UserError

PLAN_JUDGES = ("qwen", "openai", "world")
"""Judges that can score plans (`--plan-judge`): local Qwen2.5-VL, an OpenAI-compatible server,
the world's exact judge."""


def add_judge_args(parser: argparse.ArgumentParser, plan_judge_default: str) -> None:
    """Add ``--plan-judge`` (its default described by ``plan_judge_default``) and the flags that
    configure the local Qwen2.5-VL judge and the OpenAI-compatible server."""
    parser.add_argument(
        "--plan-judge",
        choices=PLAN_JUDGES,
        default=None,
        help="the judge whose chain stage scores --plan-candidates: qwen (local, --judge-model), "
        f"openai (the server at --judge-url) or world; default: {plan_judge_default}",
    )
    parser.add_argument(
        "--judge-model",
        default="Qwen/Qwen2.5-VL-7B-Instruct",
        help="Qwen2.5-VL folder or hub id (qwen), or the model name sent to the server (openai)",
    )
    parser.add_argument(
        "--judge-url", default="http://127.0.0.1:8000/v1", help="server root (openai)"
    )
    parser.add_argument(
        "--judge-device", default=None, help="device of the local judge and scorer models"
    )
    parser.add_argument(
        "--judge-dtype",
        default="auto",
        choices=("auto", "bfloat16", "float16", "float32"),
        help="dtype of the local judge (auto: its own) and scorer models (auto: float32)",
    )
    parser.add_argument(
        "--judge-batch-size",
        type=int,
        default=16,
        help="requests per local judge or scorer-model batch",
    )
    parser.add_argument(
        "--judge-concurrency", type=int, default=8, help="requests in flight (openai)"
    )
    parser.add_argument(
        "--judge-api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the server's API key (openai; never a flag value)",
    )
    parser.add_argument(
        "--judge-local-files-only",
        action="store_true",
        help="never download the local judge or scorer models",
    )


def check_plan_judge(args: argparse.Namespace, candidates: int) -> None:
    """Refuse ``--plan-judge`` when there is one plan candidate (nothing to score)."""
    if args.plan_judge and candidates < 2:
        raise UserError("--plan-judge needs --plan-candidates K > 1 (it scores the candidates)")


def plan_judge_label(name: str, args: argparse.Namespace) -> str:
    """How a plan judge is named in generation records: ``world``, or ``<judge>:<--judge-model>``."""
    return name if name == "world" else f"{name}:{args.judge_model}"


def openai_config(args: argparse.Namespace) -> Any:
    """The OpenAI-compatible server the judge flags name (--judge-url, --judge-model)."""
    from gotr1.rewards import OpenAIJudgeConfig

    try:
        return OpenAIJudgeConfig(
            base_url=args.judge_url,
            model=args.judge_model,
            max_concurrency=args.judge_concurrency,
            api_key_env=args.judge_api_key_env,
        )
    except ValueError as error:
        raise UserError(f"--judge-url/--judge-concurrency: {error}") from None


def qwen_local_judge(args: argparse.Namespace, hint: str = "") -> Any:
    """The local Qwen2.5-VL judge the judge flags describe (a one-line error, ending with
    ``hint`` when given, if it cannot load)."""
    from gotr1.rewards import QwenLocalConfig, QwenLocalJudge

    try:
        config = QwenLocalConfig(
            model=args.judge_model,
            device=args.judge_device,
            dtype=args.judge_dtype,
            batch_size=args.judge_batch_size,
            local_files_only=args.judge_local_files_only,
        )
        return QwenLocalJudge(config)
    except (OSError, ValueError) as error:
        tail = f"; {hint}" if hint else ""
        raise UserError(
            f"--judge-model {args.judge_model}: cannot load a Qwen2.5-VL judge ({error}){tail}"
        ) from None


def build_plan_judge(name: str, args: argparse.Namespace, hint: str = "") -> Any:
    """The judge of that `PLAN_JUDGES` name, configured by the judge flags (``hint``: as
    `qwen_local_judge`'s)."""
    if name == "world":
        from gotr1.rewards import WorldJudge

        return WorldJudge()
    if name == "openai":
        from gotr1.rewards import OpenAIJudge

        return OpenAIJudge(openai_config(args))
    return qwen_local_judge(args, hint)


def close_judge(judge: Any) -> None:
    """Release what a judge holds (a server connection pool), where it has a ``close``."""
    close = getattr(judge, "close", None)
    if close is not None:
        close()
