"""Checkpoints: optimizer/RNG states round-trip through safetensors + JSON, atomic writes, last M
kept, half-written folders ignored; the run log drops steps after the resumed checkpoint."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from gotr1.errors import UserError
from gotr1.train import checkpoint as ckpt
from gotr1.train.runlog import RunLog, read_log


def small_training(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(
        [{"params": [model[0].weight, model[2].weight], "weight_decay": 0.1},
         {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.95),
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=generator)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_optimizer_and_scheduler_round_trip_exactly(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = small_training()
    train(model, optimizer, scheduler, 5, seed=1)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    path = ckpt.save_checkpoint(
        accelerator, tmp_path, 5, lambda folder: folder.mkdir(), optimizer, scheduler, {}, keep=1
    )
    train(model, optimizer, scheduler, 3, seed=2)
    expected = [p.clone() for p in model.parameters()]

    restored, optimizer2, scheduler2 = small_training(seed=9)
    restored.load_state_dict(weights)
    assert ckpt.load_checkpoint(accelerator, path, optimizer2, scheduler2)["step"] == 5
    assert scheduler2.get_last_lr() == pytest.approx([1e-2 / 6, 1e-2 / 6])
    train(restored, optimizer2, scheduler2, 3, seed=2)
    for a, b in zip(expected, restored.parameters(), strict=True):
        assert torch.equal(a, b)
    assert optimizer2.param_groups[0]["betas"] == (0.9, 0.95)
    assert not list(path.glob("*.pt")) and (path / "optimizer.safetensors").is_file()


def test_rng_states_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(ckpt.rng_state()))
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    ckpt.set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = small_training()
    train(model, optimizer, scheduler, 2, seed=0)

    def save_model(folder):
        if accelerator.is_main_process:
            folder.mkdir()
            from safetensors.torch import save_file

            save_file(dict(model.state_dict()), str(folder / "model.safetensors"))

    for step in (2, 4, 6):
        path = ckpt.save_checkpoint(
            accelerator, tmp_path, step, save_model, optimizer, scheduler,
            {"data_position": step * 10}, keep=2,
        )  # fmt: skip
        assert path == tmp_path / f"checkpoint-{step}"
    assert [p.name for p in ckpt.checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    state = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["data_position"] == 60 and state["world_size"] == 1
    assert {p.name for p in (tmp_path / "checkpoint-6").iterdir()} == {
        "model", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng-0.json",
        "trainer_state.json",
    }  # fmt: skip
    # A run killed while writing leaves a temporary folder (ignored, then cleaned) or a folder
    # without trainer_state.json (never taken for a checkpoint).
    (tmp_path / ".tmp-checkpoint-8").mkdir()
    (tmp_path / "checkpoint-9").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-6"
    assert ckpt.resolve_resume(tmp_path, True) == tmp_path / "checkpoint-6"
    assert ckpt.resolve_resume(tmp_path, False) is None
    with pytest.raises(UserError, match="not a complete checkpoint"):
        ckpt.resolve_resume(tmp_path, tmp_path / "checkpoint-9")
    with pytest.raises(UserError, match="no complete checkpoint"):
        ckpt.resolve_resume(tmp_path / "empty", True)
    ckpt.clean_stale(tmp_path)
    assert not (tmp_path / ".tmp-checkpoint-8").exists()
    # Re-saving an existing step replaces it whole.
    ckpt.save_checkpoint(accelerator, tmp_path, 6, save_model, optimizer, scheduler, {"x": 1}, 2)
    assert json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())["x"] == 1
    # Loading restores optimizer and scheduler.
    _, optimizer2, scheduler2 = small_training(seed=5)
    loaded = ckpt.load_checkpoint(accelerator, tmp_path / "checkpoint-4", optimizer2, scheduler2)
    assert loaded["step"] == 4 and scheduler2.last_epoch == scheduler.last_epoch
    for a, b in zip(optimizer.state.values(), optimizer2.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_run_log_resumes_without_duplicate_steps(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    log = RunLog(tmp_path, accelerator, {"a": 1})
    for step in range(1, 6):
        log.log(step, {"reward": step / 10, "kl": float("nan")})
    with (tmp_path / "train_log.jsonl").open("a") as handle:
        handle.write('{"step": 6, "rew')  # cut short by a kill
    RunLog(tmp_path, accelerator, {"a": 1}, resume_step=3).log(4, {"reward": 9.0})
    rows = read_log(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["reward"] == 9.0
    assert rows[0]["kl"] is None  # non-finite values are written as null
    RunLog(tmp_path, accelerator, {"a": 1})  # a fresh run starts an empty log
    assert read_log(tmp_path) == []


def test_trackers_are_checked_at_start(tmp_path):
    import importlib.util

    from gotr1.train.config import ConfigError, SFTConfig
    from gotr1.train.runlog import RunLog
    from gotr1.train.runtime import make_accelerator

    config = SFTConfig(output_dir=str(tmp_path), report_to=["tensorboard"])
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match="report_to: tensorboard needs"):
            make_accelerator(config)
        return
    accelerator = make_accelerator(config)
    log = RunLog(tmp_path, accelerator, config.to_dict())
    log.log(1, {"loss": 1.5})
    log.close()
    assert list((tmp_path / "trackers").rglob("events.out.tfevents*"))
