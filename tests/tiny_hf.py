"""Tiny random transformers models, saved as local folders, for the scorer and HPS tests.

Every folder is written with ``save_pretrained`` together with a tokenizer built here from a
vocabulary written here (no download): a byte-level CLIP BPE vocabulary without merges (every
character is a token) for CLIP and OWLv2, and a small word-piece vocabulary for BLIP's BERT
tokenizer (with BLIP's [DEC] and [ENC] tokens after BERT's, as BLIP lays them out).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
BLIP_WORDS = [
    "a",
    "an",
    "the",
    "and",
    "of",
    "on",
    "in",
    "to",
    "yes",
    "no",
    "green",
    "red",
    "blue",
    "bench",
    "car",
    "dog",
    "cat",
    "apple",
    "box",
    "ball",
    "round",
    "square",
    "wooden",
    "metal",
    "fluffy",
    "left",
    "right",
    "top",
    "bottom",
    "next",
    "near",
    "photo",
]


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP's printable stand-ins for the 256 byte values."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


def write_clip_tokenizer(folder: Path) -> None:
    """A CLIPTokenizer over single characters (each with and without the word-end mark)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    for special in CLIP_SPECIALS:
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)


def clip_vocab_size() -> int:
    return 2 * 256 + len(CLIP_SPECIALS)


def build_clip(folder: Path, seed: int = 0, hidden_act: str = "quick_gelu") -> Path:
    """A tiny random CLIPModel (image size 32, patch 16) with its tokenizer, saved to ``folder``."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    size = clip_vocab_size()
    config = CLIPConfig(
        text_config={
            "vocab_size": size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "hidden_act": hidden_act,
            "bos_token_id": size - 2,
            "eos_token_id": size - 1,
            "pad_token_id": size - 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
            "hidden_act": hidden_act,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    write_clip_tokenizer(folder)
    return folder


def build_blip(folder: Path, seed: int = 0) -> Path:
    """A tiny random BlipForQuestionAnswering with a BERT word-piece tokenizer, saved."""
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", ",", "."]
    vocab += BLIP_WORDS + ["[DEC]", "[ENC]"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.save_pretrained(folder)
    dec = vocab.index("[DEC]")
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "encoder_hidden_size": 32,
            "max_position_embeddings": 64,
            "bos_token_id": dec,
            "pad_token_id": 0,
            "sep_token_id": vocab.index("[SEP]"),
            "eos_token_id": vocab.index("[SEP]"),
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 384,
            "patch_size": 96,
        },
    )
    BlipForQuestionAnswering(config).eval().save_pretrained(folder)
    return folder


def build_owlv2(folder: Path, seed: int = 0) -> Path:
    """A tiny random Owlv2ForObjectDetection (image size 64, patch 16) with its tokenizer."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    torch.manual_seed(seed)
    size = clip_vocab_size()
    config = Owlv2Config(
        text_config={
            "vocab_size": size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": size - 2,
            "eos_token_id": size - 1,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=32,  # OWLv2's class head compares text-width queries
    )
    Owlv2ForObjectDetection(config).eval().save_pretrained(folder)
    write_clip_tokenizer(folder)
    return folder
