"""Where the demo's time goes: per stage (from a run's metrics.json) and per operator.

    python benchmarks/demo_profile.py                          # the demo's model, random weights
    python benchmarks/demo_profile.py --demo runs/demo         # a finished demo: its stage times
                                                               # and its trained SFT model

Profiles, with torch.profiler on the CPU, the three kinds of work the demo repeats: an SFT step
(chain + image cross-entropy, forward, backward), a GRPO update (guided teacher-forced log-probs
of sampled rollouts, forward and backward) and a rollout (chains, then image tokens with CFG),
each in the precision `mixed_precision: auto` picks on this CPU (or --precision). Prints each
one's wall time and its top operators by self CPU time, with their share, and writes JSON under
benchmarks/results/ naming the CPU's capability and the precision, so the next speed-up starts
from measurements.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from demo_inputs import cpu_parser, cpu_precision, demo_inputs, run_record, write_result
from gotr1.train.losses import sft_losses


def profiled(work: Callable[[], None], top: int) -> dict:
    """Wall seconds of one call of `work` (after a warm-up call) and its top operators."""
    work()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        work()
        seconds = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "seconds": round(seconds, 4),
        "operators": len(events),
        "calls": sum(e.count for e in events),
        "top": [
            {
                "op": e.key,
                "self_ms": round(e.self_cpu_time_total / 1000, 2),
                "share": round(e.self_cpu_time_total / total, 3),
                "calls": e.count,
            }
            for e in events[:top]
        ],
    }


def main() -> None:
    """Profile the demo's three kinds of work and report where the time goes."""
    parser = cpu_parser(__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="a finished demo run folder")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    choice = cpu_precision(args.precision, args.threads)
    autocast = choice.chosen == "bf16"
    model_dir = args.demo / "sft" / "final" if args.demo else None
    # the demo's GRPO shapes per process and update pass: 4 prompts x 8 samples = 32 rollouts
    inputs = demo_inputs(model_dir, sft_rows=32, prompts=4, num_generations=8)
    policy, rollouts = inputs.policy, inputs.rollouts

    def in_precision(step: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
                loss = step()
            loss.backward()
            policy.model.zero_grad(set_to_none=True)

        return run

    def grpo_update() -> torch.Tensor:
        lp = policy.logprobs(rollouts, image_logprob="guided")
        return -(lp.image.sum() + (lp.chain * rollouts.chain_mask).sum())

    def rollout() -> None:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            policy.rollout(inputs.prompts, 8, inputs.sampling, generator)

    policy.model.train()
    work = {
        "sft_step": profiled(
            in_precision(lambda: sft_losses(policy.model, inputs.sft_batch)["loss"]), args.top
        ),
        "grpo_update_pass": profiled(in_precision(grpo_update), args.top),
        "rollout": profiled(rollout, args.top),
    }
    record = {
        **run_record(inputs.name, choice),
        "rows": {"sft": len(inputs.sft_batch), "grpo": len(rollouts)},
        "work": work,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    if args.demo:
        metrics = json.loads((args.demo / "metrics.json").read_text())
        record["demo_stage_seconds"] = {k: v["seconds"] for k, v in metrics["stages"].items()}
    for name, found in work.items():
        print(f"{name}: {found['seconds']:.3f} s, {found['calls']} operator calls")
        for op in found["top"]:
            print(f"  {op['share']:6.1%}  {op['self_ms']:9.1f} ms  {op['calls']:6d}x  {op['op']}")
    write_result(args.out, f"demo-profile-{inputs.name}-{choice.chosen}", record)


if __name__ == "__main__":
    main()
