"""The Janus policy: transformers' `JanusForConditionalGeneration` at every size, plus what GoT-R1
needs around it.

- `presets`: world-tiny / janus-pro-1b / janus-pro-7b shapes, `build_model`.
- `tokenizer`: the GoT prompt format (`build_prompt_text`), the world tokenizer, the processor.
- `io`: new / load / save as plain HF folders, GoT markup tokens and embedding resizing.
- `convert`: DeepSeek-format checkpoints -> HF layout (`gotr1 convert`).
- `lora`: peft LoRA on the language model, reference mode, adapter save/load/merge.

This package imports lightly; torch and transformers load when a function needs them.
"""

from gotr1.policy.io import (
    add_markup_tokens,
    configure_special_tokens,
    load_pretrained,
    new_policy,
    resize_token_embeddings,
    save_pretrained,
)
from gotr1.policy.lora import (
    apply_lora,
    is_lora,
    load_adapter,
    merge_lora,
    reference_mode,
    save_adapter,
    unwrap_model,
)
from gotr1.policy.presets import PRESETS, PresetConfig, build_model, count_parameters, get_preset
from gotr1.policy.tokenizer import (
    build_processor,
    build_prompt_text,
    encode_prompt,
    train_world_tokenizer,
)

__all__ = [
    "PRESETS",
    "PresetConfig",
    "add_markup_tokens",
    "apply_lora",
    "build_model",
    "build_processor",
    "build_prompt_text",
    "configure_special_tokens",
    "count_parameters",
    "encode_prompt",
    "get_preset",
    "is_lora",
    "load_adapter",
    "load_pretrained",
    "merge_lora",
    "new_policy",
    "reference_mode",
    "resize_token_embeddings",
    "save_adapter",
    "save_pretrained",
    "train_world_tokenizer",
    "unwrap_model",
]
