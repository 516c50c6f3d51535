"""The world image tokenizer: training lowers the loss, codes agree with transformers, CLI saves a HF folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers.models.janus.modeling_janus import JanusVQVAE

from gotr1.cli import main
from gotr1.policy.presets import janus_config
from gotr1.policy.vq import (
    VQTrainConfig,
    decode_codes,
    encode_images,
    evaluate_vq,
    images_to_pixels,
    train_vq,
)
from gotr1.world import random_scene, render_scene


def _new_vq(seed: int = 0) -> JanusVQVAE:
    torch.manual_seed(seed)
    return JanusVQVAE(janus_config("world-tiny").vq_config)


@pytest.mark.slow
def test_training_lowers_reconstruction_loss_and_keeps_a_unit_codebook() -> None:
    vq = _new_vq()
    losses: list[float] = []
    config = VQTrainConfig(steps=40, batch_size=4, learning_rate=3e-3, crop_size=32, seed=1)
    train_vq(vq, config, log=lambda s: losses.append(s["reconstruction_loss"]), progress=False)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    norms = vq.quantize.embedding.weight.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_codes_agree_with_transformers_encode_and_decode_round_trips() -> None:
    vq = _new_vq()
    train_vq(vq, VQTrainConfig(steps=2, batch_size=2), progress=False)
    images = [render_scene(random_scene(random.Random(i))) for i in range(3)]
    codes = encode_images(vq, images)
    assert codes.shape == (3, 64)
    with torch.no_grad():
        hf_codes = vq.encode(images_to_pixels(images)).image_tokens.view(3, -1)
    assert torch.equal(codes, hf_codes)  # unit codebook: Euclidean nearest == cosine nearest
    decoded = decode_codes(vq, codes)
    assert [im.size for im in decoded] == [(64, 64)] * 3
    report = evaluate_vq(vq, scenes=4)
    assert 0 <= report["detector_agreement"] <= 1 and report["codebook_used"] >= 1


def test_train_vq_command_writes_a_loadable_folder_and_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "vq"
    code = main(
        ["train-vq", "--out", str(out), "--steps", "2", "--batch-size", "2", "--eval-scenes", "3"]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["step"] == 2 and report["eval"]["scenes"] == 3
    loaded = JanusVQVAE.from_pretrained(out)
    assert loaded.config.num_embeddings == 512
    assert main(["train-vq", "--out", str(out), "--steps", "0"]) == 2
    assert "--steps must be positive" in capsys.readouterr().err
