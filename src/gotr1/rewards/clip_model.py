"""CLIP image-text cosines through transformers' ``CLIPModel``, preprocessed as OpenAI CLIP does.

One piece of code for three jobs that all compute ``cos(image_features, text_features)`` of a CLIP
model: T2I-CompBench's CLIPScore (ViT-B/32, :mod:`gotr1.eval.hf_scorers`), GenEval's zero-shot
colour classifier (ViT-L/14 on crops) and the HPS v2.1 reward (a ViT-H-14 fine-tune,
:mod:`gotr1.rewards.hps`).

The image transform is OpenAI CLIP's ``_transform`` (the one ``clip.load`` and open_clip's
``preprocess_val`` return), re-stated on PIL and numpy so that no torchvision is needed:
``Resize(n, BICUBIC)`` of the short side (the long side ``int(n * long / short)``),
``CenterCrop(n)`` (offsets ``int(round((size - n) / 2))``), RGB, ``/ 255``, then the OpenAI mean
and standard deviation. Texts go through the model's own ``CLIPTokenizer`` (lower-cased BPE,
start and end tokens, at most 77 tokens); the text features are pooled at the end token, as
``clip.tokenize`` + ``encode_text`` do.

Models load from a hub id or a local folder with ``from_pretrained`` (safetensors), never with
``trust_remote_code``; ``local_files_only`` keeps a run off the network. A model that cannot be
loaded is a :class:`gotr1.errors.UserError` naming the flag or field that chose it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from gotr1.errors import UserError

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ClipEmbedder",
    "clip_pixels",
    "load_pretrained",
    "resolve_device",
]

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str | None) -> str:
    """The torch device to run a scorer model on: ``device``, else cuda when there is one."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(name: str | None, device: str) -> Any:
    import torch

    if name in (None, "auto"):
        return torch.float32  # the scores are compared across runs: full precision by default
    if name not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def load_pretrained(
    cls: Any,
    name: str,
    flag: str,
    what: str,
    local_files_only: bool = False,
    device: str | None = None,
    dtype: str | None = None,
) -> Any:
    """``cls.from_pretrained(name)`` in eval mode on ``device``; a failure is a one-line
    UserError naming ``flag`` (the option that chose ``name``) and what was being loaded."""
    device = resolve_device(device)
    try:
        model = cls.from_pretrained(
            name, local_files_only=local_files_only, dtype=_torch_dtype(dtype, device)
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{flag} {name}: cannot load {what} ({first})") from None
    return model.to(device).eval()


def load_tokenizer(name: str, flag: str, what: str, local_files_only: bool = False) -> Any:
    """``AutoTokenizer.from_pretrained(name)``; a failure is a one-line UserError naming ``flag``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    except (OSError, ValueError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{flag} {name}: cannot load the tokenizer of {what} ({first})") from None


def clip_pixels(
    images: Sequence[Image.Image],
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> np.ndarray:
    """OpenAI CLIP's test transform of ``images``: float32 array [N, 3, size, size]."""
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    mean_a = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_a = np.asarray(std, dtype=np.float32)[:, None, None]
    for i, image in enumerate(images):
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size * long / short)
        new_size = (size, new_long) if width <= height else (new_long, size)
        if new_size != (width, height):
            image = image.resize(new_size, Image.Resampling.BICUBIC)
        width, height = image.size
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
        image = image.crop((left, top, left + size, top + size)).convert("RGB")
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        out[i] = (array - mean_a) / std_a
    return out


class ClipEmbedder:
    """A CLIP model (``CLIPModel`` + its tokenizer) that embeds images and texts, L2-normalised."""

    def __init__(
        self,
        model: str,
        flag: str = "--clip-model",
        device: str | None = None,
        dtype: str | None = None,
        local_files_only: bool = False,
        batch_size: int = 16,
    ) -> None:
        """Load ``model`` (hub id or folder); ``flag`` names the option that chose it in errors."""
        from transformers import CLIPModel

        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.name = model
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.model = load_pretrained(
            CLIPModel, model, flag, "a CLIP model", local_files_only, self.device, dtype
        )
        self.tokenizer = load_tokenizer(model, flag, "a CLIP model", local_files_only)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.context_length = int(self.model.config.text_config.max_position_embeddings)

    def __repr__(self) -> str:
        return f"ClipEmbedder({self.name!r})"

    def image_features(self, images: Sequence[Image.Image]) -> Any:
        """Normalised image embeddings [N, D] (float32, on the CPU)."""
        import torch

        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = clip_pixels(images[start : start + self.batch_size], self.image_size)
            tensor = torch.from_numpy(pixels).to(self.device, self.model.dtype)
            with torch.inference_mode():
                features = _pooled(self.model.get_image_features(pixel_values=tensor))
            chunks.append(features.float().cpu())
        if not chunks:
            return torch.zeros((0, int(self.model.config.projection_dim)))
        features = torch.cat(chunks)
        return features / features.norm(dim=-1, keepdim=True)

    def text_features(self, texts: Sequence[str]) -> Any:
        """Normalised text embeddings [N, D] (float32, on the CPU), pooled at the end token."""
        import torch

        chunks = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.context_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                features = _pooled(
                    self.model.get_text_features(
                        input_ids=encoded["input_ids"].to(self.device),
                        attention_mask=encoded["attention_mask"].to(self.device),
                    )
                )
            chunks.append(features.float().cpu())
        if not chunks:
            return torch.zeros((0, int(self.model.config.projection_dim)))
        features = torch.cat(chunks)
        return features / features.norm(dim=-1, keepdim=True)

    def cosine(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """``cos(image_i, text_i)`` for each pair (CLIPScore as T2I-CompBench computes it)."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images and {len(texts)} texts")
        if not images:
            return []
        image = self.image_features(images)
        text = self.text_features(texts)
        return [float(v) for v in (image * text).sum(dim=-1)]


def _pooled(output: Any) -> Any:
    """The projected embedding from ``get_*_features`` (a tensor, or an output with a pooler)."""
    return getattr(output, "pooler_output", output)
