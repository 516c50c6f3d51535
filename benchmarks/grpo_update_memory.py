"""Peak memory and time of a GRPO update on CPU by how many rollouts one backward pass holds.

    python benchmarks/grpo_update_memory.py                                 # random weights
    python benchmarks/grpo_update_memory.py --model runs/demo/sft/final     # a trained demo model

The demo's GRPO stage gives each of its two processes 32 prompts x 8 samples = 256 rollouts a step
and takes them into its update `DemoConfig.grpo_update_rollouts` at a time (gradient
accumulation). This measures what that choice costs and saves, at the demo's shape: each variant
runs in a fresh process (a process's peak resident memory only grows), which samples the same
rollouts (the demo's CFG, chain cap and sampling), then runs the update's forward and backward as
training does (bf16 autocast, float32 CPU attention, guided teacher-forced log-probs) in passes of
the variant's size. The loss is a stand-in, the summed log-probs of chain and image tokens: the
same tokens `grpo_loss` reads, elementwise there too; the reference and old-policy log-probs, which
training computes without gradients before the update, are left out. Variants alternate over the
repeats so that machine noise falls on all of them alike. Prints the median peak memory and update
seconds of each, their ratios to the largest pass size given (named one_pass_over_N when it covers
all N rollouts), and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _max_rss_gib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(
    model: Path | None, prompts: int, generations: int, per_pass: int, threads: int
) -> dict:
    """One variant in this process: sample the rollouts, then one update in passes of `per_pass`
    rollouts; peak memory after sampling and after the update, and the update's seconds."""
    import torch

    from gotr1.demo.config import DEMO_PRESET, DemoConfig
    from gotr1.policy.attention import use_float32_cpu_attention
    from gotr1.policy.io import new_policy
    from gotr1.policy.policy import Policy
    from gotr1.policy.presets import preset_from_dict
    from gotr1.policy.rollout import SamplingConfig
    from gotr1.world import benchmark_prompts

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    use_float32_cpu_attention()
    policy = Policy.load(model) if model else Policy(*new_policy(preset_from_dict(DEMO_PRESET)))
    demo = DemoConfig()
    texts = [p for p, _ in benchmark_prompts("train", n=prompts, seed=0)]
    with torch.no_grad():
        rollouts = policy.rollout(
            texts,
            generations,
            SamplingConfig(max_chain_tokens=demo.max_chain_tokens, cfg_weight=demo.cfg_weight),
            torch.Generator().manual_seed(0),
        )
    after_sampling = _max_rss_gib()
    policy.model.train()
    start = time.perf_counter()
    for rows in torch.arange(len(rollouts)).tensor_split(-(-len(rollouts) // per_pass)):
        batch = rollouts.select(rows)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp = policy.logprobs(batch, image_logprob="guided")
            loss = -(lp.image.sum() + (lp.chain * batch.chain_mask).sum()) / len(rollouts)
        loss.backward()
    seconds = time.perf_counter() - start
    return {
        "rollouts": len(rollouts),
        "chain_tokens_mean": round(float(rollouts.chain_mask.sum(1).float().mean()), 1),
        "peak_gib_after_sampling": round(after_sampling, 3),
        "peak_gib": round(_max_rss_gib(), 3),
        "update_seconds": round(seconds, 3),
    }


def main() -> None:
    """Run the variants side by side in fresh processes and report medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a trained policy folder (default: random)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts of one process's step")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument(
        "--per-pass", type=int, nargs="+", default=[256, 64, 32], help="rollouts a pass holds"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one variant, JSON out
    args = parser.parse_args()
    if args.child:
        record = measure(args.model, args.prompts, args.num_generations, args.child, args.threads)
        print(json.dumps(record))
        return

    runs: dict[int, list[dict]] = {k: [] for k in args.per_pass}
    for _ in range(args.repeats):
        for per_pass in args.per_pass:
            command = [sys.executable, __file__, "--child", str(per_pass)]
            command += [
                "--prompts",
                str(args.prompts),
                "--num-generations",
                str(args.num_generations),
            ]
            command += ["--threads", str(args.threads)]
            if args.model:
                command += ["--model", str(args.model)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"variant {per_pass} failed:\n{done.stderr[-2000:]}")
            runs[per_pass].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def median(per_pass: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[per_pass])

    one_pass = max(args.per_pass)
    rollouts = runs[one_pass][0]["rollouts"]
    baseline = f"one_pass_over_{rollouts}" if one_pass >= rollouts else f"passes_of_{one_pass}"
    name = "world-demo-" + (f"trained-{args.model.parts[-2]}" if args.model else "random")
    record = {
        "model": name,
        "device": platform.processor() or "cpu",
        "threads": args.threads,
        "repeats": args.repeats,
        "rollouts": rollouts,
        "chain_tokens_mean": runs[one_pass][0]["chain_tokens_mean"],
        "median": {
            k: {
                key: median(k, key)
                for key in ("peak_gib", "peak_gib_after_sampling", "update_seconds")
            }
            for k in args.per_pass
        },
        f"ratio_to_{baseline}": {
            k: {
                "peak_memory": round(median(k, "peak_gib") / median(one_pass, "peak_gib"), 3),
                "update_seconds": round(
                    median(k, "update_seconds") / median(one_pass, "update_seconds"), 3
                ),
            }
            for k in args.per_pass
        },
    }
    print(json.dumps(record, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"grpo-update-memory-{name}-cpu.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
