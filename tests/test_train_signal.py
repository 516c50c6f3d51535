"""`gotr1 grpo-signal`: the signal fraction of GRPO gradients against the shuffled-advantage null —
exact on synthetic gradients, clearly positive for a reward the policy controls, indistinguishable
from the null for a reward that ignores the samples, and the command's report and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from gotr1.rewards import Rewards
from gotr1.train.config import ConfigError, GRPOConfig
from gotr1.train.signal import (
    SignalFraction,
    SignalReport,
    batch_gradients,
    measure_gradient_signal,
    shuffled_advantages,
    token_coefficients,
)
from test_train_helpers import REPO, code_reward, make_tiny_model, subprocess_env


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def signal_config(folder, tmp_path, **overrides) -> GRPOConfig:
    values = dict(
        model=str(folder),
        output_dir=str(tmp_path / "signal"),
        num_prompts=2,
        num_generations=8,
        max_chain_tokens=8,
        cfg_weight=2.0,
        use_lora=False,
        progress=False,
    )
    values.update(overrides)
    return GRPOConfig(**values)


def test_signal_fraction_recovers_the_share_of_a_common_direction():
    """g_k = s + n_k with |s|^2 = 1 and E|n|^2 = 3: rho = 1/4; pure noise: rho = 0."""
    rng = np.random.default_rng(0)
    dim, k = 20_000, 8
    signal = rng.normal(size=dim)
    signal /= np.linalg.norm(signal)
    noise = rng.normal(scale=np.sqrt(3 / dim), size=(k, dim))
    estimates = signal + noise
    with_signal = SignalFraction.from_gram(estimates @ estimates.T)
    assert with_signal.rho == pytest.approx(0.25, abs=0.02)
    assert with_signal.mean_norm == pytest.approx(2.0, rel=0.02)
    only_noise = SignalFraction.from_gram(noise @ noise.T)
    assert abs(only_noise.rho) < 3 * only_noise.standard_error + 1e-3
    with pytest.raises(ValueError, match="at least two"):
        SignalFraction.from_gram(np.ones((1, 1)))


def test_report_rows_for_equal_signal_and_verdict():
    def fraction(rho: float, error: float) -> SignalFraction:
        return SignalFraction(rho, error, 1.0)

    parts = ("chain", "image", "all")
    report = SignalReport(
        batches=6,
        rows_per_batch=64,
        rows_in_loss=64.0,
        reward_mean=0.2,
        reward_std_in_groups=0.1,
        real={p: fraction(r, 0.01) for p, r in zip(parts, (0.2, 0.01, -0.01), strict=True)},
        shuffled={p: fraction(0.0, 0.01) for p in parts},
        seconds=1.0,
    )
    assert report.rows_for_equal_signal("chain") == pytest.approx(64 * 0.8 / 0.2)
    assert report.distinguishable("chain") and not report.distinguishable("image")
    assert report.rows_for_equal_signal("all") == float("inf")
    # indistinguishable: the bound from rho + 2 se (0.01 + 0.02)
    assert report.rows_for_equal_signal("image", sigmas=2.0) == pytest.approx(64 * 0.97 / 0.03)
    table = report.table()
    assert ">= 2,069" in table and "yes" in table
    record = report.to_dict()
    assert record["distinguishable"] == {"chain": True, "image": False, "all": False}
    json.dumps(record)


def test_shuffled_advantages_permute_only_rows_in_the_loss():
    advantages = torch.tensor([1.0, -1.0, 0.0, 2.0, 0.5, 0.0])
    in_loss = torch.tensor([True, True, False, True, True, False])
    shuffled = shuffled_advantages(advantages, in_loss, torch.Generator().manual_seed(0))
    assert shuffled[~in_loss].tolist() == [0.0, 0.0]
    assert sorted(shuffled[in_loss].tolist()) == sorted(advantages[in_loss].tolist())


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_batch_gradients_are_the_update_gradient(tiny_folder, tmp_path, loss_type):
    """Per stage and summed, in micro-batches or not: the gradient of `grpo_loss` that the first
    update of a step takes (ratio 1)."""
    from gotr1.policy.policy import Policy
    from gotr1.policy.rollout import SamplingConfig
    from gotr1.train.grpo import grpo_loss, score_rollouts
    from gotr1.train.runtime import TrainingModule

    config = signal_config(tiny_folder, tmp_path, loss_type=loss_type, chain_token_weight=0.5)
    policy = Policy.load(tiny_folder)
    wrapped = TrainingModule(policy.model)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    sampling = SamplingConfig(cfg_weight=2.0, max_chain_tokens=8)
    rollouts = policy.rollout(
        ["a red circle", "two squares"], 8, sampling, torch.Generator().manual_seed(3)
    )
    scored = score_rollouts(config, rollouts, code_reward(rollouts))
    coefficients = {"real": token_coefficients(scored.advantages, scored, config)}

    policy.model.zero_grad()
    lp = policy.logprobs(rollouts, config.image_logprob)
    new = torch.cat([lp.chain, lp.image], dim=1)
    loss, _ = grpo_loss(
        new, new.detach(), None, scored.advantages, scored.weights, scored.normaliser,
        loss_type=loss_type,
    )  # fmt: skip
    loss.backward()
    expected = torch.cat(
        [(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in params]
    )
    assert expected.norm() > 0

    for micro_batches in (1, 4):
        config.gradient_accumulation_steps = micro_batches
        found = batch_gradients(wrapped, policy, rollouts, coefficients, config, params)
        torch.testing.assert_close(found["real/all"], expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(
            found["real/chain"] + found["real/image"], found["real/all"], rtol=0, atol=0
        )
        assert found["real/chain"].norm() > 0 and found["real/image"].norm() > 0


def test_a_reward_the_policy_controls_has_signal(tiny_folder, tmp_path):
    """More low-codebook image codes: the image head's gradients of independent batches agree,
    the shuffled ones do not."""
    config = signal_config(tiny_folder, tmp_path, num_prompts=4)
    report = measure_gradient_signal(config, batches=6, reward_fn=code_reward)
    assert report.rows_per_batch == 32 and report.batches == 6
    # The reward lives in the image head: its tensors agree across batches far beyond chance.
    best, chance = report.top_tensors[0], report.top_shuffled_tensors[0]
    assert best.name.startswith("model.generation_head"), report.table()
    assert best.rho > 0.15 and best.rho > 2 * chance.rho, report.table()
    assert best.rho - 2 * best.standard_error > chance.rho, report.table()
    assert report.real["image"].rho > report.real["chain"].rho, report.table()


def test_a_reward_blind_to_the_samples_has_none(tiny_folder, tmp_path):
    """Rewards drawn at random, independent of what was sampled: no expected gradient, so the
    real rho is as small as the null's."""
    rng = np.random.default_rng(1)

    def blind_reward(rollouts):
        values = rng.random(len(rollouts))
        return Rewards(
            sem=values, spa=values, ri=values, pi=values, total=values,
            keep=np.ones(len(values), dtype=bool),
            failed={c: np.zeros(len(values), dtype=bool) for c in ("sem", "spa", "ri", "pi")},
            timings={},
        )  # fmt: skip

    config = signal_config(tiny_folder, tmp_path, num_prompts=4)
    report = measure_gradient_signal(config, batches=6, reward_fn=blind_reward)
    for part in ("chain", "image", "all"):
        assert abs(report.real[part].rho) < 0.1, report.table()
    assert report.top_tensors[0].rho < 0.15, report.table()


def test_grpo_signal_command_writes_its_report(tiny_folder, tmp_path):
    out = tmp_path / "signal.json"
    base = [sys.executable, "-m", "gotr1", "grpo-signal", "--model", str(tiny_folder)]
    small = [
        "--num_prompts", "2", "--num_generations", "4", "--max_chain_tokens", "8",
        "--output_dir", str(tmp_path / "run"), "--use_lora", "false",
    ]  # fmt: skip
    done = subprocess.run(
        [*base, *small, "--batches", "2", "--json", str(out)],
        env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "rows for signal = noise" in done.stdout
    record = json.loads(out.read_text())
    assert record["batches"] == 2 and record["rows_per_batch"] == 8
    assert set(record["real"]) == {"chain", "image", "all"}
    bad = subprocess.run(
        [*base, *small, "--batches", "1"],
        env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode != 0 and "--batches must be >= 2" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_measure_gradient_signal_needs_two_batches(tiny_folder, tmp_path):
    with pytest.raises(ConfigError, match="batches must be >= 2"):
        measure_gradient_signal(signal_config(tiny_folder, tmp_path), batches=1)
