"""Policy core: presets, the world tokenizer and prompt format, load/save and markup tokens."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from gotr1.chain import BEGIN_OF_IMAGE, GOT_MARKUP_TOKENS, parse_chain
from gotr1.errors import UserError
from gotr1.policy.io import (
    add_markup_tokens,
    load_pretrained,
    markup_token_ids,
    new_policy,
    resize_token_embeddings,
    save_pretrained,
)
from gotr1.policy.presets import (
    PRESETS,
    WORLD_TINY,
    build_model,
    count_parameters,
    get_preset,
    load_preset_yaml,
    preset_from_dict,
)
from gotr1.policy.tokenizer import (
    BOS_TOKEN,
    GOT_R1_MARKUP_ORDER,
    WORLD_SPECIAL_TOKENS,
    build_processor,
    build_prompt_text,
    encode_prompt,
    train_world_tokenizer,
    world_corpus,
)
from gotr1.world import sample_examples

REPO = Path(__file__).resolve().parents[1]

# Published parameter count of deepseek-ai/Janus-Pro-1B (its DeepSeek-format checkpoint), and the
# size of SigLIP-L's attention-pooling head, which that checkpoint holds and transformers' Janus
# drops (latent 1024 + q 1024^2+1024 + kv 2*1024^2+2048 + proj 1024^2+1024 + norm 2048
# + mlp 1024*4096+4096 + 4096*1024+1024).
JANUS_PRO_1B_PUBLISHED = 2_089_232_011
SIGLIP_ATTN_POOL = (
    1024
    + (1024 * 1024 + 1024)
    + (2 * 1024 * 1024 + 2048)
    + (1024 * 1024 + 1024)
    + 2048
    + (1024 * 4096 + 4096)
    + (4096 * 1024 + 1024)
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_world_tokenizer()


@pytest.fixture(scope="module")
def small_corpus():
    return world_corpus(num_examples=300, seed=1)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return build_processor(tokenizer, image_size=64, num_image_tokens=64)


@pytest.fixture(scope="module")
def policy(processor):
    return new_policy("world-tiny", seed=0, processor=processor)


# --- presets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_yaml_files_mirror_the_presets(name):
    assert load_preset_yaml(REPO / "configs" / f"{name}.yaml") == PRESETS[name]
    assert get_preset(str(REPO / "configs" / f"{name}.yaml")) == PRESETS[name]


def test_world_tiny_is_a_few_million_parameters_with_8x8_image_tokens():
    model = build_model("world-tiny")
    counts = count_parameters(model)
    assert 2_000_000 < counts["total"] < 10_000_000
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert WORLD_TINY.num_image_tokens == 64
    assert model.config.vision_config.num_image_tokens == 64
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes = model.model.vqmodel.encode(pixels).image_tokens.view(1, -1)
        assert codes.shape == (1, 64)
        assert int(codes.max()) < WORLD_TINY.vq["num_embeddings"]
        decoded = model.decode_image_tokens(codes)
        assert decoded.shape == (1, 64, 64, 3)
        hidden = torch.randn(1, WORLD_TINY.text["hidden_size"])
        logits = model.model.generation_head(hidden)
        assert logits.shape == (1, WORLD_TINY.vq["num_embeddings"])
        embeds = model.prepare_embeddings_for_image_generation(codes[:, :1])
        assert embeds.shape == (1, 1, WORLD_TINY.text["hidden_size"])


def test_janus_pro_shapes_match_the_published_checkpoints():
    small = count_parameters(build_model("janus-pro-1b", device="meta"))
    assert small["total"] + SIGLIP_ATTN_POOL == JANUS_PRO_1B_PUBLISHED
    big = build_model("janus-pro-7b", device="meta")
    assert big.config.text_config.hidden_size == 4096
    assert len(big.model.language_model.layers) == 30
    assert big.model.generation_head.vision_head.weight.shape == (16384, 4096)
    assert big.lm_head.weight.shape == (102400, 4096)
    assert big.model.vision_model.config.num_image_tokens == 576
    assert 7.0e9 < count_parameters(big)["total"] < 7.6e9


def test_build_model_is_seeded_and_takes_a_vocab_size():
    a = build_model("world-tiny", vocab_size=300, seed=3)
    b = build_model("world-tiny", vocab_size=300, seed=3)
    c = build_model("world-tiny", vocab_size=300, seed=4)
    assert a.get_input_embeddings().weight.shape[0] == 300
    assert a.lm_head.weight.shape[0] == 300
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_bad_presets_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("janus-pro-3b")
    mismatched = dataclasses.replace(WORLD_TINY, vq={**WORLD_TINY.vq, "channel_multiplier": [1, 2]})
    with pytest.raises(ValueError, match="channel_multiplier"):
        build_model(mismatched)
    with pytest.raises(ValueError, match="unknown field"):
        preset_from_dict({**WORLD_TINY.to_dict(), "layers": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntext: [1, 2]\nvision: {}\nvq: {}\n")
    with pytest.raises(ValueError, match="'text' must be a mapping"):
        load_preset_yaml(bad)


# --- prompt format and tokenizer -----------------------------------------------------------------


def test_prompt_text_is_got_r1s_deepseek_format():
    text = build_prompt_text("  a red circle left of a blue square ")
    assert text == (
        "User: Follow the caption to generate an image through a chain of thought process: "
        "a red circle left of a blue square\n\nAssistant:"
    )


def test_chat_template_reproduces_the_prompt_text(processor):
    user = "Follow the caption to generate an image through a chain of thought process: two squares"
    as_string = processor.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
    )
    as_parts = processor.apply_chat_template(
        [
            {"role": "user", "content": [{"type": "text", "text": user}]},
            {"role": "assistant", "content": [{"type": "text", "text": ""}]},
        ],
        tokenize=False,
    )
    assert as_string == as_parts == build_prompt_text("two squares")


def test_world_tokenizer_specials_markup_and_round_trip(tokenizer):
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in WORLD_SPECIAL_TOKENS] == list(range(len(WORLD_SPECIAL_TOKENS)))
    assert set(GOT_MARKUP_TOKENS) <= set(vocab)
    assert list(markup_token_ids(tokenizer)) == list(GOT_R1_MARKUP_ORDER)
    assert len(tokenizer) <= WORLD_TINY.text["vocab_size"]
    for example in sample_examples(20, seed=7, split="test"):
        ids = tokenizer(example.chain + BEGIN_OF_IMAGE, add_special_tokens=False)["input_ids"]
        assert ids[-1] == vocab[BEGIN_OF_IMAGE]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        assert text == example.chain  # markup kept, <begin_of_image> dropped
        assert parse_chain(text).boxes == parse_chain(example.chain).boxes
        assert len(ids) < 200
    odd = "Ünïcødé → ✓ (12,345)\ttabs\n"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd
    digits = tokenizer.convert_ids_to_tokens(
        tokenizer("(512,9)", add_special_tokens=False)["input_ids"]
    )
    assert [t for t in digits if t.isdigit()] == ["5", "1", "2", "9"]


def test_whole_number_world_tokenizer_makes_every_box_coordinate_one_token():
    from gotr1.world.scene import LATTICE, _to_grid

    whole = train_world_tokenizer(vocab_size=600, whole_numbers=True)
    for value in sorted({_to_grid(cells) for cells in range(LATTICE + 1)}):
        assert len(whole(str(value), add_special_tokens=False)["input_ids"]) == 1, value
    for example in sample_examples(10, seed=3, split="test"):
        ids = whole(example.chain, add_special_tokens=False)["input_ids"]
        assert whole.decode(ids) == example.chain
    odd = "(12345,-7)x9"  # numbers it never saw still round-trip
    assert whole.decode(whole(odd, add_special_tokens=False)["input_ids"]) == odd


def test_a_preset_names_the_world_tokenizer_new_models_get():
    preset = dataclasses.replace(
        WORLD_TINY, world_tokenizer={"vocab_size": 600, "whole_numbers": True}
    )
    model, processor = new_policy(preset)
    ids = processor.tokenizer("(484,750)", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5  # "(", "484", ",", "750", ")"
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer) > 512
    with pytest.raises(ValueError, match="unknown field"):
        preset_from_dict({**WORLD_TINY.to_dict(), "tokenizer": {}})
    assert preset_from_dict(preset.to_dict()) == preset


def test_encode_prompt_starts_with_one_bos(tokenizer):
    ids = encode_prompt(tokenizer, "a green triangle")
    assert ids[0] == tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    assert ids.count(ids[0]) == 1
    assert tokenizer.decode(ids[1:]) == build_prompt_text("a green triangle")


def test_processor_image_mode_and_understanding_inputs(processor):
    batch = processor(text=["a", "a longer prompt"], generation_mode="image", padding=True)
    boi = processor.tokenizer.convert_tokens_to_ids(BEGIN_OF_IMAGE)
    assert (batch["input_ids"][:, -1] == boi).all()
    assert batch["attention_mask"][0, 0] == 0  # left padding
    understood = processor(
        text=["<image_placeholder>\nwhat is this?"], images=[Image.new("RGB", (64, 64))]
    )
    assert understood["pixel_values"].shape == (1, 3, 64, 64)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image_placeholder>")
    assert int((understood["input_ids"] == image_id).sum()) == 64


# --- new / save / load ---------------------------------------------------------------------------


def test_new_policy_sizes_vocab_and_special_ids(policy):
    model, processor = policy
    tokenizer = processor.tokenizer
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.config.text_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image_placeholder>")
    boi = tokenizer.convert_tokens_to_ids(BEGIN_OF_IMAGE)
    assert model.generation_config.generation_kwargs["boi_token_id"] == boi


def test_saved_folder_opens_without_gotr1(policy, tmp_path):
    model, processor = policy
    folder = save_pretrained(model, processor, tmp_path / "ckpt")
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))
    ids = encode_prompt(processor.tokenizer, "a red square") + [
        processor.tokenizer.convert_tokens_to_ids(BEGIN_OF_IMAGE)
    ]
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0, -1]
        expected_image = model.model.generation_head(
            model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        )
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        from transformers import AutoProcessor, JanusForConditionalGeneration
        model = JanusForConditionalGeneration.from_pretrained({str(folder)!r}).eval()
        processor = AutoProcessor.from_pretrained({str(folder)!r})
        text = processor.apply_chat_template(
            [{{"role": "user", "content": "Follow the caption to generate an image through a chain of thought process: a red square"}}],
            add_generation_prompt=True, tokenize=False)
        ids = processor(text=[text], generation_mode="image")["input_ids"]
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
            image = model.model.generation_head(out.hidden_states[-1][0, -1])
        json.dump({{"ids": ids[0].tolist(), "text": out.logits[0, -1].tolist(), "image": image.tolist(),
                    "gotr1": any(m.startswith("gotr1") for m in sys.modules),
                    "processor": type(processor).__name__}}, sys.stdout)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["gotr1"] is False
    assert result["processor"] == "JanusProcessor"
    assert result["ids"] == ids
    assert torch.allclose(torch.tensor(result["text"]), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(result["image"]), expected_image, atol=1e-5)


def test_load_pretrained_round_trip_is_exact(policy, tmp_path):
    model, processor = policy
    save_pretrained(model, processor, tmp_path / "ckpt")
    loaded, loaded_processor = load_pretrained(tmp_path / "ckpt")
    original = model.state_dict()
    assert set(loaded.state_dict()) == set(original)
    assert all(torch.equal(value, original[key]) for key, value in loaded.state_dict().items())
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded_processor.num_image_tokens == 64
    assert loaded_processor.use_default_system_prompt is False
    text = loaded_processor.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "User: hi\n\nAssistant:"


def test_markup_tokens_are_added_with_mean_rows(small_corpus):
    plain = train_world_tokenizer(small_corpus, vocab_size=300, add_markup=False)
    assert not set(GOT_MARKUP_TOKENS) & set(plain.get_vocab())
    model = build_model("world-tiny", vocab_size=len(plain), seed=1)
    old_embed = model.get_input_embeddings().weight.detach().clone()
    old_head = model.lm_head.weight.detach().clone()
    ids = add_markup_tokens(model, plain)
    assert ids == list(range(len(old_embed), len(old_embed) + 4))
    assert plain.convert_ids_to_tokens(ids) == list(GOT_R1_MARKUP_ORDER)
    embed, head = model.get_input_embeddings().weight, model.lm_head.weight
    assert embed.shape[0] == head.shape[0] == len(plain) == model.config.text_config.vocab_size
    assert torch.equal(embed[: len(old_embed)], old_embed)
    assert torch.equal(head[: len(old_head)], old_head)
    for row in ids:
        assert torch.allclose(embed[row], old_embed.mean(0), atol=1e-6)
        assert torch.allclose(head[row], old_head.mean(0), atol=1e-6)
    assert add_markup_tokens(model, plain) == []  # idempotent


def test_markup_rows_inside_a_padded_matrix_keep_or_reset(small_corpus):
    plain = train_world_tokenizer(small_corpus, vocab_size=300, add_markup=False)
    for init in ("keep", "mean"):
        tokenizer = train_world_tokenizer(small_corpus, vocab_size=300, add_markup=False)
        model = build_model(
            "world-tiny", vocab_size=len(plain) + 40, seed=2
        )  # Janus-style spare rows
        before = model.get_input_embeddings().weight.detach().clone()
        ids = add_markup_tokens(model, tokenizer, init=init)
        after = model.get_input_embeddings().weight
        assert after.shape == before.shape  # no resize needed
        if init == "keep":
            assert torch.equal(after, before)
        else:
            mean = before[: len(plain)].mean(0)
            assert all(torch.allclose(after[i], mean, atol=1e-6) for i in ids)
            untouched = [i for i in range(len(before)) if i not in ids]
            assert torch.equal(after[untouched], before[untouched])


def test_tied_head_stays_tied_through_resizing():
    tied = dataclasses.replace(WORLD_TINY, tie_word_embeddings=True)
    model = build_model(tied, vocab_size=300)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    old = model.get_input_embeddings().weight.detach().clone()
    resize_token_embeddings(model, 304)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert torch.allclose(model.lm_head.weight[300:], old.mean(0).expand(4, -1), atol=1e-6)
    with pytest.raises(ValueError, match="shrink"):
        resize_token_embeddings(model, 10)


def test_loading_a_checkpoint_without_markup_adds_it(tmp_path, small_corpus):
    plain = train_world_tokenizer(small_corpus, vocab_size=300, add_markup=False)
    processor = build_processor(plain)
    model = build_model("world-tiny", vocab_size=len(plain))
    save_pretrained(model, processor, tmp_path / "base")
    loaded, loaded_processor = load_pretrained(tmp_path / "base")
    assert set(GOT_MARKUP_TOKENS) <= set(loaded_processor.tokenizer.get_vocab())
    assert loaded.get_input_embeddings().weight.shape[0] == len(plain) + 4
    ids = loaded_processor.tokenizer("<|obj_start|>x<|obj_end|>", add_special_tokens=False)[
        "input_ids"
    ]
    with torch.no_grad():
        assert torch.isfinite(loaded(input_ids=torch.tensor([ids])).logits).all()
    save_pretrained(loaded, loaded_processor, tmp_path / "again")
    again, _ = load_pretrained(tmp_path / "again")
    assert again.get_input_embeddings().weight.shape[0] == len(plain) + 4


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        load_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_pretrained(tmp_path / "empty")
    deepseek = tmp_path / "deepseek"
    deepseek.mkdir()
    (deepseek / "config.json").write_text(json.dumps({"model_type": "multi_modality"}))
    with pytest.raises(UserError, match="gotr1 convert"):
        load_pretrained(deepseek)
    (deepseek / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json"):
        load_pretrained(deepseek)
    with pytest.raises(UserError, match="hub id"):
        load_pretrained("gotr1-tests/no-such-model", local_files_only=True)
