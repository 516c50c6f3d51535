"""Hand-offs to plain transformers and PEFT: folders gotr1 writes draw images with plain
transformers, markup tokens added at load keep trained embedding rows, LoRA adapters load in plain
PEFT to gotr1's logits, and DeepSeek ``pytorch_model.bin`` checkpoints convert safely.

The models here are built with transformers' own classes (or trained by gotr1 and then read back
by transformers), so the two sides of each hand-off are not the same code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusProcessor,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
)

from gotr1.policy.tokenizer import GOT_R1_MARKUP_ORDER, train_world_tokenizer, world_corpus
from gotr1.train.config import SFTConfig
from gotr1.train.sft import train_sft
from test_convert import write_original_checkpoint
from test_train_helpers import make_tiny_model


def draw_with_plain_transformers(folder: Path) -> torch.Tensor:
    """Image tokens and decoded pixels from `folder`, using transformers alone."""
    model = JanusForConditionalGeneration.from_pretrained(folder).eval()
    processor = JanusProcessor.from_pretrained(folder)
    inputs = processor(text=["a red square left of a blue circle"], generation_mode="image")
    with torch.no_grad():
        tokens = model.generate(
            **inputs, generation_mode="image", do_sample=False, guidance_scale=2.0
        )
        pixels = model.decode_image_tokens(tokens)
    codes = model.config.vq_config.num_embeddings
    assert tokens.shape == (1, model.config.vision_config.num_image_tokens)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < codes
    assert pixels.shape[0] == 1 and pixels.shape[-1] == 3 and torch.isfinite(pixels).all()
    return tokens


def test_folders_gotr1_writes_draw_with_plain_transformers(tmp_path):
    torch.set_num_threads(1)
    start = make_tiny_model(tmp_path / "start")
    # Start as a folder of a model built from its config does (plain transformers' save_pretrained
    # of a fresh model, or gotr1's world-tiny folders written before): a generation config marked
    # `_from_model_config`. Saves must not carry that mark on (transformers then drops
    # generation_kwargs on load and image generation fails).
    generation = start / "generation_config.json"
    generation.write_text(
        json.dumps({**json.loads(generation.read_text()), "_from_model_config": True})
    )
    run = tmp_path / "sft"
    config = SFTConfig(
        model=str(start),
        output_dir=str(run),
        max_steps=2,
        batch_size=2,
        learning_rate=1e-3,
        warmup_steps=0,
        save_steps=1,
        sample_steps=0,
        progress=False,
    )
    final = train_sft(config)
    folders = [final, run / "checkpoint-1" / "model"]

    # gotr1 convert: a DeepSeek-format copy of the start model, converted back.
    plain = JanusForConditionalGeneration.from_pretrained(start)
    deepseek = write_original_checkpoint(
        tmp_path / "deepseek", plain, JanusProcessor.from_pretrained(start).tokenizer
    )
    from gotr1.policy.convert import convert_checkpoint

    folders.append(convert_checkpoint(deepseek, tmp_path / "converted"))

    for folder in folders:
        draw_with_plain_transformers(folder)
        saved = json.loads((folder / "generation_config.json").read_text())
        assert not saved.get("_from_model_config"), folder
        assert saved["generation_kwargs"]["boi_token_id"] == saved["boi_token_id"], folder


# --- markup tokens added at load keep trained rows -------------------------------------------


def plain_janus(vocab_size: int, seed: int = 0) -> JanusForConditionalGeneration:
    """A tiny random Janus built with transformers' own config classes (untied text head)."""
    hidden = 32
    config = JanusConfig(
        text_config=LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
            tie_word_embeddings=False,
        ),
        vision_config=JanusVisionConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_ratio=2.0,
            image_size=64,
            patch_size=8,
            projection_dim=hidden,
            depth=2,
            num_image_tokens=64,
        ),
        vq_config=JanusVQVAEConfig(
            num_embeddings=64,
            embed_dim=8,
            latent_channels=32,
            base_channels=32,
            channel_multiplier=[1, 1, 2, 2],
            num_res_blocks=1,
            num_hidden_layers=2,
            projection_dim=hidden,
            image_token_embed_dim=hidden,
        ),
        image_token_id=5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return JanusForConditionalGeneration(config).eval()


def save_plain(folder: Path, model: JanusForConditionalGeneration, tokenizer) -> Path:
    """Save `model` and a JanusProcessor over `tokenizer` with transformers' own methods."""
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    image_processor = JanusImageProcessorPil(
        size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    model.save_pretrained(folder)
    JanusProcessor(image_processor, tokenizer, num_image_tokens=64).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain_tokenizer():
    """A world tokenizer without the GoT markup, like a released Janus-Pro / GoT-R1 tokenizer."""
    return train_world_tokenizer(world_corpus(300, seed=2), vocab_size=300, add_markup=False)


def text_logits(model, ids: list[int]) -> torch.Tensor:
    """Next-token logits of every position of one sequence."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_markup_added_on_load_keeps_the_rows_the_matrix_has(plain_tokenizer, tmp_path, capsys):
    from gotr1.policy.convert import convert_checkpoint
    from gotr1.policy.io import load_pretrained
    from gotr1.policy.policy import Policy

    known = len(plain_tokenizer)
    markup = list(range(known, known + 4))  # GoT-R1's ids: appended after the tokenizer
    model = plain_janus(vocab_size=known + 12, seed=3)  # rows past the tokenizer, as Janus-Pro
    with torch.no_grad():  # trained markup rows: far from the mean row
        model.get_input_embeddings().weight[markup] = 3 * torch.randn(4, 32)
        model.lm_head.weight[markup] = 3 * torch.randn(4, 32)
    folder = save_plain(tmp_path / "got-r1", model, plain_tokenizer)
    ids = [0, 11, markup[2], 40, 41, markup[3], markup[0], 23, 57, markup[1], 3]
    expected = text_logits(model, ids)
    embed = model.get_input_embeddings().weight.detach().clone()
    head = model.lm_head.weight.detach().clone()
    capsys.readouterr()

    loaded = {"load_pretrained": load_pretrained(folder)[0]}
    said = [line for line in capsys.readouterr().err.splitlines() if "GoT markup" in line]
    assert len(said) == 1 and "4 kept" in said[0] and "0 got new rows" in said[0], said
    policy = Policy.load(folder)  # also what `gotr1 generate` loads
    assert policy.tokenizer.convert_tokens_to_ids(list(GOT_R1_MARKUP_ORDER)) == markup
    loaded["Policy.load"] = policy.model
    deepseek = write_original_checkpoint(tmp_path / "deepseek", model, plain_tokenizer)
    converted = convert_checkpoint(deepseek, tmp_path / "converted")
    loaded["gotr1 convert"] = JanusForConditionalGeneration.from_pretrained(converted).eval()
    for name, other in loaded.items():
        assert torch.equal(other.get_input_embeddings().weight, embed), name
        assert torch.equal(other.lm_head.weight, head), name
        difference = (text_logits(other, ids) - expected).abs().max().item()
        assert difference <= 1e-6, (name, difference)


def test_markup_rows_the_matrix_must_grow_by_get_the_mean(plain_tokenizer, tmp_path, capsys):
    from gotr1.policy.io import load_pretrained

    known = len(plain_tokenizer)
    model = plain_janus(vocab_size=known, seed=4)  # no room: the matrix grows by four rows
    folder = save_plain(tmp_path / "base", model, plain_tokenizer)
    embed = model.get_input_embeddings().weight.detach()
    head = model.lm_head.weight.detach()
    capsys.readouterr()
    loaded, processor = load_pretrained(folder)
    said = [line for line in capsys.readouterr().err.splitlines() if "GoT markup" in line]
    assert len(said) == 1 and "0 kept" in said[0] and "4 got new rows" in said[0], said
    new_embed = loaded.get_input_embeddings().weight
    new_head = loaded.lm_head.weight
    assert new_embed.shape[0] == new_head.shape[0] == known + 4 == len(processor.tokenizer)
    assert torch.equal(new_embed[:known], embed) and torch.equal(new_head[:known], head)
    for row in range(known, known + 4):
        assert torch.allclose(new_embed[row], embed.mean(0), atol=1e-6)
        assert torch.allclose(new_head[row], head.mean(0), atol=1e-6)
    ids = [0, 11, 40, 41, 23, 57]  # tokens the base knows compute as before
    logits = text_logits(loaded, ids)
    assert torch.allclose(logits[:, :known], text_logits(model, ids), atol=1e-6)


# --- LoRA adapters load in plain PEFT ---------------------------------------------------------


def text_and_image_logits(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text logits of every position and image-head logits of the last one."""
    from gotr1.policy.lora import unwrap_model

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        image = unwrap_model(model).model.generation_head(out.hidden_states[-1][0, -1])
    return out.logits[0], image


def test_lora_adapter_loads_in_plain_peft_to_gotr1s_logits(plain_tokenizer, tmp_path):
    from peft import PeftModel

    from gotr1.policy.lora import apply_lora
    from gotr1.policy.policy import Policy

    known = len(plain_tokenizer)
    markup = list(range(known, known + 4))
    base_model = plain_janus(vocab_size=known + 12, seed=5)  # room for the markup, as Janus-Pro
    with torch.no_grad():
        base_model.get_input_embeddings().weight[markup] = 3 * torch.randn(4, 32)
        base_model.lm_head.weight[markup] = 3 * torch.randn(4, 32)
    base = save_plain(tmp_path / "base", base_model, plain_tokenizer)

    start = Policy.load(base)  # the tokenizer lacks the markup: loading adds it
    lora = apply_lora(start.model, r=4, alpha=8, train_image_head=True)
    torch.manual_seed(0)
    with torch.no_grad():  # trained adapters and image head copy
        for name, parameter in lora.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    adapter = Policy(lora, start.processor).save(tmp_path / "adapter")

    ids = [0, 11, markup[2], 40, 41, markup[3], markup[0], 23, markup[1], 3]
    ours = Policy.load(adapter).model.eval()
    plain_base = JanusForConditionalGeneration.from_pretrained(base).eval()
    base_text, _ = text_and_image_logits(plain_base, ids)
    theirs = PeftModel.from_pretrained(plain_base, str(adapter)).eval()
    our_text, our_image = text_and_image_logits(ours, ids)
    their_text, their_image = text_and_image_logits(theirs, ids)
    trained_text, trained_image = text_and_image_logits(lora.eval(), ids)
    assert (their_text - our_text).abs().max().item() <= 1e-5
    assert (their_image - our_image).abs().max().item() <= 1e-5
    assert (our_text - trained_text).abs().max().item() <= 1e-5
    assert (our_image - trained_image).abs().max().item() <= 1e-5
    assert (base_text - our_text).abs().max().item() > 1e-3  # the adapters matter


def test_lora_on_a_base_without_room_for_the_markup_is_refused(plain_tokenizer, tmp_path):
    from gotr1.errors import UserError
    from gotr1.policy.io import load_pretrained, save_pretrained
    from gotr1.policy.lora import apply_lora

    known = len(plain_tokenizer)
    base = save_plain(tmp_path / "base", plain_janus(vocab_size=known, seed=6), plain_tokenizer)
    model, processor = load_pretrained(base)  # grows the matrix by the four markup rows
    with pytest.raises(UserError, match="LoRA") as refused:
        apply_lora(model, r=4, alpha=8)
    assert "\n" not in str(refused.value) and "SFT" in str(refused.value)
    # What the message advises: save the resized base once, then LoRA on it loads in plain PEFT.
    resized = save_pretrained(model, processor, tmp_path / "resized")
    model, _ = load_pretrained(resized)
    apply_lora(model, r=4, alpha=8)


# --- DeepSeek pytorch_model.bin checkpoints -----------------------------------------------------


class WritesAMarker:
    """An object whose unpickling would create a file: proof that nothing but tensors is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_deepseek_bin_checkpoints_convert_like_their_safetensors_twin(plain_tokenizer, tmp_path):
    from safetensors.torch import load_file

    from gotr1.errors import UserError
    from gotr1.policy.convert import convert_checkpoint

    model = plain_janus(vocab_size=len(plain_tokenizer) + 8, seed=7)
    twin = write_original_checkpoint(tmp_path / "safetensors", model, plain_tokenizer)
    weights = load_file(str(twin / "model.safetensors"))
    names = sorted(weights)

    def bin_copy(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for path in twin.iterdir():
            if path.name != "model.safetensors":
                (folder / path.name).write_bytes(path.read_bytes())
        return folder

    single = bin_copy("bin")  # deepseek-ai/Janus-Pro-1B: one pytorch_model.bin
    torch.save(weights, single / "pytorch_model.bin")
    sharded = bin_copy("bin-sharded")  # deepseek-ai/Janus-Pro-7B: shards and an index
    half = len(names) // 2
    shards = {"pytorch_model-00001-of-00002.bin": names[:half]}
    shards["pytorch_model-00002-of-00002.bin"] = names[half:]
    for file, keys in shards.items():
        torch.save({k: weights[k] for k in keys}, sharded / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))

    ids = [0, 11, 40, 41, len(plain_tokenizer), 23, 3]
    converted = {
        name: JanusForConditionalGeneration.from_pretrained(
            convert_checkpoint(folder, tmp_path / f"hf-{name}")
        ).eval()
        for name, folder in (("safetensors", twin), ("bin", single), ("sharded", sharded))
    }
    expected = converted.pop("safetensors")
    expected_state = expected.state_dict()
    expected_text, expected_image = text_and_image_logits(expected, ids)
    for name, other in converted.items():
        state = other.state_dict()
        assert set(state) == set(expected_state), name
        assert all(torch.equal(state[k], expected_state[k]) for k in state), name
        text, image = text_and_image_logits(other, ids)
        assert torch.equal(text, expected_text) and torch.equal(image, expected_image), name

    # Only tensors: an object that is not one is never unpickled, and the error is one line.
    marker = tmp_path / "unpickled"
    for file, payload in (
        ("object", {**weights, "trap": WritesAMarker(marker)}),
        ("number", {**weights, "step": 3}),
        ("list", list(weights.values())),
    ):
        folder = bin_copy(f"bad-{file}")
        torch.save(payload, folder / "pytorch_model.bin")
        with pytest.raises(UserError) as refused:
            convert_checkpoint(folder, tmp_path / f"out-{file}")
        assert "\n" not in str(refused.value) and "pytorch_model.bin" in str(refused.value)
    assert not marker.exists()
    (sharded / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(UserError, match="listed in the shard index but missing"):
        convert_checkpoint(sharded, tmp_path / "out-missing")
