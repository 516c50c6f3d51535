"""The HPS v2.1 reward factor: its score, the open_clip -> CLIPModel conversion, and GRPO with hps.

The models are tiny random CLIPModels with GELU (ViT-H-14's activation) built here
(tests/tiny_hf.py); the open_clip checkpoint is written here in open_clip's own key layout (fused
q/k/v, ``x @ proj`` projections) from one tiny model's weights, so converting it must give that
model's features back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import gotr1.train.grpo as grpo
from gotr1.errors import ConfigError, UserError
from gotr1.rewards.combine import RewardConfig
from gotr1.rewards.hps import HPSReward, convert_open_clip_checkpoint
from gotr1.train.config import GRPOConfig
from gotr1.train.runlog import read_log
from test_train_grpo import quick
from test_train_helpers import make_tiny_model
from tiny_hf import build_clip

MEAN = np.array((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)[:, None, None]
STD = np.array((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)[:, None, None]


@pytest.fixture(scope="module")
def hps_folder(tmp_path_factory):
    torch.set_num_threads(1)
    return build_clip(tmp_path_factory.mktemp("hps") / "hps-v2.1", seed=11, hidden_act="gelu")


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def test_hps_is_the_clip_cosine_clamped_to_the_unit_interval(hps_folder):
    from transformers import CLIPModel, CLIPTokenizer

    reward = HPSReward(str(hps_folder), device="cpu", local_files_only=True)
    model = CLIPModel.from_pretrained(hps_folder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(hps_folder)
    images = [picture(0), picture(1), picture(2)]
    prompts = ["a red apple", "a cat", "two dogs on a sofa"]
    pixels = np.stack(
        [(np.asarray(i, np.float32).transpose(2, 0, 1) / 255 - MEAN) / STD for i in images]
    )
    encoded = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**encoded, pixel_values=torch.from_numpy(pixels))
    cosines = (torch.diagonal(out.logits_per_image) / model.logit_scale.exp()).tolist()
    assert reward(prompts, images) == pytest.approx([min(1, max(0, c)) for c in cosines], abs=1e-5)


def _open_clip_state(model) -> dict[str, torch.Tensor]:
    """The weights of a transformers CLIPModel in open_clip's layout and names."""
    s = model.state_dict()
    out = {
        "positional_embedding": s["text_model.embeddings.position_embedding.weight"],
        "token_embedding.weight": s["text_model.embeddings.token_embedding.weight"],
        "ln_final.weight": s["text_model.final_layer_norm.weight"],
        "ln_final.bias": s["text_model.final_layer_norm.bias"],
        "text_projection": s["text_projection.weight"].t(),
        "logit_scale": s["logit_scale"],
        "visual.class_embedding": s["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": s["vision_model.embeddings.position_embedding.weight"],
        "visual.conv1.weight": s["vision_model.embeddings.patch_embedding.weight"],
        "visual.ln_pre.weight": s["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": s["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": s["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": s["vision_model.post_layernorm.bias"],
        "visual.proj": s["visual_projection.weight"].t(),
    }
    for hf, oc in (("text_model", ""), ("vision_model", "visual.")):
        for i in range(2):
            src = f"{hf}.encoder.layers.{i}."
            dst = f"module.{oc}transformer.resblocks.{i}."  # as saved from DDP
            for kind in ("weight", "bias"):
                out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                    [s[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"]
                )
                out[dst + f"attn.out_proj.{kind}"] = s[src + f"self_attn.out_proj.{kind}"]
                out[dst + f"ln_1.{kind}"] = s[src + f"layer_norm1.{kind}"]
                out[dst + f"ln_2.{kind}"] = s[src + f"layer_norm2.{kind}"]
                out[dst + f"mlp.c_fc.{kind}"] = s[src + f"mlp.fc1.{kind}"]
                out[dst + f"mlp.c_proj.{kind}"] = s[src + f"mlp.fc2.{kind}"]
    return {k: v.clone() for k, v in out.items()}


def test_an_open_clip_checkpoint_converts_to_the_same_model(hps_folder, tmp_path):
    from transformers import CLIPModel

    original = CLIPModel.from_pretrained(hps_folder).eval()
    checkpoint = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": _open_clip_state(original)}, checkpoint)
    base = build_clip(tmp_path / "base", seed=99, hidden_act="gelu")  # same shape, other weights
    out = convert_open_clip_checkpoint(checkpoint, str(base), tmp_path / "converted", True)
    images, prompts = [picture(3), picture(4)], ["a red apple", "a blue car"]
    converted = HPSReward(str(out), device="cpu", local_files_only=True)
    reference = HPSReward(str(hps_folder), device="cpu", local_files_only=True)
    unconverted = HPSReward(str(base), device="cpu", local_files_only=True)
    assert converted(prompts, images) == pytest.approx(reference(prompts, images), abs=1e-6)
    assert converted(prompts, images) != pytest.approx(unconverted(prompts, images), abs=1e-6)

    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"visual.unknown": torch.zeros(1)}}, bad)
    with pytest.raises(
        UserError, match="no transformers CLIP key for open_clip key 'visual.unknown'"
    ):
        convert_open_clip_checkpoint(bad, str(base), tmp_path / "x", True)
    with pytest.raises(UserError, match="no such file"):
        convert_open_clip_checkpoint(tmp_path / "missing.pt", str(base), tmp_path / "x", True)


def test_hps_config_checks():
    with pytest.raises(ConfigError, match="hps_model is required"):
        GRPOConfig(reward_components=["sem", "hps"])
    with pytest.raises(ConfigError, match="hps_model is set .* 'hps' is not among"):
        GRPOConfig(hps_model="x")
    with pytest.raises(ConfigError, match="both extra reward factors"):
        GRPOConfig(reward_components=["pi", "hps"], hps_model="x", world_clean_image=True)
    with pytest.raises(ConfigError, match="at least one of sem, spa, ri, pi beside hps"):
        GRPOConfig(reward_components=["hps"], hps_model="x")
    with pytest.raises(ConfigError, match="^hps_weight is set"):
        GRPOConfig(reward_components=["pi", "hps"], hps_model="x", hps_weight=2.0)
    config = GRPOConfig(
        reward_components=["pi", "hps"], hps_model="x", reward_combination="sum", hps_weight=2.0
    )
    assert config.reward_config() == RewardConfig(
        components=("pi",), combination="sum", extra_weight=2.0
    )


@pytest.mark.parametrize("combination", ["product", "sum"])
def test_hps_enters_the_grpo_reward_and_a_short_run(hps_folder, tmp_path, combination):
    config = GRPOConfig(
        reward_components=["sem", "spa", "ri", "pi", "hps"],
        reward_combination=combination,
        hps_model=str(hps_folder),
        hps_device="cpu",
    )
    reward = grpo.make_reward(config)
    plain = grpo.make_reward(GRPOConfig(reward_combination=combination))
    images = [picture(5), picture(6)]
    prompts = ["a red circle", "a blue square left of a green triangle"]
    chains = [
        "a <|obj_start|>red circle<|obj_end|> <|box_start|>(100,100),(400,400)<|box_end|>"
    ] * 2
    scored, base = reward.score(prompts, chains, images), plain.score(prompts, chains, images)
    hps = np.array(HPSReward(str(hps_folder), device="cpu")(prompts, images))
    assert scored.extra == pytest.approx(hps)
    if combination == "product":
        assert scored.total == pytest.approx(base.total * hps)
    else:
        assert scored.total == pytest.approx(base.total + hps)

    if combination == "product":  # a short GRPO run on a tiny policy with R_HPS in the product
        folder = make_tiny_model(tmp_path / "policy")
        out = tmp_path / "run"
        run = quick(
            folder,
            out,
            max_steps=1,
            reward_components=["sem", "spa", "ri", "pi", "hps"],
            hps_model=str(hps_folder),
            hps_device="cpu",
        )
        grpo.train_grpo(run)
        rows = read_log(out)
        assert len(rows) == 1 and 0 <= rows[0]["rewards/hps/mean"] <= 1
        assert "hps" in (out / "config.yaml").read_text()


def test_convert_hps_command_reports_bad_input_in_one_line(tmp_path, capsys):
    from gotr1.cli import main

    code = main(["convert-hps", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "none.pt: no such file" in err and "Traceback" not in err
