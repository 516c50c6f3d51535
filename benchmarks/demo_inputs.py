"""The demo model and one batch of each kind of work it does, for the CPU benchmarks.

`demo_inputs` returns the ``world-demo`` policy (random weights, or a trained folder), an SFT batch
of world examples, and sampled GRPO rollouts, so every benchmark times the same work.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gotr1.demo.config import DEMO_PRESET
from gotr1.policy.attention import use_float32_cpu_attention
from gotr1.policy.io import new_policy
from gotr1.policy.policy import Policy
from gotr1.policy.presets import preset_from_dict
from gotr1.policy.rollout import SamplingConfig
from gotr1.train.data import BadRows, SFTBatch, WorldExamples, make_sft_batch
from gotr1.train.precision import PrecisionChoice, choose_mixed_precision
from gotr1.world import benchmark_prompts


@dataclass
class DemoInputs:
    """A policy and the batches the benchmarks time."""

    name: str
    policy: Policy
    sft_batch: Any
    prompts: list[str]
    sampling: SamplingConfig
    rollouts: Any


def demo_inputs(
    model: Path | None,
    sft_rows: int = 32,
    prompts: int = 4,
    num_generations: int = 8,
    chain_tokens: int = 48,
    cfg_weight: float = 3.0,
) -> DemoInputs:
    """The demo's policy (``model`` folder, or random weights) with an SFT batch of `sft_rows`
    world examples and rollouts of `prompts` x `num_generations` (chains capped at
    `chain_tokens`, a trained model's typical length)."""
    if model is not None:
        policy = Policy.load(model)
        name = f"world-demo-trained-{model.parts[-2]}"
    else:
        policy = Policy(*new_policy(preset_from_dict(DEMO_PRESET)))
        name = "world-demo-random"
    (batch,) = world_sft_batches(policy, 1, rows=sft_rows, seed=0, max_chain_tokens=256)
    prompt_list = [p for p, _ in benchmark_prompts("train", n=prompts, seed=0)]
    sampling = SamplingConfig(max_chain_tokens=chain_tokens, cfg_weight=cfg_weight)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        rollouts = policy.rollout(prompt_list, num_generations, sampling, generator)
    return DemoInputs(name, policy, batch, prompt_list, sampling, rollouts)


def world_sft_batches(
    policy: Policy, count: int, rows: int = 32, seed: int = 1, max_chain_tokens: int = 600
) -> list[SFTBatch]:
    """`count` distinct SFT batches of `rows` world examples (generator `seed`), with the demo's
    condition dropout."""
    image_size = policy.model.config.vision_config.image_size
    examples = WorldExamples(seed=seed, image_size=image_size)
    batches = []
    for k in range(count):
        batch = make_sft_batch(
            [(i, examples[i]) for i in range(rows * k, rows * k + rows)],
            policy.tokenizer,
            policy.model.model.vqmodel.eval(),
            image_size,
            cfg_dropout=0.1,
            seed=0,
            max_chain_tokens=max_chain_tokens,
            bad_rows=BadRows(),
        )
        assert batch is not None
        batches.append(batch)
    return batches


def cpu_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the CPU benchmarks' shared options: --precision (auto, no, bf16),
    --threads (default 1) and --out (where the JSON goes, default benchmarks/results/)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--precision", choices=("auto", "no", "bf16"), default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return parser


def cpu_precision(precision: str, threads: int) -> PrecisionChoice:
    """Set torch's threads and the demo's float32 CPU attention, and resolve `precision` (auto,
    no, bf16) for this CPU as `mixed_precision` does."""
    torch.set_num_threads(threads)
    use_float32_cpu_attention()
    return choose_mixed_precision(precision, "cpu")


def run_record(model: str, choice: PrecisionChoice) -> dict[str, Any]:
    """The head of a CPU benchmark's JSON record: the model, the CPU's capability and cores, the
    precision chosen, torch's version and threads."""
    return {
        "model": model,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "mixed_precision": choice.to_dict(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def write_result(folder: Path, name: str, record: dict[str, Any]) -> Path:
    """Write a benchmark's JSON record as ``<folder>/<name>.json``, say where, return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path
