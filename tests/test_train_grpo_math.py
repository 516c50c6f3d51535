"""The GRPO math: group-normalised advantages (and the collapse guard), the clipped objective, k3
KL, the four loss aggregations, and micro-batches that add up to the batch loss."""

from __future__ import annotations

import math

import pytest
import torch

from gotr1.train.grpo import group_advantages, grpo_loss, loss_normaliser


def test_group_advantages_match_the_definition():
    torch.manual_seed(0)
    rewards = torch.rand(12)
    groups = torch.arange(3).repeat_interleave(4)
    advantages, zero_std, group_std = group_advantages(rewards, groups, "group")
    for g in range(3):
        r = rewards[g * 4 : (g + 1) * 4]
        expected = (r - r.mean()) / (r.std() + 1e-4)
        assert torch.allclose(advantages[g * 4 : (g + 1) * 4], expected, atol=1e-6)
        assert group_std[g] == pytest.approx(float(r.std()), rel=1e-5)
    assert not zero_std.any()
    batch, _, _ = group_advantages(rewards, groups, "batch", batch_std=rewards.std())
    centred = rewards - rewards.view(3, 4).mean(1).repeat_interleave(4)
    assert torch.allclose(batch, centred / (rewards.std() + 1e-4), atol=1e-6)
    none, _, _ = group_advantages(rewards, groups, "none")
    assert torch.allclose(none, centred, atol=1e-6)
    with pytest.raises(ValueError, match="batch_std"):
        group_advantages(rewards, groups, "batch")


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value", [0.0, 0.1, 1 / 3, 0.7, 1e-9])
def test_collapse_guard_equal_rewards_give_zero_advantage(scale, value):
    rewards = torch.tensor([value] * 6 + [0.2, 0.9, 0.4])  # two collapsed groups of 3, one live
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    advantages, zero_std, _ = group_advantages(rewards, groups, scale, batch_std=rewards.std())
    assert torch.isfinite(advantages).all()
    assert (advantages[:6] == 0).all() and zero_std[:6].all()
    assert not zero_std[6:].any() and advantages[6:].abs().sum() > 0
    # All-equal batch: nothing learns, nothing breaks, even through the loss.
    flat, zero_std, _ = group_advantages(torch.full((8,), value), torch.zeros(8, dtype=torch.long))
    assert (flat == 0).all() and zero_std.all()
    new = torch.randn(8, 5, requires_grad=True)
    loss, _ = grpo_loss(new, new.detach(), None, flat, torch.ones(8, 5), 8.0)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(new.grad).all() and (new.grad == 0).all()


def test_ratio_one_gives_the_policy_gradient():
    torch.manual_seed(1)
    new = torch.randn(4, 6, requires_grad=True)
    advantages = torch.tensor([1.0, -2.0, 0.5, 0.0])
    weights = torch.ones(4, 6)
    weights[0, 4:] = 0  # padding
    loss, stats = grpo_loss(new, new.detach(), None, advantages, weights, 4.0, loss_type="grpo")
    loss.backward()
    # d/d logp of -mean_rows(mean_tokens(A * ratio)) = -A / (tokens of the row) / rows
    expected = -advantages[:, None] * weights / weights.sum(1, keepdim=True) / 4
    assert torch.allclose(new.grad, expected, atol=1e-7)
    assert stats["clip_low"] == 0 and stats["clip_high"] == 0 and stats["tokens"] == 22


def test_clipping_stops_the_gradient_outside_the_trust_region():
    old = torch.zeros(4, 1)
    new = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]])).requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, stats = grpo_loss(
        new, old, None, advantages, torch.ones(4, 1), 4.0, 0.2, 0.28, loss_type="dapo"
    )
    loss.backward()
    grad = new.grad.flatten()
    # ratio 1.5 > 1.28 with A > 0: clipped, no gradient; with A < 0 the unclipped term is the min.
    assert grad[0] == 0 and grad[1] == pytest.approx(1.5 / 4)
    # ratio 0.5 < 0.8 with A < 0: clipped; with A > 0 the unclipped term is the min.
    assert grad[3] == 0 and grad[2] == pytest.approx(-0.5 / 4)
    assert stats["clip_high"] == 1 and stats["clip_low"] == 1


def test_k3_kl_penalty():
    new = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0, -1.5]])
    loss, stats = grpo_loss(
        new, new.detach(), ref, torch.zeros(1), torch.ones(1, 3), 3.0, beta=0.5, loss_type="bnpo"
    )
    d = ref - new.detach()
    kl = torch.exp(d) - d - 1
    assert (kl >= 0).all() and kl[0, 0] == 0
    assert loss.item() == pytest.approx(0.5 * kl.mean().item(), rel=1e-6)
    assert stats["kl"].item() == pytest.approx(kl.sum().item(), rel=1e-6)
    loss.backward()  # d/dnew of beta*(e^(ref-new) - (ref-new) - 1) = beta*(1 - e^(ref-new)) / T
    assert torch.allclose(new.grad, 0.5 * (1 - torch.exp(d)) / 3, atol=1e-7)


def test_loss_types_aggregate_as_documented():
    # Per-token values worked out by hand (clip range [0.8, 1.2], loss = -min(r*A, clip(r)*A)):
    # row 0, A = +1, ratios 1.0 and 1.5 (clipped to 1.2): -1.0, -1.2; weights 1, 1 -> sum -2.2
    # row 1, A = -1, ratio 0.5 (clipped up to 0.8, the min): +0.8; its 2nd token is padding
    # row 2, A = 0.5, ratios 1: -0.5 each; weights 2 and 0.5 -> sum -1.25
    ratios = torch.tensor([[1.0, 1.5], [0.5, 2.0], [1.0, 1.0]])
    new, old = torch.log(ratios), torch.zeros(3, 2)
    advantages = torch.tensor([1.0, -1.0, 0.5])
    weights = torch.tensor([[1.0, 1.0], [1.0, 0.0], [2.0, 0.5]])
    expected = {
        "grpo": (-2.2 / 2 + 0.8 / 1 - 1.25 / 2.5) / 3,  # each row's weighted mean, then rows
        "bnpo": (-2.2 + 0.8 - 1.25) / 5.5,  # over this batch's weighted tokens
        "dapo": (-2.2 + 0.8 - 1.25) / 5.5,  # the same on one process
        "dr_grpo": (-2.2 + 0.8 - 1.25) / (3 * 10),  # rows x max_length
    }
    for loss_type, value in expected.items():
        normaliser = loss_normaliser(loss_type, weights, max_length=10)
        loss, stats = grpo_loss(
            new, old, None, advantages, weights, normaliser, loss_type=loss_type
        )
        assert loss.item() == pytest.approx(value, rel=1e-6), loss_type
        assert stats["clip_high"] == 1 and stats["clip_low"] == 1 and stats["tokens"] == 5


def test_micro_batches_add_up_to_the_batch_loss():
    torch.manual_seed(3)
    new = torch.randn(6, 7, requires_grad=True)
    old = (new + 0.1 * torch.randn(6, 7)).detach()
    ref = (new + 0.1 * torch.randn(6, 7)).detach()
    advantages = torch.randn(6)
    weights = (torch.rand(6, 7) > 0.3).float()
    weights[2] = 0  # a row left out of the loss (dropped group)
    for loss_type in ("grpo", "bnpo", "dapo", "dr_grpo"):
        norm = loss_normaliser(loss_type, weights, max_length=7)
        full, _ = grpo_loss(new, old, ref, advantages, weights, norm, 0.2, 0.3, 0.1, loss_type)
        (full_grad,) = torch.autograd.grad(full, new)
        parts = [
            grpo_loss(
                new[r], old[r], ref[r], advantages[r], weights[r], norm, 0.2, 0.3, 0.1, loss_type
            )[0]
            for r in torch.arange(6).tensor_split(4)
        ]
        total = sum(parts)
        (part_grad,) = torch.autograd.grad(total, new)
        assert total.item() == pytest.approx(full.item(), rel=1e-6, abs=1e-9), loss_type
        assert torch.allclose(part_grad, full_grad, atol=1e-7), loss_type


def test_normalisers_across_processes_give_the_global_mean():
    # Two processes with different numbers of rows/tokens in the loss: DDP averages the two
    # gradients, so each divides by (global count / 2).
    weights = [torch.ones(4, 3), torch.tensor([[1.0, 1, 1], [0, 0, 0], [0, 0, 0], [1, 1, 0]])]
    rows = [4, 2]
    tokens = [12, 5]
    for loss_type, counts in (("grpo", rows), ("dapo", tokens)):
        total = sum(counts)
        for index, w in enumerate(weights):
            other = counts[1 - index]
            value = loss_normaliser(
                loss_type, w, 3, global_sum=lambda x, o=other: x + o, num_processes=2
            )
            assert value == pytest.approx(total / 2)
    assert loss_normaliser("bnpo", weights[1], 3, lambda x: x + 12, 2) == 5  # local tokens
    assert loss_normaliser("dr_grpo", weights[1], 9) == 4 * 9
    assert loss_normaliser("grpo", torch.zeros(2, 3), 3) == 1.0  # nothing in the loss: no 0/0
    assert math.isfinite(loss_normaliser("dapo", torch.zeros(2, 3), 3))


def _judged_batch(sem, spa, total):
    """A judged batch of two groups of three rows (2 chain + 3 image tokens) as `score_rollouts`
    reads it."""
    from types import SimpleNamespace

    import numpy as np

    from gotr1.rewards.combine import Rewards

    rows = len(total)
    nan = np.full(rows, np.nan)
    rewards = Rewards(
        sem=np.array(sem), spa=np.array(spa), ri=nan, pi=nan, total=np.array(total),
        keep=np.ones(rows, dtype=bool), failed={}, timings={},
    )  # fmt: skip
    rollouts = SimpleNamespace(
        group_ids=torch.arange(2).repeat_interleave(3),
        chain_mask=torch.ones(rows, 2),
        truncated=torch.zeros(rows, dtype=torch.bool),
        image_ids=torch.zeros(rows, 3, dtype=torch.long),
    )
    return rollouts, rewards


def test_plan_credit_gives_chain_tokens_the_plans_own_advantage():
    from gotr1.train.config import GRPOConfig
    from gotr1.train.grpo import score_rollouts

    sem, spa = [1.0, 0.5, 0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 0.2, 0.2, 0.2]
    total = [0.0, 0.3, 0.6, 0.1, 0.5, 0.9]  # the image's quality disagrees with the plan's
    rollouts, rewards = _judged_batch(sem, spa, total)
    groups = rollouts.group_ids
    pooled = score_rollouts(GRPOConfig(), rollouts, rewards)
    assert pooled.chain_advantages is None
    assert torch.equal(pooled.token_advantages(torch.arange(6), 2), pooled.advantages)

    staged = score_rollouts(GRPOConfig(chain_advantage="plan"), rollouts, rewards)
    plan = torch.tensor(sem) + torch.tensor(spa)
    expected_chain, _, _ = group_advantages(plan, groups, "group")
    expected_image, _, _ = group_advantages(torch.tensor(total), groups, "group")
    assert torch.allclose(staged.chain_advantages, expected_chain)
    assert torch.allclose(staged.advantages, expected_image)
    assert torch.allclose(staged.advantages, pooled.advantages)
    tokens = staged.token_advantages(torch.tensor([0, 2, 5]), 2)
    assert tokens.shape == (3, 5)
    assert torch.allclose(tokens[:, :2], expected_chain[[0, 2, 5], None].expand(3, 2))
    assert torch.allclose(tokens[:, 2:], expected_image[[0, 2, 5], None].expand(3, 3))
    # Row 0 planned best and drew worst in its group: its chain is pushed up, its image down.
    assert tokens[0, 0] > 0 > tokens[0, 2]
    # A group whose plans all score the same gives its chain tokens nothing to learn.
    assert (tokens[2, :2] == 0).all() and (tokens[2, 2:] != 0).all()


def test_per_token_advantages_equal_per_row_ones_when_the_stages_agree():
    torch.manual_seed(4)
    new = torch.randn(4, 6, requires_grad=True)
    advantages = torch.tensor([1.0, -2.0, 0.5, 0.0])
    weights = torch.ones(4, 6)
    row, _ = grpo_loss(new, new.detach(), None, advantages, weights, 4.0)
    token, _ = grpo_loss(new, new.detach(), None, advantages[:, None].expand(4, 6), weights, 4.0)
    assert torch.allclose(row, token)
    # Chain tokens (first 2) with their own advantage: the gradient follows each token's.
    staged = advantages[:, None].repeat(1, 6)
    staged[:, :2] = -staged[:, :2]
    loss, _ = grpo_loss(new, new.detach(), None, staged, weights, 4.0)
    (grad,) = torch.autograd.grad(loss, new)
    assert torch.allclose(grad, -staged / 6 / 4, atol=1e-7)


def test_the_begin_of_image_forced_at_the_cap_carries_no_weight():
    from gotr1.train.config import GRPOConfig
    from gotr1.train.grpo import score_rollouts

    rollouts, rewards = _judged_batch([1.0] * 6, [1.0] * 6, [0.0, 0.3, 0.6, 0.1, 0.5, 0.9])
    rollouts.chain_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]] * 3)  # row 1's chain: one token
    rollouts.truncated = torch.tensor([True, True, False, False, False, False])
    weights = score_rollouts(GRPOConfig(), rollouts, rewards).weights
    assert weights[0, :2].tolist() == [1.0, 0.0]  # its last chain token was forced
    assert weights[1, :2].tolist() == [0.0, 0.0]  # forced at its only chain position
    assert weights[2, :2].tolist() == [1.0, 1.0] and weights[3, :2].tolist() == [1.0, 0.0]
    assert (weights[:, 2:] == 1.0).all()  # image tokens are sampled, never forced


def test_grpo_refuses_a_nucleus_its_log_probs_would_not_match():
    from gotr1.train.config import ConfigError, GRPOConfig

    with pytest.raises(ConfigError, match="top_p must be 1 for GRPO"):
        GRPOConfig(top_p=0.5)
