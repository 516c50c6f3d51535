"""HPS v2.1 as a reward factor: the camera-ready GoT-R1 reward R_PI · (R_sem + R_spa)/2 · R_RI · R_HPS.

HPS v2.1 (Human Preference Score, github tgxs002/HPSv2) is an open_clip ViT-H-14 fine-tuned on
human preferences; its score of an image for a prompt is the cosine of the normalised image and text
embeddings (``image_features @ text_features.T``, diagonal), with open_clip's validation transform
(the same as OpenAI CLIP's). :class:`HPSReward` computes exactly that through transformers'
``CLIPModel`` (:class:`gotr1.rewards.clip_model.ClipEmbedder`), so neither open_clip nor torchvision
is needed. The released weights are an open_clip checkpoint (``HPS_v2.1_compressed.pt``); convert them
once with :func:`convert_open_clip_checkpoint` (``gotr1 convert-hps``) into a ``CLIPModel`` folder.

In GRPO the reward is the optional component ``hps`` of ``reward_components``
(:func:`gotr1.train.grpo.make_reward`): one more factor of the product, one more term of the sum
(times ``extra_weight``). The score is clamped at 0 so that a product never changes sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPModel

from gotr1.errors import UserError
from gotr1.rewards.clip_model import ClipEmbedder, load_pretrained, load_tokenizer

__all__ = ["HPSReward", "convert_open_clip_checkpoint", "open_clip_to_transformers"]


class HPSReward:
    """An extra reward hook ``(prompts, images) -> scores``: HPS v2.1 of each image for its prompt,
    clamped to [0, 1]."""

    def __init__(
        self,
        model: str,
        device: str | None = None,
        dtype: str | None = None,
        local_files_only: bool = False,
        batch_size: int = 16,
    ) -> None:
        """Load the converted HPS model (a ``CLIPModel`` folder or hub id) named by ``hps_model``."""
        self.embedder = ClipEmbedder(
            model, "hps_model", device, dtype, local_files_only, batch_size
        )
        self.name = model

    def __repr__(self) -> str:
        return f"HPSReward({self.name!r})"

    def __call__(self, prompts: Sequence[str], images: Sequence[Any]) -> list[float]:
        """HPS of each (prompt, image) pair: the CLIP cosine, clamped to [0, 1]."""
        scores = self.embedder.cosine(list(images), [str(p) for p in prompts])
        return [min(1.0, max(0.0, s)) for s in scores]


def _split_qkv(weight: Any) -> tuple[Any, Any, Any]:
    size = weight.shape[0] // 3
    return weight[:size], weight[size : 2 * size], weight[2 * size :]


def open_clip_to_transformers(state: dict[str, Any]) -> dict[str, Any]:
    """Rename an open_clip (OpenAI-layout) CLIP state dict to transformers' ``CLIPModel`` keys.

    Fused attention projections (``in_proj_weight``) are split into q/k/v; the text and visual
    projections are transposed (open_clip multiplies ``x @ proj``, transformers ``Linear(x)``).
    A key that has no place in ``CLIPModel`` raises ValueError naming it.
    """
    out: dict[str, Any] = {}
    towers = (
        ("visual.transformer.", "vision_model.encoder."),
        ("transformer.", "text_model.encoder."),
    )
    fixed = {
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    }
    layer_parts = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        if key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
            continue
        if key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
            continue
        for source, target in towers:
            if key.startswith(source + "resblocks."):
                rest = key[len(source + "resblocks.") :]
                index, _, name = rest.partition(".")
                prefix = f"{target}layers.{index}."
                if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
                    kind = name.rsplit("_", 1)[1]
                    for proj, part in zip(("q", "k", "v"), _split_qkv(value), strict=True):
                        out[f"{prefix}self_attn.{proj}_proj.{kind}"] = part.contiguous()
                    break
                module, _, param = name.rpartition(".")
                if module not in layer_parts:
                    raise ValueError(f"no transformers CLIP key for open_clip key {key!r}")
                out[f"{prefix}{layer_parts[module]}.{param}"] = value
                break
        else:
            raise ValueError(f"no transformers CLIP key for open_clip key {key!r}")
    return out


def convert_open_clip_checkpoint(
    checkpoint: str | Path, base: str, out: str | Path, local_files_only: bool = False
) -> Path:
    """Write an HPS v2.1 (open_clip) checkpoint as a ``CLIPModel`` folder at ``out``.

    ``base`` is the transformers port of the open_clip architecture the checkpoint fine-tunes
    (ViT-H-14: ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``): its config and tokenizer are kept, its
    weights replaced. The checkpoint is read with ``torch.load(weights_only=True)`` (tensors
    only, no code) from its ``state_dict`` (a ``module.`` prefix is dropped); every weight of the
    model must be set by it. The folder is written with safetensors.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"--checkpoint {path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"--checkpoint {path}: not a readable torch checkpoint ({error})") from None
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"--checkpoint {path}: holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        converted = open_clip_to_transformers(state)
    except ValueError as error:
        raise UserError(f"--checkpoint {path}: {error}") from None
    model = load_pretrained(CLIPModel, base, "--base", "a CLIP model", local_files_only, "cpu")
    tokenizer = load_tokenizer(base, "--base", "a CLIP model", local_files_only)
    expected = set(model.state_dict())
    missing = sorted(expected - set(converted) - {"text_model.embeddings.position_ids"})
    extra = sorted(set(converted) - expected)
    if missing or extra:
        raise UserError(
            f"--checkpoint {path} does not fit --base {base}: "
            + (f"missing {missing[:3]}" if missing else "")
            + (f" unexpected {extra[:3]}" if extra else "")
        )
    try:
        model.load_state_dict(converted, strict=False)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"--checkpoint {path} does not fit --base {base}: {first}") from None
    target = Path(out)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
