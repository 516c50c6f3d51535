"""``gotr1 generate``: write GoT chains and images for one prompt from a policy folder.

    gotr1 generate --model DIR "a red circle left of a blue square" --num 4 --cfg-weight 5 --out OUT
    gotr1 generate ... --cfg-weight 3 --plan-cfg-weight 6     # two-condition guidance
    gotr1 generate ... --plan-candidates 4 --plan-judge openai --judge-url URL --judge-model NAME

For each sample ``OUT/sample_XX.png`` (the image), ``OUT/sample_XX_chain.txt`` (the chain text) and
``OUT/sample_XX_layout.png`` (the chain's boxes drawn on a blank canvas) are written, plus
``OUT/samples.json`` (prompt, settings, chains, parsed objects, parse errors, and with plan
candidates the plan judge and each sample's plan record). The chains are printed. Works for world-tiny folders and real Janus-Pro / GoT-R1 checkpoints in HF format alike.

Registration imports nothing heavy; the handler imports torch when it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gotr1.errors import UserError
from gotr1.eval.judge_flags import (
    add_judge_args,
    build_plan_judge,
    check_plan_judge,
    close_judge,
    plan_judge_label,
)

if TYPE_CHECKING:
    from gotr1.eval.plans import PlanOptions
    from gotr1.policy.sampling import SamplingConfig


def add_generate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``generate`` subcommand to the `gotr1` parser and return its parser."""
    parser = subparsers.add_parser(
        "generate",
        help="sample GoT chains and images for a prompt from a policy folder",
        description=(
            "Sample chains (prose with object boxes) and then images for PROMPT with a policy "
            "folder (a Hugging Face Janus folder, or a LoRA adapter folder). Writes each "
            "sample's image, chain text and drawn layout under --out and prints the chains."
        ),
    )
    parser.add_argument("prompt", help="the caption to draw, e.g. 'a red circle above a square'")
    parser.add_argument("--model", required=True, help="policy folder (or hub id)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--num", type=int, default=4, help="number of samples (default 4)")
    parser.add_argument(
        "--cfg-weight", type=float, default=5.0, help="classifier-free guidance (default 5; 1=off)"
    )
    add_plan_cfg_arg(parser)
    parser.add_argument("--seed", type=int, default=None, help="random seed (reproducible)")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="chain temperature (default 1; 0=greedy)"
    )
    parser.add_argument(
        "--image-temperature",
        type=float,
        default=1.0,
        help="image-token temperature (default 1; 0=greedy)",
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling of the chain")
    parser.add_argument(
        "--max-chain-tokens", type=int, default=600, help="chain length cap (default 600)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="weights dtype (default float32 on CPU, bfloat16 on CUDA)",
    )
    parser.add_argument(
        "--layout-size", type=int, default=448, help="side of the drawn layout in pixels"
    )
    add_plan_args(parser)
    add_judge_args(
        parser,
        "world (the world's exact judge: a real model's prompts are outside the world grammar, "
        "so every plan scores 0 and the first is drawn; use qwen or openai there)",
    )
    parser.set_defaults(func=run_generate)
    return parser


def add_plan_cfg_arg(parser: argparse.ArgumentParser) -> None:
    """The two-condition guidance flag (`SamplingConfig.plan_cfg_weight`), beside --cfg-weight."""
    parser.add_argument(
        "--plan-cfg-weight",
        type=float,
        default=None,
        metavar="W",
        help="guide the image by the prompt and the plan separately: logits = u + cfg_weight * "
        "(c_prompt - u) + W * (c_full - c_prompt), c_prompt with the chain blanked (needs a model "
        "trained with prompt_only_dropout); default: one-condition guidance",
    )


def add_plan_args(parser: argparse.ArgumentParser) -> None:
    """The plan-aware generation flags (`gotr1.eval.plans`). `eval world` scores plans with the
    world judge; `gotr1 generate` and `eval compbench|geneval` with their --plan-judge."""
    parser.add_argument(
        "--plan-candidates",
        type=int,
        default=1,
        metavar="K",
        help="sample K plans per image and draw the best by the chain stage of the reward "
        "(R_sem + R_spa; the world judge, or --plan-judge where offered); 1: draw the plan "
        "sampled (default)",
    )
    parser.add_argument(
        "--repair-plans",
        action="store_true",
        help="before drawing, clamp boxes, make the prompt's stated relation hold and separate "
        "overlapping objects in the plan",
    )
    parser.add_argument(
        "--plan-judge-noise",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="add Gaussian noise of standard deviation SIGMA to each candidate's plan score "
        "before choosing (a judge that disagrees with people; seeded by --seed); records keep "
        "the judge's own scores (default 0)",
    )


def plan_options(args: argparse.Namespace) -> PlanOptions:
    """The `PlanOptions` of the plan flags (a one-line error for a bad value)."""
    from gotr1.eval.plans import PlanOptions

    return PlanOptions(
        candidates=args.plan_candidates,
        repair=args.repair_plans,
        judge_noise=args.plan_judge_noise,
    )


def sampling_config(args: argparse.Namespace) -> SamplingConfig:
    """The `SamplingConfig` of the sampling flags of `generate` and `eval` (a one-line error for a
    bad value); flags a command lacks (--max-batch-rows, --compile-decode) keep their defaults."""
    from gotr1.policy.sampling import SamplingConfig

    try:
        return SamplingConfig(
            text_temperature=args.temperature,
            image_temperature=args.image_temperature,
            top_p=args.top_p,
            cfg_weight=args.cfg_weight,
            plan_cfg_weight=args.plan_cfg_weight,
            max_chain_tokens=args.max_chain_tokens,
            max_batch_rows=getattr(args, "max_batch_rows", None),
            compile_decode=getattr(args, "compile_decode", False),
        )
    except ValueError as error:
        raise UserError(str(error)) from None


def run_generate(args: argparse.Namespace) -> int:
    """Handler of ``gotr1 generate``; returns the exit code."""
    import torch

    from gotr1.chain import render_layout
    from gotr1.eval.plans import judge_noise_generator, sample_batch
    from gotr1.policy.policy import Policy

    if not args.prompt.strip():
        raise UserError("the prompt is empty")
    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}")
    if args.layout_size < 16:
        raise UserError(f"--layout-size must be at least 16, got {args.layout_size}")
    plans = plan_options(args)
    check_plan_judge(args, plans.candidates)
    judge_name = args.plan_judge or "world"
    sampling = sampling_config(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available")
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")

    try:
        policy = Policy.load(args.model, dtype=dtype, device=device)
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise UserError(f"--model {args.model}: cannot load a policy from it ({error})") from None
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    judge = build_plan_judge(judge_name, args) if plans.candidates > 1 else None
    try:
        rollouts, records = sample_batch(
            policy, [args.prompt], args.num, sampling, generator, plans, judge,
            judge_noise_generator(args.seed),
        )  # fmt: skip
    finally:
        close_judge(judge)

    out.mkdir(parents=True, exist_ok=True)
    samples = []
    for index in range(len(rollouts)):
        stem = out / f"sample_{index:02d}"
        chain, text = rollouts.chains[index], rollouts.chain_texts[index]
        rollouts.images[index].save(f"{stem}.png")
        Path(f"{stem}_chain.txt").write_text(text + "\n", encoding="utf-8")
        render_layout(chain, size=args.layout_size).save(f"{stem}_layout.png")
        truncated = bool(rollouts.truncated[index])
        samples.append(
            {
                "image": f"{stem.name}.png",
                "layout": f"{stem.name}_layout.png",
                "chain": text,
                "truncated": truncated,
                "objects": [{"name": o.name, "box": list(o.box)} for o in chain.objects],
                "errors": list(chain.errors),
                **({"plan": records[index].to_dict()} if records else {}),
            }
        )
        flag = " (truncated at --max-chain-tokens)" if truncated else ""
        print(f"[{index}] {stem.name}.png{flag}\n{text}\n")
    summary = {
        "prompt": args.prompt,
        "model": str(args.model),
        "seed": args.seed,
        "sampling": {
            "text_temperature": sampling.text_temperature,
            "image_temperature": sampling.image_temperature,
            "top_p": sampling.top_p,
            "cfg_weight": sampling.cfg_weight,
            "plan_cfg_weight": sampling.plan_cfg_weight,
            "max_chain_tokens": sampling.max_chain_tokens,
        },
        "plans": plans.to_dict(),
        **({"plan_judge": plan_judge_label(judge_name, args)} if plans.candidates > 1 else {}),
        "samples": samples,
    }
    (out / "samples.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(samples)} samples to {out}")
    return 0
