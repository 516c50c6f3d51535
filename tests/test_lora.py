"""LoRA on the language model: targets, reference mode, image-head training, save/load/merge."""

from __future__ import annotations

import re

import pytest
import torch

from gotr1.errors import UserError
from gotr1.policy.io import load_pretrained, save_pretrained
from gotr1.policy.lora import (
    apply_lora,
    is_lora,
    load_adapter,
    merge_lora,
    reference_mode,
    save_adapter,
    trainable_parameters,
    unwrap_model,
)
from gotr1.policy.presets import WORLD_TINY, build_model
from gotr1.policy.tokenizer import build_processor, train_world_tokenizer, world_corpus

VOCAB = 300
IDS = torch.tensor([[0, 17, 42, 99, 250, 3]])


def fresh_model(seed: int = 0):
    return build_model("world-tiny", vocab_size=VOCAB, seed=seed)


def perturb_adapters(model, scale: float = 0.05) -> None:
    """Give LoRA B matrices (zero at init) and the trained head copy non-trivial values."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def outputs(model):
    """Text logits and image-head logits at every position."""
    with torch.no_grad():
        out = model(input_ids=IDS, output_hidden_states=True)
        head = unwrap_model(model).model.generation_head
        return out.logits, head(out.hidden_states[-1])


def test_adapters_cover_only_language_model_projections():
    r = 4
    model = apply_lora(fresh_model(), r=r, alpha=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    pattern = re.compile(
        r".*model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
        r"\.lora_[AB]\.default\.weight"
    )
    assert all(pattern.fullmatch(n) for n in trainable), trainable
    assert not any(("vision_model" in n or "vqmodel" in n) for n in trainable)
    hidden, inter = WORLD_TINY.text["hidden_size"], WORLD_TINY.text["intermediate_size"]
    per_layer = 4 * r * (hidden + hidden) + 3 * r * (hidden + inter)
    assert trainable_parameters(model)[0] == WORLD_TINY.text["num_hidden_layers"] * per_layer

    only_attention = apply_lora(fresh_model(), r=r, target_modules=["q_proj", "v_proj"])
    names = [n for n, p in only_attention.named_parameters() if p.requires_grad]
    assert names and all(("q_proj" in n or "v_proj" in n) and "language_model" in n for n in names)


def test_reference_mode_is_the_base_model_and_gradients_reach_only_adapters():
    base = fresh_model()
    base_text, base_image = outputs(base)
    model = apply_lora(base, r=4, alpha=8, train_image_head=True)
    perturb_adapters(model)
    text, image = outputs(model)
    assert not torch.allclose(text, base_text, atol=1e-4)
    assert not torch.allclose(image, base_image, atol=1e-4)
    with reference_mode(model):
        ref_text, ref_image = outputs(model)
    assert torch.equal(ref_text, base_text)
    assert torch.equal(ref_image, base_image)
    assert torch.equal(outputs(model)[0], text)  # adapters back on after the block

    model.train()
    out = model(input_ids=IDS, output_hidden_states=True)
    loss = (
        out.logits.square().mean()
        + unwrap_model(model).model.generation_head(out.hidden_states[-1]).mean()
    )
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("generation_head.modules_to_save" in n for n in with_grad)
    assert not any("vision_model" in n or "vqmodel" in n or "embed_tokens" in n for n in with_grad)


def test_adapter_save_load_and_merge(tmp_path):
    model = apply_lora(fresh_model(), r=4, alpha=8, train_image_head=True)
    perturb_adapters(model)
    text, image = outputs(model)
    folder = save_adapter(model, tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").is_file()

    loaded = load_adapter(fresh_model(), folder)
    assert is_lora(loaded)
    loaded_text, loaded_image = outputs(loaded)
    assert torch.equal(loaded_text, text) and torch.equal(loaded_image, image)
    assert trainable_parameters(loaded)[0] == 0
    assert trainable_parameters(load_adapter(fresh_model(), folder, is_trainable=True))[0] > 0

    merged = merge_lora(loaded)
    assert not is_lora(merged) and type(merged).__name__ == "JanusForConditionalGeneration"
    assert not any("lora" in k or "modules_to_save" in k for k in merged.state_dict())
    merged_text, merged_image = outputs(merged)
    assert torch.allclose(merged_text, text, atol=1e-5)
    assert torch.allclose(merged_image, image, atol=1e-5)

    corpus = world_corpus(200, seed=3)
    processor = build_processor(train_world_tokenizer(corpus, vocab_size=VOCAB - 4))
    save_pretrained(merged, processor, tmp_path / "merged")
    reloaded, _ = load_pretrained(tmp_path / "merged", add_markup=False)
    assert torch.allclose(outputs(reloaded)[0], text, atol=1e-5)


def test_lora_misuse_is_reported(tmp_path):
    plain = fresh_model()
    with pytest.raises(ValueError, match="needs a LoRA model"), reference_mode(plain):
        pass
    with pytest.raises(ValueError, match="unknown target module"):
        apply_lora(plain, target_modules=["fc1"])
    with pytest.raises(ValueError, match="bad LoRA settings"):
        apply_lora(plain, r=0)
    wrapped = apply_lora(plain, r=2)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(wrapped)
    with pytest.raises(ValueError, match="PEFT model"):
        save_pretrained(wrapped, None, tmp_path / "x")
    with pytest.raises(UserError, match="not a PEFT adapter folder"):
        load_adapter(fresh_model(), tmp_path)
