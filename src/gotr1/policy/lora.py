"""LoRA on the language model (peft), as GoT-R1 trains it (rank = alpha = 32).

Adapters go on the Llama attention and MLP projections only: never on the vision tower (whose
attention also has q/k/v_proj layers) or the VQ. The image head can be trained alongside as a full
copy (peft ``modules_to_save``). With adapters disabled the model is exactly the base model, which
gives reference log-probs without a second copy of the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gotr1.errors import UserError

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration

LANGUAGE_PROJECTIONS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
IMAGE_HEAD_MODULES: tuple[str, ...] = ("generation_head",)


def language_model_target_regex(projections: Sequence[str] = LANGUAGE_PROJECTIONS) -> str:
    """A peft ``target_modules`` regex matching these projections inside the Llama layers only."""
    if not projections:
        raise ValueError("target_modules must name at least one projection")
    names = "|".join(sorted(set(projections)))
    return rf"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"


def is_lora(model: torch.nn.Module) -> bool:
    """Whether `model` is a peft model (adapters attached)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def unwrap_model(model: torch.nn.Module) -> JanusForConditionalGeneration:
    """The `JanusForConditionalGeneration` inside a peft model (or the model itself).

    Note ``peft_model.model`` is *not* ``JanusModel``: peft forwards attribute lookups to the wrapped
    Janus, so use ``unwrap_model(m).model.language_model`` to reach the decoder.
    """
    return model.get_base_model() if is_lora(model) else model


def apply_lora(
    model: JanusForConditionalGeneration,
    r: int = 32,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    train_image_head: bool = False,
) -> PeftModel:
    """Attach LoRA adapters to the language model's projections; freeze everything else.

    Refused (`check_base_holds_vocabulary`) when the model has embedding rows its saved base
    lacks, since the adapter could not reproduce it in plain PEFT. `target_modules` picks among the Llama projections (default: all attention and MLP
    projections). ``train_image_head=True`` also trains a full copy of the image head.
    """
    from peft import LoraConfig, get_peft_model

    if is_lora(model):
        raise ValueError("the model already has LoRA adapters")
    if r < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"bad LoRA settings: r={r} (>= 1), alpha={alpha} (> 0), dropout={dropout} ([0,1))"
        )
    check_base_holds_vocabulary(model)
    projections = tuple(target_modules) if target_modules is not None else LANGUAGE_PROJECTIONS
    unknown = sorted(set(projections) - set(LANGUAGE_PROJECTIONS))
    if unknown:
        raise ValueError(
            f"unknown target module(s) {unknown}; choose from {list(LANGUAGE_PROJECTIONS)}"
        )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=language_model_target_regex(projections),
        modules_to_save=list(IMAGE_HEAD_MODULES) if train_image_head else None,
        bias="none",
    )
    return get_peft_model(model, config)


def _saved_vocabulary(name_or_path: str) -> int | None:
    """Rows of the text vocabulary a saved base model has (None when it cannot be read here)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError):
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None)
    return int(size) if size is not None else None


def check_base_holds_vocabulary(model: JanusForConditionalGeneration) -> None:
    """Refuse LoRA when the model has embedding rows its saved base lacks.

    An adapter folder names its base (``base_model_name_or_path``) and holds only the adapters:
    plain ``PeftModel.from_pretrained(base, adapter)`` starts from the saved base. When loading
    grew the vocabulary (the GoT markup tokens on a matrix without room for them), that base has
    fewer rows than the model the adapter was trained on (IndexError, or different logits), so
    the adapter would not be self-contained. Raises `gotr1.errors.UserError` saying what to do.
    """
    base = str(getattr(model, "name_or_path", "") or "")
    if not base:
        return  # a model built in memory: its adapter names no base to disagree with
    saved = _saved_vocabulary(base)
    rows = model.get_input_embeddings().weight.shape[0]
    if saved is not None and saved != rows:
        raise UserError(
            f"LoRA on {base}: the model embeds {rows} tokens but the saved base has {saved} rows "
            "(loading added the GoT markup tokens), so a PEFT adapter would not load on it; "
            "fine-tune the full model first (SFT), or save the resized base once with "
            "gotr1.policy.io: save_pretrained(*load_pretrained(BASE), NEW_BASE), and train "
            "LoRA from NEW_BASE"
        )


@contextlib.contextmanager
def reference_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside this block the LoRA model computes as its base model (adapters and the trained image
    head copy disabled). Use it for reference log-probs; raises for a model without adapters,
    whose reference needs a frozen copy instead."""
    if not is_lora(model):
        raise ValueError(
            "reference_mode needs a LoRA model; full fine-tuning needs a frozen reference copy"
        )
    with model.disable_adapter():
        yield model


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save_adapter(
    model: PeftModel, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write the adapter (and any trained image head copy) as a PEFT folder (safetensors).

    `state_dict` stands in for the peft model's own tensors (gathered from ZeRO-3 / FSDP shards).
    """
    if not is_lora(model):
        raise ValueError("save_adapter needs a LoRA model")
    path = Path(path)
    model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
    return path


def load_adapter(
    model: JanusForConditionalGeneration, path: str | Path, is_trainable: bool = False
) -> PeftModel:
    """Attach a saved PEFT adapter folder to a base model (trainable if asked)."""
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"{path}: not a PEFT adapter folder (no adapter_config.json)")
    return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)


def merge_lora(model: PeftModel) -> JanusForConditionalGeneration:
    """Fold the adapters into the weights and return the plain Janus model (saveable as HF)."""
    if not is_lora(model):
        raise ValueError("merge_lora needs a LoRA model")
    return model.merge_and_unload()
