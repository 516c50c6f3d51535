"""Training: SFT and GRPO on accelerate, resumable, observable, multi-process.

- `config`: `SFTConfig`, `GRPOConfig` (per-field help, YAML + ``--field value`` overrides).
- `sft`: `train_world_tokenizer_and_vq` (a new world model), `train_sft`; `losses`: `sft_losses`.
- `grpo`: `group_advantages`, `grpo_loss` (the math), `train_grpo`.
- `checkpoint`, `runlog`, `data`, `runtime`: atomic checkpoints, train_log.jsonl and samples,
  data sources, accelerate plumbing.

Importing this package does not import torch; the functions below load it when called.
"""

from __future__ import annotations

import importlib
from typing import Any

from gotr1.train.config import ConfigError, GRPOConfig, SFTConfig, load_config

_LAZY = {
    "train_sft": "gotr1.train.sft",
    "train_world_tokenizer_and_vq": "gotr1.train.sft",
    "sft_losses": "gotr1.train.losses",
    "train_grpo": "gotr1.train.grpo",
    "grpo_loss": "gotr1.train.grpo",
    "group_advantages": "gotr1.train.grpo",
    "latest_checkpoint": "gotr1.train.checkpoint",
    "read_log": "gotr1.train.runlog",
}

__all__ = ["ConfigError", "GRPOConfig", "SFTConfig", "load_config", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gotr1.train' has no attribute {name!r}")
