"""Float32 attention on CPU under bf16: the same result as float32 SDPA, in the dtype bf16 SDPA
gives, and transformers' own function everywhere else; training runs install it."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from gotr1.policy.attention import float32_cpu_sdpa, use_float32_cpu_attention
from gotr1.train.config import SFTConfig
from gotr1.train.runtime import make_accelerator


class _Attention(torch.nn.Module):
    is_causal = True


@pytest.fixture
def qkv_mask() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, 2, 40, 16, generator=generator) for _ in range(3))
    mask = torch.ones(40, 40, dtype=torch.bool).tril()[None, None].expand(3, 1, 40, 40).clone()
    mask[0, :, :, :5] = False  # a left-padded row
    mask[0, :, torch.arange(5), torch.arange(5)] = True
    return query, key, value, mask


@pytest.fixture
def restore_sdpa():
    yield
    AttentionInterface.register("sdpa", sdpa_attention_forward)


def test_under_bf16_autocast_it_computes_in_float32(qkv_mask):
    query, key, value, mask = qkv_mask
    module = _Attention()
    reference, _ = sdpa_attention_forward(module, query, key, value, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = float32_cpu_sdpa(module, query, key, value, mask)
        theirs, _ = sdpa_attention_forward(module, query, key, value, mask)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert torch.equal(ours, reference.to(torch.bfloat16))
    # transformers' own function really ran in bf16 there: its result is less accurate.
    assert (theirs.float() - reference).abs().mean() > 1.5 * (ours.float() - reference).abs().mean()


def test_bf16_inputs_compute_in_float32_and_float32_inputs_pass_through(qkv_mask):
    query, key, value, mask = qkv_mask
    module = _Attention()
    reference, _ = sdpa_attention_forward(module, query, key, value, mask)
    low = [t.to(torch.bfloat16) for t in (query, key, value)]
    ours, _ = float32_cpu_sdpa(module, *low, mask)
    expected, _ = sdpa_attention_forward(module, *(t.float() for t in low), mask)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, expected.to(torch.bfloat16))
    same, _ = float32_cpu_sdpa(module, query, key, value, mask)
    assert torch.equal(same, reference)


def test_gradients_flow_through_the_float32_path(qkv_mask):
    query, key, value, mask = (t.clone().requires_grad_(t.is_floating_point()) for t in qkv_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = float32_cpu_sdpa(_Attention(), query, key, value, mask)
    output.float().square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (query, key, value))


def test_training_runs_route_sdpa_through_it(tmp_path, restore_sdpa):
    AttentionInterface.register("sdpa", sdpa_attention_forward)
    make_accelerator(SFTConfig(output_dir=str(tmp_path), progress=False))
    assert AttentionInterface._global_mapping["sdpa"] is float32_cpu_sdpa
    use_float32_cpu_attention()  # idempotent
    assert AttentionInterface._global_mapping["sdpa"] is float32_cpu_sdpa
