"""Shared pieces of the training tests: a tiny world model folder and a dense test reward.

(No tests here; the other test_train_* modules import it.)
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from gotr1.policy.presets import WORLD_TINY

# world-tiny shrunk so a training step takes ~0.1 s: 2 layers, hidden 64, grouped-query attention,
# 64 VQ codes on the same 8x8 grid.
TINY = dataclasses.replace(
    WORLD_TINY,
    name="world-test",
    text={
        **WORLD_TINY.text,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    vq={**WORLD_TINY.vq, "num_embeddings": 64, "latent_channels": 32},
)
REPO = Path(__file__).resolve().parents[1]


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A tiny random Janus model with a small world tokenizer, saved as an HF folder."""
    from gotr1.policy.io import configure_special_tokens, save_pretrained
    from gotr1.policy.presets import build_model
    from gotr1.policy.tokenizer import build_processor, build_prompt_text, train_world_tokenizer
    from gotr1.world import sample_examples

    examples = sample_examples(60, seed=0)
    texts = [build_prompt_text(e.prompt) for e in examples] + [e.chain for e in examples]
    tokenizer = train_world_tokenizer(texts=texts, vocab_size=300)
    processor = build_processor(tokenizer, image_size=64, num_image_tokens=64)
    model = build_model(TINY, vocab_size=len(tokenizer), seed=seed)
    configure_special_tokens(model, tokenizer)
    save_pretrained(model, processor, folder)
    return folder


def code_reward(rollouts):
    """A dense reward that varies inside groups even for a random model: the fraction of image
    codes in the lower half of the codebook (every component set to it, total as well)."""
    from gotr1.rewards import Rewards

    values = (rollouts.image_ids.cpu() < 32).float().mean(1).double().numpy()
    rows = len(values)
    return Rewards(
        sem=values.copy(),
        spa=values.copy(),
        ri=values.copy(),
        pi=values.copy(),
        total=values.copy(),
        keep=np.ones(rows, dtype=bool),
        failed={c: np.zeros(rows, dtype=bool) for c in ("sem", "spa", "ri", "pi")},
        timings={},
    )


def subprocess_env(threads: int = 1) -> dict[str, str]:
    """Environment for child processes: one torch thread each, quiet, the package importable."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
        HF_HUB_OFFLINE="1",
    )
    return env


def launch_two_cpu_processes(script: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `script` in two gloo processes with accelerate's multi-CPU launch (the torchrun
    launcher plus ACCELERATE_USE_CPU); raise with its output when it fails."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(script), *args,
    ]  # fmt: skip
    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(
            f"launch failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def run_python(code: str, timeout: float = 300, threads: int = 1) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter; raise with its output when it fails."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(threads),
        cwd=REPO,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"child failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def test_one_process_runs_trainings_of_different_precision_one_after_another(tmp_path):
    # the demo runs SFT (bf16) then GRPO in one process; accelerate keeps global state
    from gotr1.train.config import SFTConfig
    from gotr1.train.runtime import make_accelerator

    first = make_accelerator(SFTConfig(mixed_precision="bf16", output_dir=str(tmp_path)))
    assert first.mixed_precision == "bf16"
    second = make_accelerator(SFTConfig(mixed_precision="no", output_dir=str(tmp_path)))
    assert second.mixed_precision == "no"
