"""One full GRPO step at a preset's shape: time per stage and peak memory.

    python benchmarks/grpo_step.py --preset world-tiny                 # CPU, float32
    python benchmarks/grpo_step.py --preset janus-pro-7b --lora --gradient-checkpointing \
        --prompts 1 --num-generations 16 --dtype bfloat16               # one 80 GB GPU

Random weights, no download. The step is the real one: `Policy.rollout` (chain, then CFG image
tokens), the world judge adapted to any image size (its scores are meaningless on random images,
its cost is real), group-normalised advantages, guided teacher-forced log-probs with gradients,
`grpo_loss`, backward. On CPU glibc's heap retention is limited as `gotr1 grpo` limits it
(`gotr1.train.memory.limit_heap_retention_for`). Prints a JSON record and writes it under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch

from gotr1.policy.io import new_policy
from gotr1.policy.lora import apply_lora
from gotr1.policy.policy import Policy
from gotr1.policy.presets import get_preset
from gotr1.policy.rollout import SamplingConfig
from gotr1.rewards import DualStageReward, RewardConfig, WorldJudge
from gotr1.train.grpo import group_advantages, grpo_loss, loss_normaliser
from gotr1.train.memory import PeakMemory, limit_heap_retention_for, resident_gib
from gotr1.train.runtime import enable_gradient_checkpointing
from gotr1.world import benchmark_prompts


def _in_use_gib(device: torch.device) -> float:
    """Memory in use now: CUDA's allocated bytes on GPU, the process's resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**30
    return resident_gib()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Run one GRPO step and report its stages."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="world-tiny")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--num-generations", type=int, default=8, help="group size N")
    parser.add_argument("--cfg-weight", type=float, default=5.0)
    parser.add_argument("--max-chain-tokens", type=int, default=128)
    parser.add_argument("--image-logprob", choices=("guided", "conditional"), default="guided")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument(
        "--lora", action="store_true", help="LoRA r=alpha=32 (reference = adapters off)"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None, help="text layers (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    preset = get_preset(args.preset)
    if args.layers:
        preset = dataclasses.replace(preset, text=dict(preset.text, num_hidden_layers=args.layers))
    # The preset's own vocabulary (Janus-Pro: 102,400 rows, more than any tokenizer here).
    model, processor = new_policy(preset, device=device, vocab_size=preset.text["vocab_size"])
    model = model.to(device=device, dtype=dtype)
    limit_heap_retention_for(model, device.type)  # as `gotr1 grpo` does
    if args.lora:
        model = apply_lora(model, r=32, alpha=32)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    policy = Policy(model, processor)
    reward = DualStageReward(WorldJudge(), RewardConfig(combination="product"))
    prompts = [p for p, _ in benchmark_prompts("test", n=args.prompts, seed=0)]
    sampling = SamplingConfig(cfg_weight=args.cfg_weight, max_chain_tokens=args.max_chain_tokens)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times: dict[str, float] = {}
    memory: dict[str, float] = {"before_step": _in_use_gib(device)}
    peak = PeakMemory(device)
    peak.reset()

    start = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(0)
    rollouts = policy.rollout(prompts, args.num_generations, sampling, generator)
    _sync(device)
    times["rollout"] = time.perf_counter() - start
    memory["rollout_peak"] = peak.peak_gib()
    peak.reset()

    start = time.perf_counter()
    rewards = reward(rollouts)
    totals = torch.as_tensor(rewards.total, dtype=torch.float32).nan_to_num(0.0).to(device)
    advantages, _, _ = group_advantages(totals, rollouts.group_ids.to(device))
    times["reward"] = time.perf_counter() - start

    start = time.perf_counter()
    model.train()
    new = policy.logprobs(
        rollouts, image_logprob=args.image_logprob, micro_batch_size=args.micro_batch_size
    )
    new_tokens = torch.cat([new.chain, new.image], dim=1)
    weights = torch.cat([rollouts.chain_mask, torch.ones_like(rollouts.image_ids)], dim=1).to(
        new_tokens
    )
    normaliser = loss_normaliser("grpo", weights, weights.shape[1])
    loss, _ = grpo_loss(new_tokens, new_tokens.detach(), None, advantages, weights, normaliser)
    _sync(device)
    times["logprobs_forward"] = time.perf_counter() - start
    start = time.perf_counter()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    times["backward_and_step"] = time.perf_counter() - start
    memory["update_peak"] = peak.peak_gib()

    rows = len(rollouts)
    record = {
        "preset": args.preset,
        "text_layers": preset.text["num_hidden_layers"],
        "vocab_size": preset.text["vocab_size"],
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "dtype": args.dtype,
        "lora": args.lora,
        "gradient_checkpointing": args.gradient_checkpointing,
        "prompts": args.prompts,
        "num_generations": args.num_generations,
        "rows": rows,
        "cfg_weight": args.cfg_weight,
        "image_logprob": args.image_logprob,
        "chain_tokens_mean": float(rollouts.chain_mask.sum(1).float().mean()),
        "image_tokens": int(rollouts.image_ids.shape[1]),
        "seconds": {k: round(v, 3) for k, v in times.items()},
        "step_seconds": round(sum(times.values()), 3),
        "peak_memory_gib": {k: round(v, 3) for k, v in memory.items()},
        "memory_kind": peak.kind,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    depth = f"-{args.layers}l" if args.layers else ""
    name = f"grpo-step-{args.preset}{depth}-{device.type}.json"
    (args.out / name).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
