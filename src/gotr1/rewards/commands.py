"""`gotr1 score`: judge one (prompt, chain, image) and print every reward component as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from gotr1.chain import parse_chain
from gotr1.errors import UserError
from gotr1.rewards import (
    DualStageReward,
    OpenAIJudge,
    OpenAIJudgeConfig,
    QwenLocalConfig,
    QwenLocalJudge,
    RewardConfig,
    WorldJudge,
)

JUDGES = ("world", "qwen", "openai")
COMPONENT_NAMES = ("sem", "spa", "ri", "pi")


def register(subparsers: Any) -> None:
    """Add the `score` and `convert-hps` subcommands (cheap: nothing heavy is imported here)."""
    parser = subparsers.add_parser(
        "score",
        help="score one prompt, chain and image with a judge; print the reward components as JSON",
        description=(
            "Judge one sample the way GRPO does and print R_sem, R_spa, R_RI, R_PI, the total and "
            "any judge failures as JSON, with the planned objects and where the judge found them."
        ),
    )
    parser.add_argument("--judge", choices=JUDGES, default="world", help="which judge answers")
    parser.add_argument("--prompt", required=True, help="the text prompt")
    parser.add_argument(
        "--chain", required=True, help="file holding the GoT chain text ('-': stdin)"
    )
    parser.add_argument("--image", required=True, help="the generated image file")
    group = parser.add_argument_group("combination")
    group.add_argument(
        "--combination",
        choices=("product", "sum", "weighted_sum"),
        default="product",
        help="product: R_PI*(R_sem+R_spa)*R_RI (the paper); sum; weighted_sum",
    )
    group.add_argument(
        "--components",
        default="sem,spa,ri,pi",
        help="comma-separated subset of sem,spa,ri,pi to compute and combine",
    )
    group.add_argument(
        "--weights", default=None, help="weighted_sum weights, e.g. sem=1,spa=1,ri=2,pi=1"
    )
    group.add_argument(
        "--spatial-input",
        choices=("canvas", "text"),
        default="canvas",
        help="R_spa judges the drawn layout (canvas) or the box coordinates as text",
    )
    group.add_argument(
        "--layout-size", type=int, default=448, help="side of the drawn layout, pixels"
    )
    group.add_argument(
        "--on-failure",
        choices=("zero", "drop"),
        default="zero",
        help="a judge failure scores 0 (zero: total computed with 0 there) or drops the sample "
        "(drop: total null, kept false), as GRPO's reward_on_failure",
    )
    qwen = parser.add_argument_group("qwen and openai judges")
    qwen.add_argument(
        "--model", default=None, help="checkpoint folder / hub id (qwen) or model name (openai)"
    )
    qwen.add_argument("--box-format", choices=("qwen2.5", "grid1000", "unit"), default="qwen2.5")
    qwen.add_argument(
        "--judge-image-size", type=int, default=448, help="longer side of images sent to the judge"
    )
    qwen.add_argument(
        "--device", default=None, help="qwen: torch device (default: cuda if available)"
    )
    qwen.add_argument("--dtype", default="auto", help="qwen: auto, bfloat16, float16 or float32")
    qwen.add_argument("--local-files-only", action="store_true", help="qwen: never download")
    qwen.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="openai: server root")
    qwen.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="openai: variable holding the key"
    )
    qwen.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request")
    qwen.add_argument("--max-retries", type=int, default=4, help="openai: retries per request")
    parser.set_defaults(func=run_score)

    convert = subparsers.add_parser(
        "convert-hps",
        help="convert the HPS v2.1 open_clip checkpoint into a transformers CLIPModel folder",
        description="Read HPS_v2.1_compressed.pt (tensors only) and write it over the config and "
        "tokenizer of --base as a CLIPModel folder (safetensors), for GRPO's hps_model.",
    )
    convert.add_argument("--checkpoint", required=True, help="HPS_v2.1_compressed.pt")
    convert.add_argument(
        "--base",
        default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        help="transformers port of the checkpoint's architecture (default: open_clip ViT-H-14)",
    )
    convert.add_argument("--out", required=True, help="output folder")
    convert.add_argument("--local-files-only", action="store_true", help="never download --base")
    convert.set_defaults(func=run_convert_hps)


def run_convert_hps(args: argparse.Namespace) -> int:
    """Handler of ``gotr1 convert-hps``."""
    from gotr1.rewards.hps import convert_open_clip_checkpoint

    out = convert_open_clip_checkpoint(args.checkpoint, args.base, args.out, args.local_files_only)
    print(f"wrote {out} (a transformers CLIPModel; pass it as hps_model)")
    return 0


def _read_inputs(args: argparse.Namespace) -> tuple[str, Any]:
    if args.chain == "-":
        chain_text = sys.stdin.read()
    else:
        path = Path(args.chain)
        if not path.is_file():
            raise UserError(f"--chain: no such file {path}")
        try:
            chain_text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"--chain: cannot read {path} as UTF-8 text ({error})") from error
    image_path = Path(args.image)
    if not image_path.is_file():
        raise UserError(f"--image: no such file {image_path}")
    try:
        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"--image: {image_path} is not a readable image ({error})") from error
    return chain_text, image


def _reward_config(args: argparse.Namespace) -> Any:
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    weights = dict.fromkeys(COMPONENT_NAMES, 1.0)
    if args.weights:
        for item in args.weights.split(","):
            name, _, value = item.partition("=")
            try:
                weights[name.strip()] = float(value)
            except ValueError as error:
                raise UserError(f"--weights: {item!r} is not name=number") from error
    try:
        return RewardConfig(
            components=components,
            combination=args.combination,
            weights=weights,
            spatial_input=args.spatial_input,
            layout_size=args.layout_size,
            on_failure=args.on_failure,
        )
    except ValueError as error:
        raise UserError(f"--components/--weights/--layout-size: {error}") from error


def _judge(args: argparse.Namespace) -> Any:
    try:
        if args.judge == "world":
            return WorldJudge()
        if args.judge == "qwen":
            config = QwenLocalConfig(
                model=args.model or QwenLocalConfig.model,
                device=args.device,
                dtype=args.dtype,
                box_format=args.box_format,
                image_size=args.judge_image_size,
                local_files_only=args.local_files_only,
            )
            try:
                return QwenLocalJudge(config)
            except OSError as error:
                raise UserError(
                    f"--model: cannot load a Qwen2.5-VL checkpoint from {config.model!r} ({error})"
                ) from error

        return OpenAIJudge(
            OpenAIJudgeConfig(
                base_url=args.base_url,
                model=args.model or OpenAIJudgeConfig.model,
                api_key_env=args.api_key_env,
                box_format=args.box_format,
                image_size=args.judge_image_size,
                timeout=args.timeout,
                max_retries=args.max_retries,
                max_concurrency=4,
            )
        )
    except ValueError as error:
        raise UserError(str(error)) from error


def run_score(args: argparse.Namespace) -> int:
    """Handler of `gotr1 score`: judge one sample and print a JSON report on stdout."""
    chain_text, image = _read_inputs(args)
    config = _reward_config(args)
    judge = _judge(args)
    chain = parse_chain(chain_text)
    try:
        rewards = DualStageReward(judge, config).score([args.prompt], [chain], [image])
    finally:
        close = getattr(judge, "close", None)
        if close is not None:
            close()
    row = rewards.sample(0)
    report: dict[str, Any] = {
        "judge": args.judge,
        "prompt": args.prompt,
        "components": {name: row[name] for name in COMPONENT_NAMES},
        "total": row["total"],
        "kept": row["keep"],
        "on_failure": config.on_failure,
        "combination": config.combination,
        "included": list(config.components),
        "failed": row["failed"],
    }
    if "failure_reasons" in row:
        report["failure_reasons"] = row["failure_reasons"]
    objects = []
    for index, obj in enumerate(chain.objects):
        entry: dict[str, Any] = {"name": obj.name, "box": list(obj.box)}
        if "object_ious" in row:
            entry["iou"] = row["object_ious"][index]
            entry["grounded"] = row["grounded"][index]
        objects.append(entry)
    report["chain"] = {"objects": objects, "errors": chain.errors}
    report["seconds"] = {k: round(v, 4) for k, v in rewards.timings.items()}
    print(json.dumps(report, indent=2))
    return 0
