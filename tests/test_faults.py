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
