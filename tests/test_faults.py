"""Faults of issue 27 (reliability): what gotr1 may delete, checkpoints that survive a kill at
any moment, an API key that never leaks, answer parsers linear in their input, and numeric
settings that must be finite."""

from __future__ import annotations

import pytest

from gotr1.cli import main
from gotr1.demo import pipeline as P
from gotr1.demo.pipeline import Stages

# ----------------------------------------------------------------------------------------------
# 1. A stage folder gotr1 did not write is never deleted
# ----------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by a stubbed stage to end a demo run right after its folder was prepared."""


def test_demo_refuses_a_tokenizer_dir_of_the_users_files(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own notes")

    def stop(*args):
        raise _Stop

    monkeypatch.setattr(P, "train_tokenizer", stop)  # no training: only the folder handling
    code = main(
        ["demo", "--quick", "--out", str(tmp_path / "run"), "--set", f"tokenizer_dir={mine}"]
    )
    assert (mine / "notes.txt").read_text() == "my own notes"
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(mine) in errors[0]


def test_a_stage_folder_without_a_marker_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "sft"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"\x00" * 10)
    from gotr1.cli import UserError

    with pytest.raises(UserError, match=str(folder)):
        Stages(lambda _: None).run("sft", folder, {"steps": 1}, lambda f: {})
    assert (folder / "data.bin").is_file()
    # An empty folder (one a stage made before its marker was written) is used.
    (folder / "data.bin").unlink()
    record = Stages(lambda _: None).run("sft", folder, {"steps": 1}, lambda f: {"ok": 1})
    assert record["result"] == {"ok": 1}


@pytest.mark.parametrize("marker", [P.STAGE_MARKER, P.STARTED_MARKER])
def test_a_stage_folder_gotr1_wrote_is_still_cleared(tmp_path, marker):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / marker).write_text('{"fingerprint": "other settings"}')
    (folder / "old-model.bin").write_text("x")
    seen = []
    record = Stages(lambda _: None).run(
        "tokenizer", folder, {"v": 2}, lambda f: seen.append(sorted(p.name for p in f.iterdir()))
    )
    assert seen == [[P.STARTED_MARKER]] and not record["cached"]
    assert not (folder / "old-model.bin").exists()
    # An unreadable marker still marks the folder as gotr1's.
    (folder / P.STAGE_MARKER).write_text("{not json")
    (folder / "junk").write_text("x")
    Stages(lambda _: None).run("tokenizer", folder, {"v": 3}, lambda f: {})
    assert not (folder / "junk").exists()


# ----------------------------------------------------------------------------------------------
# 2. A kill between the two renames of a re-save never loses the checkpoint
# ----------------------------------------------------------------------------------------------


def _killed_between_renames(folder, source, step, with_new=True, with_old=True):
    """Lay out what `save_checkpoint` re-saving `step` leaves when killed between its renames:
    the old complete copy moved to ``.tmp-checkpoint-<step>.old``, the new complete one still at
    ``.tmp-checkpoint-<step>``, no ``checkpoint-<step>``."""
    import shutil

    from gotr1.train import checkpoint as ckpt

    folder.mkdir(parents=True, exist_ok=True)
    if with_old:
        shutil.copytree(source, folder / f"{ckpt.TMP_PREFIX}{step}.old")
    if with_new:
        shutil.copytree(source, folder / f"{ckpt.TMP_PREFIX}{step}")
    assert not (folder / f"{ckpt.PREFIX}{step}").exists()


def _saved_checkpoint(folder, step=6):
    """A real checkpoint written by `save_checkpoint` (keep 1), re-saved once at the same step."""
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from gotr1.train import checkpoint as ckpt
    from test_train_checkpoint import small_training, train

    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = small_training()
    train(model, optimizer, scheduler, 2, seed=0)

    def save_model(path):
        path.mkdir()
        save_file(dict(model.state_dict()), str(path / "model.safetensors"))

    for state in ({"x": 1}, {"x": 2}):  # the second is a re-save of the same step
        ckpt.save_checkpoint(
            accelerator, folder, step, save_model, optimizer, scheduler, state, keep=1
        )
    return folder / f"{ckpt.PREFIX}{step}"


@pytest.mark.parametrize("left", ["both", "new", "old"])
def test_a_kill_between_the_renames_of_a_re_save_keeps_the_checkpoint(tmp_path, left):
    import json

    from gotr1.cli import UserError
    from gotr1.train import checkpoint as ckpt

    source = _saved_checkpoint(tmp_path / "source")
    assert [p.name for p in (tmp_path / "source").iterdir()] == ["checkpoint-6"]
    run = tmp_path / "run"
    _killed_between_renames(run, source, 6, with_new=left != "old", with_old=left != "new")
    (run / f"{ckpt.TMP_PREFIX}8").mkdir()  # a half-written save: never a checkpoint

    assert ckpt.resolve_resume(run, True) == run / "checkpoint-6"
    state = json.loads((run / "checkpoint-6" / ckpt.STATE_FILE).read_text())
    assert state["step"] == 6 and state["x"] == 2
    ckpt.clean_stale(run)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-6"]
    assert ckpt.latest_checkpoint(run) == run / "checkpoint-6"

    # Cleaning first (a run without --resume) recovers too, and the run is then refused.
    again = tmp_path / "again"
    _killed_between_renames(again, source, 6, with_new=left != "old", with_old=left != "new")
    ckpt.clean_stale(again)
    assert [p.name for p in ckpt.checkpoints(again)] == ["checkpoint-6"]
    with pytest.raises(UserError, match="no complete checkpoint"):
        ckpt.resolve_resume(tmp_path / "empty", True)


def test_a_complete_copy_beside_its_final_folder_is_cleaned_not_recovered(tmp_path):
    import shutil

    from gotr1.train import checkpoint as ckpt

    source = _saved_checkpoint(tmp_path / "run")
    shutil.copytree(source, tmp_path / "run" / f"{ckpt.TMP_PREFIX}6")  # killed before the swap
    assert ckpt.recover_checkpoints(tmp_path / "run") == []
    ckpt.clean_stale(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint-6"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    import torch

    from test_train_helpers import make_tiny_model

    torch.set_num_threads(1)
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_sft_resumes_from_a_re_save_killed_between_its_renames(tiny_folder, tmp_path):
    import torch
    from safetensors.torch import load_file

    from gotr1.cli import UserError
    from gotr1.train.runlog import read_log
    from gotr1.train.sft import train_sft
    from test_train_sft import quick_config

    whole = tmp_path / "whole"
    train_sft(quick_config(tiny_folder, whole, save_total_limit=2))
    part = tmp_path / "part"
    _killed_between_renames(part, whole / "checkpoint-2", 2)
    lines = (whole / "train_log.jsonl").read_text().splitlines()
    (part / "train_log.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(UserError, match="already holds checkpoints"):
        train_sft(quick_config(tiny_folder, part, save_total_limit=1))  # not restarted at 0
    train_sft(quick_config(tiny_folder, part, save_total_limit=1), resume=True)
    assert [r["step"] for r in read_log(part)] == [1, 2, 3, 4]
    a = load_file(str(whole / "final" / "model.safetensors"))
    b = load_file(str(part / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_grpo_resumes_from_a_re_save_killed_between_its_renames(tiny_folder, tmp_path):
    import torch

    from gotr1.train import grpo
    from gotr1.train.runlog import read_log
    from test_train_grpo import quick, trainable
    from test_train_helpers import code_reward

    whole = tmp_path / "whole"
    grpo.train_grpo(quick(tiny_folder, whole, save_total_limit=2), reward_fn=code_reward)
    part = tmp_path / "part"
    _killed_between_renames(part, whole / "checkpoint-1", 1)
    lines = (whole / "train_log.jsonl").read_text().splitlines()
    (part / "train_log.jsonl").write_text(lines[0] + "\n")
    grpo.train_grpo(quick(tiny_folder, part), resume=True, reward_fn=code_reward)
    assert [r["step"] for r in read_log(part)] == [1, 2]
    a, b = trainable(whole / "final"), trainable(part / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
