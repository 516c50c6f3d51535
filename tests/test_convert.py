"""DeepSeek-format -> HF conversion: key mapping, configs, the `gotr1 convert` command, errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gotr1.chain import GOT_MARKUP_TOKENS
from gotr1.errors import UserError
from gotr1.policy import commands
from gotr1.policy.convert import (
    convert_state_dict,
    janus_config_from_original,
    original_config_from_hf,
    original_to_hf_key,
    to_original_state_dict,
)
from gotr1.policy.io import configure_special_tokens
from gotr1.policy.presets import build_model, count_parameters
from gotr1.policy.tokenizer import train_world_tokenizer, world_corpus

# DeepSeek's released deepseek-ai/Janus-Pro-1B config.json (the fields the converter reads).
JANUS_PRO_1B_CONFIG = {
    "model_type": "multi_modality",
    "aligner_config": {
        "cls": "MlpProjector",
        "model_type": "aligner",
        "params": {"depth": 2, "input_dim": 1024, "n_embed": 2048, "projector_type": "mlp_gelu"},
    },
    "gen_aligner_config": {
        "cls": "MlpProjector",
        "model_type": "gen_aligner",
        "params": {"depth": 2, "input_dim": 8, "n_embed": 2048, "projector_type": "mlp_gelu"},
    },
    "gen_head_config": {
        "cls": "vision_head",
        "model_type": "gen_head",
        "params": {"image_token_embed": 2048, "image_token_size": 16384, "n_embed": 2048},
    },
    "gen_vision_config": {
        "cls": "VQ-16",
        "model_type": "gen_vision",
        "params": {"image_token_size": 16384, "n_embed": 8},
    },
    "language_config": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "max_position_embeddings": 16384,
        "model_type": "llama",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "num_key_value_heads": 16,
        "torch_dtype": "bfloat16",
        "vocab_size": 102400,
    },
    "vision_config": {
        "cls": "CLIPVisionTower",
        "model_type": "vision",
        "params": {
            "image_size": 384,
            "model_name": "siglip_large_patch16_384",
            "select_feature": "same",
            "select_layer": -1,
        },
    },
}


@pytest.fixture(scope="module")
def plain_tokenizer():
    """A world tokenizer without the GoT markup, like a released checkpoint's tokenizer."""
    return train_world_tokenizer(world_corpus(300, seed=2), vocab_size=300, add_markup=False)


@pytest.fixture(scope="module")
def hf_model(plain_tokenizer):
    model = build_model("world-tiny", vocab_size=len(plain_tokenizer) + 8, seed=5)  # spare rows
    configure_special_tokens(model, plain_tokenizer)
    return model


def write_original_checkpoint(folder: Path, model, tokenizer) -> Path:
    """A DeepSeek-format folder (config.json, safetensors, tokenizer) holding `model`'s weights."""
    folder.mkdir(parents=True)
    original = to_original_state_dict(model.state_dict())
    original["vision_model.vision_tower.attn_pool.latent"] = torch.zeros(1, 1, 64)  # dropped
    original["gen_vision_model.quantize.codebook_used"] = torch.zeros(512)  # dropped
    save_file({k: v.contiguous() for k, v in original.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(original_config_from_hf(model.config)))
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_size": 64, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )
    tokenizer.save_pretrained(folder)
    return folder


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gotr1")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_registering_the_command_stays_light():
    script = (
        "import argparse, sys\n"
        "from gotr1.policy import commands\n"
        "parser = argparse.ArgumentParser(prog='gotr1')\n"
        "commands.register(parser.add_subparsers(dest='command'))\n"
        "args = parser.parse_args(['convert', 'a', 'b', '--dtype', 'bfloat16'])\n"
        "assert args.func is commands.run_convert and args.markup_init == 'keep'\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_hf_to_deepseek_and_back_is_bit_exact(hf_model):
    hf = hf_model.state_dict()
    original = to_original_state_dict(hf)
    hidden = hf_model.config.vision_config.hidden_size
    grid = hf_model.config.vision_config.num_image_tokens
    assert original["vision_model.vision_tower.blocks.0.attn.qkv.weight"].shape == (
        3 * hidden,
        hidden,
    )
    assert original["vision_model.vision_tower.pos_embed"].shape == (1, grid, hidden)
    for key in (
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.3.mlp.down_proj.weight",
        "language_model.lm_head.weight",
        "gen_embed.weight",
        "gen_aligner.layers.0.weight",
        "gen_aligner.layers.2.bias",
        "gen_head.output_mlp_projector.weight",
        "gen_head.vision_head.weight",
        "aligner.layers.0.weight",
        "gen_vision_model.encoder.conv_blocks.0.res.0.conv1.weight",
        "gen_vision_model.encoder.conv_blocks.0.downsample.conv.weight",
        "gen_vision_model.decoder.conv_blocks.0.attn.0.proj_out.weight",
        "gen_vision_model.decoder.conv_blocks.1.upsample.conv.weight",
        "gen_vision_model.encoder.mid.1.q.weight",
        "gen_vision_model.quantize.embedding.weight",
        "vision_model.vision_tower.blocks.0.attn.proj.weight",
        "vision_model.vision_tower.norm.weight",
    ):
        assert key in original, key
    assert not any(k.startswith("model.") for k in original)
    back = convert_state_dict(original)
    assert set(back) == set(hf)
    for key, value in hf.items():
        assert back[key].dtype == value.dtype
        assert torch.equal(back[key], value), key


def test_unknown_and_dropped_keys():
    assert original_to_hf_key("vision_model.vision_tower.attn_pool.q.weight") is None
    assert original_to_hf_key("gen_vision_model.quantize.codebook_used") is None
    assert original_to_hf_key("aligner.layers.2.weight") == "model.aligner.hidden_layers.0.weight"
    with pytest.raises(ValueError, match="outside the DeepSeek Janus layout"):
        convert_state_dict({"text_model.embed.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="fused qkv"):
        convert_state_dict(
            {"vision_model.vision_tower.blocks.0.attn.qkv.weight": torch.zeros(4, 2)}
        )


def test_janus_pro_config_converts_to_the_preset_shape():
    config = janus_config_from_original(JANUS_PRO_1B_CONFIG)
    assert config.text_config.hidden_size == 2048
    assert config.vision_config.num_image_tokens == 576
    assert config.vq_config.channel_multiplier == [1, 1, 2, 2, 4]
    assert config.tie_word_embeddings is False
    from accelerate import init_empty_weights
    from transformers import JanusForConditionalGeneration

    with init_empty_weights():
        converted = JanusForConditionalGeneration(config)
    preset = build_model("janus-pro-1b", device="meta")
    shapes = {k: tuple(v.shape) for k, v in converted.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in preset.state_dict().items()}
    assert count_parameters(converted)["total"] == count_parameters(preset)["total"]


def test_convert_command_end_to_end(hf_model, plain_tokenizer, tmp_path, capsys):
    from transformers import AutoProcessor, JanusForConditionalGeneration

    src = write_original_checkpoint(tmp_path / "got-r1", hf_model, plain_tokenizer)
    assert run_cli("convert", str(src), str(tmp_path / "hf")) == 0
    assert "converted" in capsys.readouterr().out
    converted = JanusForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    vocab = processor.tokenizer.get_vocab()
    assert set(GOT_MARKUP_TOKENS) <= set(vocab)
    markup_ids = sorted(vocab[t] for t in GOT_MARKUP_TOKENS)
    assert markup_ids == list(range(len(plain_tokenizer), len(plain_tokenizer) + 4))
    expected = hf_model.state_dict()
    assert set(converted.state_dict()) == set(expected)
    for key, value in converted.state_dict().items():
        assert torch.equal(value, expected[key]), key  # "keep": spare rows untouched too
    ids = torch.tensor([[0, 11, 23, 47, markup_ids[0]]])
    with torch.no_grad():
        assert torch.equal(converted(input_ids=ids).logits, hf_model(input_ids=ids).logits)
    assert processor.image_processor.size["height"] == 64

    assert (
        run_cli(
            "convert",
            str(src),
            str(tmp_path / "hf_mean"),
            "--markup-init",
            "mean",
            "--dtype",
            "bfloat16",
        )
        == 0
    )
    reset = JanusForConditionalGeneration.from_pretrained(
        tmp_path / "hf_mean", dtype=torch.bfloat16
    )
    embed = reset.get_input_embeddings().weight
    assert embed.dtype == torch.bfloat16
    mean = (
        expected["model.language_model.embed_tokens.weight"][: len(plain_tokenizer)].float().mean(0)
    )
    for row in markup_ids:
        assert torch.allclose(embed[row].float(), mean, atol=1e-2)


def test_convert_errors_are_clear(hf_model, plain_tokenizer, tmp_path):
    from gotr1.policy.convert import convert_checkpoint

    with pytest.raises(UserError, match="no such checkpoint folder"):
        convert_checkpoint(tmp_path / "missing", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        convert_checkpoint(empty, tmp_path / "out")
    (empty / "config.json").write_text("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        convert_checkpoint(empty, tmp_path / "out")
    (empty / "config.json").write_text(json.dumps({"model_type": "janus"}))
    with pytest.raises(UserError, match="already in the Hugging Face"):
        convert_checkpoint(empty, tmp_path / "out")

    src = write_original_checkpoint(tmp_path / "src", hf_model, plain_tokenizer)
    config = json.loads((src / "config.json").read_text())
    del config["gen_head_config"]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="missing section 'gen_head_config'"):
        convert_checkpoint(src, tmp_path / "out")
    (src / "config.json").write_text(json.dumps(original_config_from_hf(hf_model.config)))

    weights = src / "model.safetensors"
    weights.rename(src / "pytorch_model.bin")  # safetensors bytes under a torch pickle's name
    with pytest.raises(UserError, match="not a plain tensor checkpoint"):
        convert_checkpoint(src, tmp_path / "out")
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        convert_checkpoint(src, tmp_path / "out")

    partial = to_original_state_dict(hf_model.state_dict())
    partial.pop("gen_embed.weight")
    save_file({k: v.contiguous() for k, v in partial.items()}, str(weights))
    with pytest.raises(UserError, match="missing .*generation_embeddings"):
        convert_checkpoint(src, tmp_path / "out")

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        convert_checkpoint(src, occupied)
