"""Attention in float32 on CPU when the model runs in bfloat16 or float16.

PyTorch's CPU attention kernels are slower in bfloat16 than in float32, while bfloat16 matrix
products are faster (AVX512-BF16). On the demo's trained SFT model under bf16 autocast
(`benchmarks/cpu_attention.py`, one thread, medians of alternated runs) float32 attention made an
SFT step 1.17x and a guided GRPO update 1.43x faster than bf16 attention. `use_float32_cpu_attention`
makes transformers' "sdpa" attention compute in float32 exactly there; everywhere else (GPUs,
float32 models) it calls transformers' own function unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

_REDUCED = (torch.bfloat16, torch.float16)


def float32_cpu_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """transformers' SDPA attention, computed in float32 where it would run in reduced precision on
    CPU (reduced-precision inputs, or CPU autocast to a reduced dtype); the output has the dtype
    it would have had."""
    if query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _REDUCED:
        output_dtype = torch.get_autocast_dtype("cpu")
    elif query.dtype in _REDUCED:
        output_dtype = query.dtype
    else:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        output, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return output.to(output_dtype), weights


def use_float32_cpu_attention() -> None:
    """Route transformers' "sdpa" attention through `float32_cpu_sdpa` (idempotent; affects only
    reduced-precision attention on CPU)."""
    AttentionInterface.register("sdpa", float32_cpu_sdpa)
