"""The demo model and one batch of each kind of work it does, for the CPU benchmarks.

`demo_inputs` returns the ``world-demo`` policy (random weights, or a trained folder), an SFT batch
of world examples, and sampled GRPO rollouts, so every benchmark times the same work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gotr1.demo.config import DEMO_PRESET
from gotr1.policy.io import new_policy
from gotr1.policy.policy import Policy
from gotr1.policy.presets import preset_from_dict
from gotr1.policy.rollout import SamplingConfig
from gotr1.train.data import BadRows, WorldExamples, make_sft_batch
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
    image_size = policy.model.config.vision_config.image_size
    examples = WorldExamples(seed=0, image_size=image_size)
    batch = make_sft_batch(
        [(i, examples[i]) for i in range(sft_rows)],
        policy.tokenizer,
        policy.model.model.vqmodel,
        image_size,
        cfg_dropout=0.1,
        seed=0,
        max_chain_tokens=256,
        bad_rows=BadRows(),
    )
    assert batch is not None
    prompt_list = [p for p, _ in benchmark_prompts("train", n=prompts, seed=0)]
    sampling = SamplingConfig(max_chain_tokens=chain_tokens, cfg_weight=cfg_weight)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        rollouts = policy.rollout(prompt_list, num_generations, sampling, generator)
    return DemoInputs(name, policy, batch, prompt_list, sampling, rollouts)


def write_result(folder: Path, name: str, record: dict[str, Any]) -> Path:
    """Write a benchmark's JSON record as ``<folder>/<name>.json``, say where, return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path
