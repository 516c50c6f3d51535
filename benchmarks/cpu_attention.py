"""Training steps on CPU under bf16 autocast: transformers' bf16 attention vs float32 attention.

    python benchmarks/cpu_attention.py                       # the demo's model, one thread
    python benchmarks/cpu_attention.py --model runs/demo/sft/final   # a trained demo model

Random weights (chains capped at a trained model's typical length) or a trained model folder; no
download. Times, alternating the variants so that machine noise falls on all
of them alike: an SFT step (chain + image cross-entropy, forward and backward, batch of world
examples) and a GRPO update (guided teacher-forced log-probs of sampled rollouts, forward and
backward) of the ``world-demo`` model, each (a) in float32, (b) under bf16 autocast with
transformers' SDPA attention, which then runs in bf16, and (c) under bf16 autocast with
`gotr1.policy.attention.float32_cpu_sdpa` (what training uses). Prints medians and the ratios
(b)/(c) and (a)/(c), and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from demo_inputs import demo_inputs
from gotr1.policy.attention import float32_cpu_sdpa
from gotr1.train.losses import sft_losses

VARIANTS: dict[str, tuple[bool, Callable]] = {
    "float32": (False, sdpa_attention_forward),
    "bf16_autocast_bf16_attention": (True, sdpa_attention_forward),
    "bf16_autocast_float32_attention": (True, float32_cpu_sdpa),
}


def _timed(step: Callable[[], torch.Tensor], autocast: bool, attention: Callable) -> float:
    """Seconds for one forward + backward of `step` in a variant."""
    AttentionInterface.register("sdpa", attention)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    start = time.perf_counter()
    with context:
        loss = step()
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    """Time the variants side by side and report medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a trained policy folder (default: random)")
    parser.add_argument("--chain-tokens", type=int, default=48, help="rollout chain cap")
    parser.add_argument("--sft-batch", type=int, default=32, help="SFT rows (the demo's batch)")
    parser.add_argument("--prompts", type=int, default=4, help="GRPO prompts (x group size rows)")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    inputs = demo_inputs(
        args.model, args.sft_batch, args.prompts, args.num_generations, args.chain_tokens
    )
    name, policy, batch, rollouts = inputs.name, inputs.policy, inputs.sft_batch, inputs.rollouts
    model = policy.model

    def grpo_update() -> torch.Tensor:
        lp = policy.logprobs(rollouts, image_logprob="guided")
        return -(lp.image.sum() + (lp.chain * rollouts.chain_mask).sum())

    steps = {
        "sft_step": lambda: sft_losses(model, batch)["loss"],
        "grpo_update": grpo_update,
    }
    model.train()
    seconds: dict[str, dict[str, list[float]]] = {s: {v: [] for v in VARIANTS} for s in steps}
    for step_name, step in steps.items():
        for autocast, attention in VARIANTS.values():  # warm-up
            _timed(step, autocast, attention)
        for _ in range(args.repeats):
            for variant, (autocast, attention) in VARIANTS.items():
                seconds[step_name][variant].append(_timed(step, autocast, attention))
                model.zero_grad(set_to_none=True)
    AttentionInterface.register("sdpa", sdpa_attention_forward)

    medians = {s: {v: statistics.median(t) for v, t in by.items()} for s, by in seconds.items()}
    record = {
        "model": name,
        "device": platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "sft_rows": len(batch),
        "grpo_rows": len(rollouts),
        "grpo_chain_tokens_mean": round(float(rollouts.chain_mask.sum(1).float().mean()), 1),
        "median_seconds": {s: {v: round(t, 4) for v, t in m.items()} for s, m in medians.items()},
        "speedup_of_float32_attention": {
            s: {
                "vs_bf16_attention": round(
                    m["bf16_autocast_bf16_attention"] / m["bf16_autocast_float32_attention"], 3
                ),
                "vs_float32": round(m["float32"] / m["bf16_autocast_float32_attention"], 3),
            }
            for s, m in medians.items()
        },
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cpu-attention-{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
