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
    pixel_loss_weights,
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
    # the plain pixel loss: the foreground-weighted one mostly measures colours, which take longer
    config = VQTrainConfig(
        steps=40,
        batch_size=4,
        warmup_steps=1,
        foreground_weight=0.0,
        consistency_weight=0.0,
        seed=1,
    )
    train_vq(vq, config, log=lambda s: losses.append(s["reconstruction_loss"]), progress=False)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    norms = vq.quantize.embedding.weight.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_patch_consistency_starts_at_its_fraction_of_steps() -> None:
    vq = _new_vq()
    rows: list[dict[str, float]] = []
    config = VQTrainConfig(steps=4, batch_size=2, consistency_from=0.5, restart_dead_every=0)
    stats = train_vq(vq, config, log=rows.append, progress=False)
    assert [row["consistency_loss"] == 0 for row in rows] == [True, True, False, False]
    assert "merged_codes" in stats  # the final merge ran (what it does: tested below)


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
        + ["--foreground-margin", "1"]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["step"] == 2 and report["eval"]["scenes"] == 3
    assert report["config"]["foreground_margin"] == 1
    loaded = JanusVQVAE.from_pretrained(out)
    assert loaded.config.num_embeddings == 512
    assert main(["train-vq", "--out", str(out), "--steps", "0"]) == 2
    assert "--steps must be positive" in capsys.readouterr().err
    assert main(["train-vq", "--out", str(out), "--consistency-from", "1.5"]) == 2
    assert "--consistency-from must be in [0, 1]" in capsys.readouterr().err
    assert main(["train-vq", "--out", str(out), "--foreground-weight", "-1"]) == 2
    assert "--foreground-weight must be >= 0" in capsys.readouterr().err
    assert main(["train-vq", "--out", str(out), "--foreground-margin", "-1"]) == 2
    assert "--foreground-margin must be >= 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Image tokens must be a function of their pixel patch
# ----------------------------------------------------------------------------------------------


def test_patch_consistency_loss_pulls_identical_patches_together():
    import torch

    from gotr1.policy.vq import patch_consistency_loss

    pixels = torch.zeros(2, 3, 8, 8)  # 2 images, 2x2 tokens of 4 px: all patches identical
    pixels[1, :, :4, :4] = 1.0  # except one
    unit = torch.nn.functional.normalize(torch.randn(2, 2, 2, 4), dim=-1)
    assert float(patch_consistency_loss(pixels, unit)) > 0
    same = unit.clone()
    same[:] = unit[0, 0, 0]
    same[1, 0, 0] = unit[1, 0, 0]  # the unique patch may have any latent
    assert float(patch_consistency_loss(pixels, same)) == pytest.approx(0.0, abs=1e-7)


def test_merged_duplicate_codes_encode_to_one_index():
    import torch

    from gotr1.policy.vq import duplicate_codes, merge_duplicate_codes

    codebook = torch.nn.functional.normalize(torch.eye(4, 8)[:, :8], dim=-1)
    codebook = torch.cat([codebook, codebook[2:3] + 0.01 * torch.randn(1, 8)])  # code 4 ~ code 2
    codebook = torch.nn.functional.normalize(codebook, dim=-1)
    usage = torch.tensor([5, 5, 1, 5, 9])  # the duplicate is used more: code 2 yields
    assert duplicate_codes(codebook, usage).tolist() == [False, False, True, False, False]
    assert merge_duplicate_codes(codebook, usage) == 1
    assert torch.equal(codebook[2], codebook[4])
    near = codebook[4] + 0.001 * torch.randn(64, 8)
    nearest = torch.cdist(near, codebook).argmin(-1)
    assert set(nearest.tolist()) == {2}  # exact ties resolve to one index, never noise


def test_pixel_loss_weights_cover_objects_and_their_margin() -> None:
    background = torch.full((1, 3, 1, 1), -0.5)
    pixels = background.expand(1, 3, 9, 9).clone()
    pixels[:, :, 4, 4] = 0.8  # one object pixel in the middle
    plain = pixel_loss_weights(pixels, background, 9.0, 0)[0, 0]
    assert plain[4, 4] == 10.0 and plain.sum() == 81 + 9
    ringed = pixel_loss_weights(pixels, background, 9.0, 2)[0, 0]
    assert (ringed[2:7, 2:7] == 10.0).all() and ringed.sum() == 81 + 9 * 25
    assert ringed[1, 4] == 1.0 and ringed[4, 7] == 1.0  # three pixels away: plain background
