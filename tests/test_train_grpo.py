"""GRPO runs: TRL metrics, samples and checkpoints; reference / old log-prob passes only when
needed; judge failures drop only the failed samples; collapsed groups change nothing; exact
resume after a SIGKILL; two processes under `accelerate launch` stay identical and normalise
whole groups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gotr1.train.grpo as grpo
from gotr1.policy.policy import Policy
from gotr1.train.config import GRPOConfig
from gotr1.train.data import PromptSource
from gotr1.train.runlog import read_log
from gotr1.train.runtime import TrainingModule
from test_train_helpers import (
    REPO,
    code_reward,
    launch_two_cpu_processes,
    make_tiny_model,
    subprocess_env,
)

TRL_METRICS = {
    "reward",
    "reward_std",
    "rewards/sem/mean",
    "rewards/spa/mean",
    "rewards/ri/mean",
    "rewards/pi/mean",
    "frac_reward_zero_std",
    "kl",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "completions/mean_length",
    "entropy",
    "grad_norm",
    "learning_rate",
    "judge/failures",
    "step_time",
    "time/rollout",
    "time/reward",
    "time/update",
}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def quick(folder, out, **overrides):
    values = dict(
        model=str(folder),
        output_dir=str(out),
        max_steps=2,
        num_prompts=2,
        num_generations=4,
        max_chain_tokens=8,
        cfg_weight=2.0,
        lora_r=4,
        lora_alpha=8,
        learning_rate=1e-2,
        save_steps=1,
        save_total_limit=1,
        sample_steps=0,
        progress=False,
    )
    values.update(overrides)
    if not values.get("use_lora", True):  # full fine-tuning refuses LoRA settings
        for name in ("lora_r", "lora_alpha"):
            values.pop(name)
    return GRPOConfig(**values)


def trainable(policy_folder):
    return load_file(str(Path(policy_folder) / "adapter_model.safetensors"))


def test_grpo_run_logs_metrics_samples_and_checkpoints(tiny_folder, tmp_path):
    out = tmp_path / "run"
    config = quick(tiny_folder, out, beta=0.05, gradient_accumulation_steps=2, sample_steps=2)
    final = grpo.train_grpo(config, reward_fn=code_reward)
    rows = read_log(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert set(rows[-1]) >= TRL_METRICS, TRL_METRICS - set(rows[-1])
    for row in rows:
        assert 0 <= row["reward"] <= 1 and row["reward_std"] > 0
        assert row["completions/mean_length"] <= 8 and row["judge/failures"] == 0
        assert row["debug/logprob_gap"] < 1e-3  # teacher forcing scores what was sampled
        assert row["kl"] >= 0 and row["entropy"] > 0 and row["grad_norm"] > 0
        # Each phase's peak holds at least the model's weights (the process's RSS on CPU).
        assert row["memory/rollout_peak_gib"] > 0.05 and row["memory/update_peak_gib"] > 0.05
    assert rows[0]["kl"] == pytest.approx(0, abs=1e-6)  # LoRA starts at the reference
    assert rows[1]["kl"] > 0 and rows[1]["learning_rate"] < rows[0]["learning_rate"]  # cosine
    # Checkpoint (the last one kept), final adapter folder loadable as a policy, samples.
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert (out / "checkpoint-2" / "model" / "adapter_config.json").is_file()
    policy = Policy.load(final)
    assert any(
        "lora_B" in name and p.abs().sum() > 0 for name, p in policy.model.named_parameters()
    )
    samples = out / "samples" / "step-000002"
    lines = [json.loads(x) for x in (samples / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {"prompt", "chain", "total", "advantage", "sem"} <= set(lines[0])
    assert (samples / "000-image.png").is_file() and (samples / "000-layout.png").is_file()


def test_two_condition_guidance_rolls_out_and_scores_with_the_same_formula(
    tiny_folder, tmp_path, monkeypatch
):
    seen = []
    out = tmp_path / "run"
    config = quick(tiny_folder, out, max_steps=1, save_steps=100, plan_cfg_weight=4.0)
    assert grpo.rollout_sampling(config).plan_cfg_weight == 4.0
    import gotr1.policy.rollout as rollout_module

    guide = rollout_module.guided_logits

    def recording(cond, uncond, prompt_only, cfg_weight, plan_cfg_weight):
        seen.append((prompt_only is not None, cfg_weight, plan_cfg_weight))
        return guide(cond, uncond, prompt_only, cfg_weight, plan_cfg_weight)

    monkeypatch.setattr(rollout_module, "guided_logits", recording)
    monkeypatch.setattr("gotr1.policy.logprobs.guided_logits", recording)
    grpo.train_grpo(config, reward_fn=code_reward)
    # Image logits in the sampler and the log-probs: three rows; chain logits: the text head's.
    assert set(seen) == {(True, 2.0, 4.0), (False, 1.0, None)}
    row = read_log(out)[0]
    assert row["debug/logprob_gap"] < 1e-3  # the GRPO ratio stays exact


def test_plan_credit_trains_and_dumps_the_chains_own_advantage(tiny_folder, tmp_path):
    out = tmp_path / "run"
    config = quick(tiny_folder, out, sample_steps=2, chain_advantage="plan")
    grpo.train_grpo(config, reward_fn=code_reward)
    assert [r["step"] for r in read_log(out)] == [1, 2]
    samples = out / "samples" / "step-000002" / "samples.jsonl"
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    # code_reward sets R_sem = R_spa = total, so the plan's reward is twice the total and its
    # group-normalised advantage the total's (up to the 1e-4 in the divisor: 0.1% when the
    # group std is 0.05).
    for line in lines:
        assert line["chain_advantage"] == pytest.approx(line["advantage"], rel=1e-2)
    assert any(abs(line["advantage"]) > 0.1 for line in lines)
    pooled = quick(tiny_folder, tmp_path / "pooled", max_steps=1, sample_steps=1)
    grpo.train_grpo(pooled, reward_fn=code_reward)
    pooled_samples = tmp_path / "pooled" / "samples" / "step-000001" / "samples.jsonl"
    assert "chain_advantage" not in json.loads(pooled_samples.read_text().splitlines()[0])


def count_passes(monkeypatch):
    calls = []
    forward = TrainingModule.forward

    def recording(self, task, batch, **kwargs):
        calls.append((task, torch.is_grad_enabled()))
        return forward(self, task, batch, **kwargs)

    monkeypatch.setattr(TrainingModule, "forward", recording)
    reference = Policy.reference_logprobs

    def recording_reference(self, *args, **kwargs):
        calls.append(("frozen-reference", torch.is_grad_enabled()))
        return reference(self, *args, **kwargs)

    monkeypatch.setattr(Policy, "reference_logprobs", recording_reference)
    return calls


def test_gradient_accumulation_takes_the_gradient_of_one_pass(tiny_folder, tmp_path):
    """Splitting a step's rollouts into micro-batches (what bounds the update's memory) sums to
    the gradient of one pass over all of them: same rollouts, same gradient norm, same entropy."""
    rows = {}
    for micro_batches in (1, 4):
        out = tmp_path / f"accumulate-{micro_batches}"
        config = quick(
            tiny_folder, out, use_lora=False, max_steps=1, num_prompts=4,
            gradient_accumulation_steps=micro_batches,
        )  # fmt: skip
        grpo.train_grpo(config, reward_fn=code_reward)
        (rows[micro_batches],) = read_log(out)
    one, four = rows[1], rows[4]
    assert one["reward"] == four["reward"] and one["reward_std"] > 0  # the same rollouts
    assert one["grad_norm"] > 0
    assert four["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    assert four["entropy"] == pytest.approx(one["entropy"], rel=1e-5)


def test_update_passes_hold_rows_of_similar_length():
    """The update's passes partition the rows, each pass taking rows of like chain length (then
    prompt length), so a pass's trimmed width is its own rows' longest."""
    chain = torch.tensor([9, 3, 7, 3, 12, 5, 3, 8])
    prompt = torch.tensor([4, 6, 4, 2, 5, 5, 2, 3])
    masks = SimpleNamespace(
        chain_mask=(torch.arange(12)[None] < chain[:, None]).long(),
        prompt_mask=(torch.arange(6)[None] >= 6 - prompt[:, None]).long(),
    )
    passes = grpo.update_passes(masks, 3)
    assert sorted(torch.cat(passes).tolist()) == list(range(8))
    assert [p.tolist() for p in passes] == [[3, 6, 1], [5, 2, 7], [0, 4]]
    widths = [int(chain[p].max() + prompt[p].max()) for p in passes]
    sequential = [int(chain[p].max() + prompt[p].max()) for p in torch.arange(8).tensor_split(3)]
    assert sum(widths) < sum(sequential)


def test_reference_and_old_passes_only_when_needed(tiny_folder, tmp_path, monkeypatch):
    calls = count_passes(monkeypatch)
    # beta = 0, one iteration: no reference forward, no old log-probs (ratio = 1), no copy.
    grpo.train_grpo(
        quick(tiny_folder, tmp_path / "a", beta=0.0, use_lora=False, max_steps=1,
              gradient_accumulation_steps=2),
        reward_fn=code_reward,
    )  # fmt: skip
    assert calls == [("logprobs", True), ("logprobs", True)]
    policy = grpo.build_policy(quick(tiny_folder, tmp_path / "x", beta=0.0, use_lora=False))
    assert policy.reference_model is None
    # LoRA, beta > 0, two iterations: one reference pass (adapters off) and one old pass, no grad.
    calls.clear()
    grpo.train_grpo(
        quick(tiny_folder, tmp_path / "b", beta=0.1, num_iterations=2, max_steps=1),
        reward_fn=code_reward,
    )
    assert calls == [
        ("reference", False),
        ("logprobs", False),
        ("logprobs", True),
        ("logprobs", True),
    ]
    # Full fine-tuning with beta > 0: a frozen copy is the reference and stays put.
    calls.clear()
    config = quick(tiny_folder, tmp_path / "c", beta=0.1, use_lora=False, max_steps=2)
    final = grpo.train_grpo(config, reward_fn=code_reward)
    assert calls.count(("frozen-reference", False)) == 2
    start = load_file(str(tiny_folder / "model.safetensors"))
    trained = load_file(str(final / "model.safetensors"))
    changed = [k for k in start if not torch.equal(start[k], trained[k])]
    assert changed and all(".vqmodel." not in k for k in changed)
    assert read_log(tmp_path / "c")[-1]["kl"] > 0


def test_group_advantages_over_kept_rows_by_hand():
    # Group 0: rows 0..3, row 1 dropped -> kept 0.1, 0.5, 0.9: mean 0.5, std 0.4.
    # Group 1: rows 4..7, only row 4 kept -> no std, nothing learns. Group 2: all kept.
    rewards = torch.tensor([0.1, float("nan"), 0.5, 0.9, 0.7, 0.0, 0.3, 0.2, 1.0, 0.0, 0.0, 1.0])
    groups = torch.arange(3).repeat_interleave(4)
    keep = torch.tensor([1, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    advantages, zero_std, group_std = grpo.group_advantages(rewards, groups, "group", keep=keep)
    eps = 1e-4
    g2_std = (4 * 0.25 / 3) ** 0.5  # rewards 1, 0, 0, 1: mean 0.5, unbiased std sqrt(1/3)
    expected = [-0.4 / (0.4 + eps), 0.0, 0.0, 0.4 / (0.4 + eps), 0.0, 0.0, 0.0, 0.0]
    expected += [0.5 / (g2_std + eps), -0.5 / (g2_std + eps), -0.5 / (g2_std + eps)]
    expected += [0.5 / (g2_std + eps)]
    torch.testing.assert_close(advantages, torch.tensor(expected), atol=1e-5, rtol=0)
    assert group_std[0].item() == pytest.approx(0.4, abs=1e-6)
    assert torch.isnan(group_std[1]) and group_std[2].item() == pytest.approx(g2_std, abs=1e-6)
    assert zero_std.tolist() == [False] * 4 + [True] * 4 + [False] * 4
    # "batch" and "none" centre on the kept mean too; a dropped row's NaN is never read.
    none, _, _ = grpo.group_advantages(rewards, groups, "none", keep=keep)
    torch.testing.assert_close(none[:4], torch.tensor([-0.4, 0.0, 0.0, 0.4]), atol=1e-6, rtol=0)
    batch, _, _ = grpo.group_advantages(rewards, groups, "batch", batch_std=2.0, keep=keep)
    torch.testing.assert_close(batch, none / (2.0 + eps), atol=1e-6, rtol=0)
    assert torch.isfinite(batch).all()
    # Everything kept (the default) is the plain definition; all-equal kept rows give zero.
    full = torch.tensor([0.1, 0.3, 0.5, 0.9])
    plain, _, _ = grpo.group_advantages(full, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(plain, (full - full.mean()) / (full.std() + eps))
    same = torch.tensor([0.2, 0.7, 0.2, 0.2])
    flat, flat_zero, _ = grpo.group_advantages(
        same, torch.zeros(4, dtype=torch.long), keep=torch.tensor([True, False, True, True])
    )
    assert (flat == 0).all() and flat_zero.all()
    nothing, nothing_zero, nothing_std = grpo.group_advantages(
        same, torch.zeros(4, dtype=torch.long), keep=torch.zeros(4, dtype=torch.bool)
    )
    assert (nothing == 0).all() and nothing_zero.all() and torch.isnan(nothing_std).all()


def test_judge_failures_drop_only_the_failed_samples(tiny_folder, tmp_path, monkeypatch):
    seen = []
    loss = grpo.grpo_loss

    def recording(new, old, ref, advantages, weights, *args, **kwargs):
        seen.append((advantages.detach().clone(), weights.clone()))
        return loss(new, old, ref, advantages, weights, *args, **kwargs)

    monkeypatch.setattr(grpo, "grpo_loss", recording)
    totals = [0.1, float("nan"), 0.5, 0.9, 0.7, float("nan"), float("nan"), float("nan")]

    def failing(rollouts):  # the judge fails on row 1 (group 0) and rows 5-7 (group 1)
        rewards = code_reward(rollouts)
        for row in (1, 5, 6, 7):
            rewards.failed["pi"][row] = True
            rewards.pi[row] = np.nan
            rewards.keep[row] = False
        rewards.total[:] = totals
        return rewards

    grpo.train_grpo(quick(tiny_folder, tmp_path / "run", max_steps=1), reward_fn=failing)
    row = read_log(tmp_path / "run")[0]
    assert row["judge/failures"] == 4 and row["judge/dropped_rows"] == 4
    assert row["judge/dropped_groups"] == 1  # group 1 kept one sample: nothing to compare
    assert row["reward"] == pytest.approx((0.1 + 0.5 + 0.9 + 0.7) / 4)
    assert row["reward_std"] == pytest.approx(0.4) and row["frac_reward_zero_std"] == 0
    assert np.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
    advantages, weights = seen[0]
    # Group 0 keeps its three judged samples, normalised among themselves; the failed row and
    # every row of group 1 (a lone survivor included) are out of the loss.
    assert (weights[[0, 2, 3]].sum(1) > 0).all() and (weights[[1, 4, 5, 6, 7]] == 0).all()
    expected = torch.tensor([-0.4, 0.0, 0.0, 0.4, 0.0, 0.0, 0.0, 0.0]) / (0.4 + 1e-4)
    torch.testing.assert_close(advantages.cpu(), expected, atol=1e-5, rtol=0)


def test_collapsed_groups_change_nothing_and_can_be_filtered(tiny_folder, tmp_path, monkeypatch):
    def constant(rollouts):
        rewards = code_reward(rollouts)
        rewards.total[:] = 0.3
        return rewards

    config = quick(tiny_folder, tmp_path / "flat", use_lora=False, beta=0.0, max_steps=1)
    final = grpo.train_grpo(config, reward_fn=constant)
    row = read_log(tmp_path / "flat")[0]
    assert row["frac_reward_zero_std"] == 1 and row["reward_std"] == 0 and row["grad_norm"] == 0
    start = load_file(str(tiny_folder / "model.safetensors"))
    after = load_file(str(final / "model.safetensors"))
    assert all(torch.equal(start[k], after[k]) for k in start)  # no signal, no step, no NaN

    seen = []
    loss = grpo.grpo_loss
    monkeypatch.setattr(
        grpo, "grpo_loss", lambda *a, **k: seen.append(a[4].clone()) or loss(*a, **k)
    )

    def half(rollouts):  # group 0 collapsed, group 1 informative
        rewards = code_reward(rollouts)
        rewards.total[:4] = 0.5
        return rewards

    for filtering in (False, True):
        seen.clear()
        out = tmp_path / f"half-{filtering}"
        grpo.train_grpo(
            quick(tiny_folder, out, max_steps=1, filter_zero_std_groups=filtering), reward_fn=half
        )
        assert read_log(out)[0]["frac_reward_zero_std"] == 0.5
        assert bool((seen[0][:4] == 0).all()) is filtering and (seen[0][4:].sum(1) > 0).all()


# ----------------------------------------------------------------------------------------------
# Slow: real processes
# ----------------------------------------------------------------------------------------------

RUN_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
import gotr1.train.grpo as grpo
from gotr1.train.config import GRPOConfig
from test_train_helpers import code_reward
config = GRPOConfig(**json.loads(sys.argv[1]))
grpo.train_grpo(config, resume=sys.argv[2:] == ["resume"], reward_fn=code_reward)
"""


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tiny_folder, tmp_path):
    """Kill a run (SIGKILL) right after its step-2 checkpoint; resuming it ends with exactly the
    parameters of an uninterrupted run (CPU, float32, fixed seed, one thread)."""
    values = dict(
        model=str(tiny_folder), max_steps=6, num_prompts=2, num_generations=4, max_chain_tokens=8,
        cfg_weight=2.0, lora_r=4, lora_alpha=8, learning_rate=1e-2, beta=0.05, save_steps=2,
        save_total_limit=2, progress=False, gradient_accumulation_steps=2,
    )  # fmt: skip
    whole = tmp_path / "whole"
    grpo.train_grpo(GRPOConfig(**values, output_dir=str(whole)), reward_fn=code_reward)

    killed = tmp_path / "killed"
    args = [sys.executable, "-c", RUN_SCRIPT, json.dumps({**values, "output_dir": str(killed)})]
    child = subprocess.Popen(args, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 240
    while not (killed / "checkpoint-2" / "trainer_state.json").is_file():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert not (killed / "final").exists()  # it really died mid-run

    subprocess.run(
        [sys.executable, "-c", RUN_SCRIPT, json.dumps({**values, "output_dir": str(killed)}),
         "resume"],
        env=subprocess_env(), cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    a, b = trainable(whole / "final"), trainable(killed / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_log(killed)] == [1, 2, 3, 4, 5, 6]
    assert [r["reward"] for r in read_log(killed)] == [r["reward"] for r in read_log(whole)]


LAUNCH_SCRIPT = """
import json, sys, torch
from safetensors.torch import save_file
import gotr1.train.grpo as grpo
from gotr1.train.config import GRPOConfig
from test_train_helpers import code_reward

out = sys.argv[2]
records = []
advantages = grpo.group_advantages
def recording(rewards, group_ids, scale, batch_std=None, eps=1e-4, keep=None):
    result = advantages(rewards, group_ids, scale, batch_std, eps, keep=keep)
    records.append({"rewards": rewards.tolist(), "advantages": result[0].tolist(),
                    "keep": keep.tolist()})
    return result
grpo.group_advantages = recording
step_fn = grpo.grpo_step
def step(config, accelerator, wrapped, optimizer, scheduler, policy, reward_fn, prompts, sampling, index):
    result = step_fn(config, accelerator, wrapped, optimizer, scheduler, policy, reward_fn, prompts,
                     sampling, index)
    rank = accelerator.process_index
    records[-1].update(step=index, rank=rank, processes=accelerator.num_processes,
                       prompts=result[1].prompts, groups=result[1].group_ids.tolist())
    params = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    save_file(params, f"{out}/params-r{rank}-s{index}.safetensors")
    return result
grpo.grpo_step = step
state = {}
config = GRPOConfig(**json.loads(sys.argv[1]))
def dropping(rollouts):  # on_failure="drop": the judge failed on row 1 of every process
    rewards = code_reward(rollouts)
    rewards.keep[1], rewards.total[1] = False, float("nan")
    rewards.failed["pi"][1] = True
    return rewards
grpo.train_grpo(config, reward_fn=dropping)
from accelerate import PartialState
json.dump(records, open(f"{out}/records-{PartialState().process_index}.json", "w"))
"""


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(tiny_folder, tmp_path):
    script = tmp_path / "launch_grpo.py"
    script.write_text(LAUNCH_SCRIPT)
    values = dict(
        model=str(tiny_folder), output_dir=str(tmp_path / "run"), max_steps=3, num_prompts=4,
        num_generations=4, max_chain_tokens=8, cfg_weight=2.0, lora_r=4, lora_alpha=8,
        learning_rate=1e-2, beta=0.05, save_steps=10, scale_rewards="batch", loss_type="dapo",
        progress=False,
    )  # fmt: skip
    launch_two_cpu_processes(script, json.dumps(values), str(tmp_path))
    records = {rank: json.loads((tmp_path / f"records-{rank}.json").read_text()) for rank in (0, 1)}
    source = PromptSource("world", seed=0)
    for step in range(3):
        r0, r1 = records[0][step], records[1][step]
        assert r0["processes"] == r1["processes"] == 2 and (r0["step"], r1["step"]) == (step, step)
        # Each process holds whole groups: 2 prompts x 4 samples, together the step's 4 prompts.
        assert r0["prompts"] + r1["prompts"] == [
            p for p in source.take(step * 4, 4) for _ in range(4)
        ]
        # Row 1 of each process was dropped: group means over the kept rows, the batch std over
        # the kept rows of both processes, and the dropped rows' advantage is 0.
        assert r0["keep"] == r1["keep"] == [True, False] + [True] * 6
        kept = torch.tensor(r0["keep"] + r1["keep"])
        everything = torch.tensor(r0["rewards"] + r1["rewards"])[kept]
        for record in (r0, r1):
            rewards = torch.tensor(record["rewards"]).view(2, 4)
            keep = torch.tensor(record["keep"]).view(2, 4)
            mean = (rewards * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True)
            expected = torch.where(keep, (rewards - mean) / (everything.std() + 1e-4), 0.0)
            assert torch.allclose(
                torch.tensor(record["advantages"]).view(2, 4), expected, atol=1e-5
            )
        # DDP keeps the two copies of the trainable weights identical, and they move.
        a = load_file(str(tmp_path / f"params-r0-s{step}.safetensors"))
        b = load_file(str(tmp_path / f"params-r1-s{step}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(str(tmp_path / "params-r0-s0.safetensors"))
    last = load_file(str(tmp_path / "params-r0-s2.safetensors"))
    assert any(not torch.equal(first[k], last[k]) for k in first)
    rows = read_log(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["reward"]) for r in rows)
    assert all(r["judge/dropped_rows"] == 2 and r["judge/dropped_groups"] == 0 for r in rows)


@pytest.mark.slow
def test_cli_sft_from_scratch_then_grpo(tmp_path):
    """The command line path end to end on a tiny preset: `gotr1 sft` (tokenizer + VQ + SFT; the
    loss falls) then `gotr1 grpo` from its final model with the world judge."""
    import yaml

    from test_train_helpers import TINY

    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump(TINY.to_dict()))
    env = subprocess_env()
    sft = [
        sys.executable, "-m", "gotr1.cli", "sft", "--config", str(REPO / "configs/sft-world-tiny.yaml"),
        "--model", str(preset), "--output_dir", str(tmp_path / "sft"), "--vq_steps", "3",
        "--vq-batch-size", "4", "--max_steps", "30", "--batch_size", "8", "--warmup_steps", "2",
        "--save_steps", "15", "--sample_steps", "30", "--num_samples", "2",
        "--sample_max_chain_tokens", "16", "--mixed_precision", "no", "--logging_steps", "1",
        "--progress", "false",
    ]  # fmt: skip
    subprocess.run(sft, env=env, cwd=REPO, check=True, capture_output=True, timeout=600)
    losses = [r["loss"] for r in read_log(tmp_path / "sft") if "loss" in r]
    assert losses[-1] < losses[0] - 1.0, losses
    grpo_cmd = [
        sys.executable, "-m", "gotr1.cli", "grpo", "--config", str(REPO / "configs/grpo-world-tiny.yaml"),
        "--model", str(tmp_path / "sft" / "final"), "--output_dir", str(tmp_path / "grpo"),
        "--max_steps", "2", "--num_prompts", "2", "--num_generations", "4",
        "--max_chain_tokens", "16", "--sample_steps", "2", "--progress", "false",
    ]  # fmt: skip
    subprocess.run(grpo_cmd, env=env, cwd=REPO, check=True, capture_output=True, timeout=600)
    rows = read_log(tmp_path / "grpo")
    assert [r["step"] for r in rows] == [1, 2] and TRL_METRICS - {"kl"} <= set(rows[-1])
    assert (tmp_path / "grpo" / "final" / "model.safetensors").is_file()


def test_grpo_raises_a_learnable_reward(tiny_folder, tmp_path):
    """The whole loop optimises: a reward the policy can reach (more low-codebook image codes)
    climbs within a few steps from its random-policy level (~0.5)."""
    out = tmp_path / "learn"
    config = quick(
        tiny_folder, out, max_steps=8, num_generations=8, use_lora=False, beta=0.0,
        learning_rate=8e-3, save_steps=100,
    )  # fmt: skip
    grpo.train_grpo(config, reward_fn=code_reward)
    rewards = [row["reward"] for row in read_log(out)]
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]) + 0.2, rewards
    assert rewards[-1] > 0.8, rewards


def test_world_reward_with_the_clean_image_factor():
    from PIL import Image, ImageDraw

    from gotr1.chain import parse_chain
    from gotr1.train.config import ConfigError
    from gotr1.world import COLORS

    with pytest.raises(ConfigError, match="world_clean_image needs judge: world"):
        GRPOConfig(judge="openai", world_clean_image=True)
    with pytest.raises(ConfigError, match="needs 'pi' in reward_components"):
        GRPOConfig(world_clean_image=True, reward_components=["sem", "spa"])
    reward = grpo.make_reward(GRPOConfig(world_clean_image=True, reward_combination="product"))
    plain = grpo.make_reward(GRPOConfig(reward_combination="product"))

    def picture(boxes):
        image = Image.new("RGB", (64, 64), (240, 240, 240))
        draw = ImageDraw.Draw(image)
        for box, colour in boxes:
            draw.rectangle(box, fill=COLORS[colour])
        return image

    chain = parse_chain(
        "A <|obj_start|>red square<|obj_end|> <|box_start|>(100,100),(400,400)<|box_end|>."
    )
    clean = picture([((6, 6, 25, 25), "red")])
    cluttered = picture([((6, 6, 25, 25), "red"), ((40, 40, 58, 58), "blue")])
    scores = reward.score(["a red square"] * 2, [chain, chain], [clean, cluttered])
    unfactored = plain.score(["a red square"] * 2, [chain, chain], [clean, cluttered])
    assert scores.extra.tolist() == [1.0, 0.5]  # one unasked object halves the reward
    assert scores.total[0] == pytest.approx(unfactored.total[0])
    assert scores.total[1] == pytest.approx(0.5 * unfactored.total[1])
