"""Hand-offs to plain transformers and PEFT: folders gotr1 writes draw images with plain
transformers, markup tokens added at load keep trained embedding rows, LoRA adapters load in plain
PEFT to gotr1's logits, and DeepSeek ``pytorch_model.bin`` checkpoints convert safely.

The models here are built with transformers' own classes (or trained by gotr1 and then read back
by transformers), so the two sides of each hand-off are not the same code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    JanusForConditionalGeneration,
    JanusProcessor,
)

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
