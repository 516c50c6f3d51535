"""benchmarks/rehearsal.py end to end at the world-tiny shape: every stage of the recipe through
the real commands, the stand-in judge server on loopback, and the hand-off to plain
transformers and PEFT. (At a Janus-Pro width even one layer takes about ten minutes on two cores;
its JSON is under benchmarks/results/.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "rehearsal.py"
STAGES = ["init", "sft", "grpo", "grpo-resume", "eval-compbench", "eval-geneval", "plain-draw"]


@pytest.mark.slow
def test_rehearsal_runs_every_stage_and_records_time_and_memory(tmp_path):
    work, out = tmp_path / "work", tmp_path / "results"
    command = [
        sys.executable, str(SCRIPT), "--preset", "world-tiny", "--sft-steps", "1",
        "--num-generations", "2", "--max-chain-tokens", "16", "--eval-prompts", "1",
        "--eval-chain-tokens", "16", "--threads", "1", "--work", str(work), "--out", str(out),
        "--keep",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((out / "rehearsal-world-tiny-cpu.json").read_text())

    assert list(record["stages"]) == STAGES
    for name, stage in record["stages"].items():
        assert stage["exit_code"] == 0 and stage["seconds"] > 0, name
        assert 0.1 < stage["max_rss_gib"] < 8, name  # the stage's own process, not the parent's
    assert record["machine"]["cores"] == os.cpu_count()
    assert "--preset world-tiny" in record["command"]  # the settings, not this machine's folders
    assert str(tmp_path) not in record["command"] and "--keep" not in record["command"]

    # GRPO: one step, a checkpoint, then --resume to the second; the stand-in judge's varied
    # answers give the update non-zero advantages; each step logs its phases' peak memory.
    log = record["grpo"]["train_log"]
    assert [row["step"] for row in log] == [1, 2]
    assert all(row["reward_std"] > 0 for row in log)
    assert all(row["memory/update_peak_gib"] > 0.1 for row in log)
    assert (work / "grpo" / "checkpoint-1").is_dir()
    asked = record["judge_requests"]
    assert asked["score"] > 0 and asked["ground"] > 0 and asked["yes-no"] > 0

    # The evaluations wrote the official layouts; the hand-off drew with transformers and PEFT.
    assert sorted(work.glob("compbench/color/samples/*.png"))
    assert sorted(work.glob("compbench/spatial/samples/*.png"))
    assert sorted(work.glob("geneval/00000/samples/*.png"))
    drawn = record["stages"]["plain-draw"]
    for name in ("sft-folder", "grpo-adapter"):
        assert drawn[name]["image_tokens"] == 64
        assert Image.open(work / f"{name}.png").size == (64, 64)
