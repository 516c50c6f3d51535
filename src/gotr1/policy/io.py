"""Build, load and save the policy as plain Hugging Face folders.

A checkpoint is what `save_pretrained` writes: ``config.json``, ``generation_config.json``,
``model.safetensors``, and the processor files (tokenizer, image processor, chat template).
`JanusForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained` open it without
gotr1. Loading works from a local folder or a hub id, adds the GoT markup tokens when the tokenizer
lacks them (growing the embeddings when needed) and points the config's special-token ids at the
tokenizer.

Janus' text head: transformers ties ``lm_head`` to the input embeddings when
``config.tie_word_embeddings`` is true; Janus-Pro's released weights are untied. Both cases are
handled here: new rows are set in the input embeddings and, when untied, in ``lm_head`` too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gotr1.chain import BEGIN_OF_IMAGE, END_OF_IMAGE
from gotr1.errors import UserError
from gotr1.policy.presets import PresetConfig, build_model, get_preset
from gotr1.policy.tokenizer import (
    CHAT_TEMPLATE,
    GOT_R1_MARKUP_ORDER,
    IMAGE_TOKEN,
    PAD_TOKEN,
    add_markup_to_tokenizer,
    build_processor,
    ensure_janus_token_attributes,
    train_world_tokenizer,
)

if TYPE_CHECKING:
    import torch
    from transformers import JanusForConditionalGeneration, JanusProcessor, PreTrainedTokenizerBase

MARKUP_INIT_CHOICES = ("mean", "keep")


def _base(model: torch.nn.Module) -> JanusForConditionalGeneration:
    """The JanusForConditionalGeneration inside a (possibly PEFT-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# --- special tokens and markup ---------------------------------------------------------------


def configure_special_tokens(
    model: JanusForConditionalGeneration, tokenizer: PreTrainedTokenizerBase
) -> None:
    """Point the model's config and generation config at the tokenizer's special-token ids.

    Sets pad/bos/eos, the image placeholder id, and ``generation_kwargs["boi_token_id"]``, which
    transformers' ``generate(generation_mode="image")`` reads.
    """
    model = _base(model)
    vocab = tokenizer.get_vocab()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab.get(PAD_TOKEN)
    boi = vocab.get(BEGIN_OF_IMAGE)
    if boi is None:
        raise ValueError(f"the tokenizer has no {BEGIN_OF_IMAGE!r} token")
    text_config = model.config.text_config
    text_config.pad_token_id = pad
    text_config.bos_token_id = tokenizer.bos_token_id
    text_config.eos_token_id = tokenizer.eos_token_id
    if IMAGE_TOKEN in vocab:
        model.config.image_token_id = vocab[IMAGE_TOKEN]
    generation = model.generation_config
    generation.pad_token_id = pad
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.boi_token_id = boi
    generation.eoi_token_id = vocab.get(END_OF_IMAGE)
    generation.generation_kwargs = {
        **(getattr(generation, "generation_kwargs", None) or {}),
        "boi_token_id": boi,
    }
    # A generation config made from the model config (every model built from a config has one)
    # carries ``_from_model_config = true`` into generation_config.json, and transformers then
    # drops every attribute it does not know on load, generation_kwargs included, so plain
    # ``generate(generation_mode="image")`` fails. These ids are set on purpose: say so.
    generation._from_model_config = False


def resize_token_embeddings(
    model: JanusForConditionalGeneration,
    new_size: int,
    init_rows: list[int] | None = None,
    mean_over: int | None = None,
) -> None:
    """Grow (or keep) the text vocabulary to `new_size` rows and set new rows to the mean row.

    The mean is taken over the first `mean_over` rows (default: all rows that existed), in the
    input embeddings and (when untied) in ``lm_head`` separately. Existing rows listed in
    `init_rows` are reset to the mean too.
    """
    import torch

    model = _base(model)
    embed = model.get_input_embeddings()
    old_size = embed.weight.shape[0]
    if new_size < old_size:
        raise ValueError(f"refusing to shrink the vocabulary from {old_size} to {new_size} rows")
    count = old_size if mean_over is None else mean_over
    if not 0 < count <= old_size:
        raise ValueError(f"mean_over must be in 1..{old_size}, got {mean_over}")
    with torch.no_grad():
        embed_mean = embed.weight[:count].float().mean(0)
        head = model.get_output_embeddings()
        tied = head is not None and head.weight.data_ptr() == embed.weight.data_ptr()
        head_mean = None if head is None or tied else head.weight[:count].float().mean(0)
    if new_size > old_size:
        model.resize_token_embeddings(new_size, mean_resizing=False)
        init_rows = sorted(set(init_rows or []) | set(range(old_size, new_size)))
    rows = sorted(set(init_rows or []))
    if not rows:
        return
    if max(rows) >= new_size or min(rows) < 0:
        raise ValueError(f"rows to initialise {rows} fall outside the vocabulary of {new_size}")
    with torch.no_grad():
        embed = model.get_input_embeddings()
        embed.weight[rows] = embed_mean.to(embed.weight.dtype)
        head = model.get_output_embeddings()
        if head_mean is not None and head.weight.data_ptr() != embed.weight.data_ptr():
            head.weight[rows] = head_mean.to(head.weight.dtype)
            if getattr(head, "bias", None) is not None:
                head.bias[rows] = 0.0


def add_markup_tokens(
    model: JanusForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    init: str = "keep",
) -> list[int]:
    """Add the GoT markup tokens the tokenizer lacks and make room for them in the model.

    The one place where loading (`load_pretrained`, so `Policy.load` and ``gotr1 generate``) and
    ``gotr1 convert`` add the markup. Tokens are added as GoT-R1 adds them (same order, so a
    released GoT-R1 checkpoint gets its own ids back). Ids that fall on rows the embedding matrix
    already has (Janus-Pro's matrix has ~1.8k rows past its tokenizer; GoT-R1 trained the markup
    there) keep those rows as they are; only rows the matrix must grow by are set to the mean
    embedding. ``init="mean"`` resets the existing rows too (an explicit choice of
    ``gotr1 convert --markup-init mean``). Says in one line on stderr what it added. Returns the
    ids of the tokens added (empty when nothing was missing).
    """
    if init not in MARKUP_INIT_CHOICES:
        raise ValueError(f"init must be one of {MARKUP_INIT_CHOICES}, got {init!r}")
    known = len(tokenizer)  # the mean is over rows of tokens the tokenizer had before
    added = add_markup_to_tokenizer(tokenizer)
    if not added:
        return []
    ids = list(tokenizer.convert_tokens_to_ids(added))
    rows = _base(model).get_input_embeddings().weight.shape[0]
    grown = [i for i in ids if i >= rows]
    reset = ids if init == "mean" else grown
    resize_token_embeddings(
        model, max(len(tokenizer), rows), init_rows=reset, mean_over=min(known, rows)
    )
    overwritten = len(reset) - len(grown)
    print(
        f"added the GoT markup tokens {' '.join(added)} to the tokenizer at ids "
        f"{ids[0]}-{ids[-1]}: {len(ids) - len(reset)} kept the embedding rows already there, "
        f"{len(grown)} got new rows set to the mean embedding"
        + (f", {overwritten} existing rows were reset to the mean" if overwritten else ""),
        file=sys.stderr,
        flush=True,
    )
    return ids


def check_vocabulary(
    model: JanusForConditionalGeneration, tokenizer: PreTrainedTokenizerBase
) -> None:
    """Raise a clear error when the tokenizer has ids the model cannot embed."""
    rows = _base(model).get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}; "
            "call add_markup_tokens / resize_token_embeddings"
        )


# --- new models -----------------------------------------------------------------------------


def new_policy(
    preset: str | PresetConfig = "world-tiny",
    seed: int = 0,
    processor: JanusProcessor | None = None,
    device: str | torch.device | None = None,
    vocab_size: int | None = None,
) -> tuple[JanusForConditionalGeneration, JanusProcessor]:
    """A freshly initialised model of a preset with its processor, ready to train.

    The processor defaults to a newly trained world tokenizer; the model's vocabulary is sized to
    the tokenizer (or to `vocab_size`, e.g. the preset's 102,400 rows of Janus-Pro, which exceed
    its tokenizer too) and its special-token ids are set from it.
    """
    preset = get_preset(preset)
    if processor is None:
        tokenizer = train_world_tokenizer(**preset.world_tokenizer)
        processor = build_processor(
            tokenizer, image_size=preset.image_size, num_image_tokens=preset.num_image_tokens
        )
    if vocab_size is not None and vocab_size < len(processor.tokenizer):
        raise ValueError(f"vocab_size {vocab_size} < the tokenizer's {len(processor.tokenizer)}")
    rows = len(processor.tokenizer) if vocab_size is None else vocab_size
    model = build_model(preset, vocab_size=rows, seed=seed, device=device)
    configure_special_tokens(model, processor.tokenizer)
    return model, processor


# --- load / save -----------------------------------------------------------------------------


def json_file_problem(path: Path, kind: type = dict) -> str | None:
    """Why a JSON file cannot be used (unreadable, not JSON, not a `kind`), naming it; or None."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path}: missing"
    except (OSError, UnicodeDecodeError) as error:
        return f"{path}: cannot be read ({type(error).__name__}: {error})"
    except json.JSONDecodeError as error:
        return f"{path}: not valid JSON ({error}); the file is damaged or truncated"
    if not isinstance(value, kind):
        found = type(value).__name__
        wanted = "a JSON object" if kind is dict else f"JSON of type {kind.__name__}"
        return f"{path}: expected {wanted}, found a JSON {found}; the file is damaged"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be loaded (missing, truncated, corrupt header), naming it; or
    None. Reads the header only and checks that it covers the file exactly, so a file cut short
    anywhere is caught without loading a tensor."""
    from safetensors import safe_open

    if not path.is_file():
        return f"{path}: missing"
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"{path}: truncated or corrupt ({detail})"
    return None


def model_folder_problem(folder: Path, require_config: bool = True) -> str | None:
    """Why a local model folder (a plain HF Janus folder or a PEFT adapter folder) cannot be
    loaded, naming the file or folder at fault; None when it looks intact.

    Checks that the folder exists, that its JSON files (config.json, adapter_config.json,
    processor and tokenizer files) parse and that config.json / adapter_config.json are JSON
    objects, and that every safetensors file is whole (`safetensors_problem`) and the weights are
    there. Cheap: no tensor is read. With `require_config` False a folder without config.json is
    only checked for damage: its JSON and safetensors files must be whole.
    """
    if not folder.is_dir():
        return (
            f"{folder}: expected a model folder, found a file"
            if folder.exists()
            else f"{folder}: no such model folder"
        )
    adapter = folder / "adapter_config.json"
    config = adapter if adapter.is_file() else folder / "config.json"
    if not config.is_file() and require_config:
        return f"{folder}: not a model folder (no config.json)"
    for path in sorted(folder.glob("*.json")):
        problem = json_file_problem(path, dict if path in (config, adapter) else object)
        if problem:
            return problem
    if not config.is_file():
        weights = []
    elif config == adapter:
        weights = [folder / "adapter_model.safetensors"]
    elif (folder / "model.safetensors.index.json").is_file():
        index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
        shards = index.get("weight_map", {}) if isinstance(index, dict) else {}
        weights = [folder / name for name in sorted(set(shards.values()))]
    else:
        weights = [folder / "model.safetensors"]
    weights += [p for p in sorted(folder.glob("*.safetensors")) if p not in weights]
    for path in weights:
        problem = safetensors_problem(path)
        if problem:
            return problem
    return None


def _resolve_source(name_or_path: str | Path) -> tuple[str, bool]:
    """(source for from_pretrained, is_local). Local folders must hold a config.json. A `Path`
    is always a local folder, never a hub id: a folder the user (or a checkpoint) named that does
    not exist is an error, not a download."""
    path = Path(name_or_path).expanduser()
    if path.exists() or isinstance(name_or_path, Path):
        if not path.is_dir():
            raise UserError(model_folder_problem(path) or f"{path}: not a model folder")
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a model folder (no config.json)")
        return str(path), True
    text = str(name_or_path)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise UserError(f"{text}: no such model folder")
    return text, False


def _janus_model_type(source: str, is_local: bool) -> str | None:
    """The model_type in a local config.json (None for hub ids)."""
    if not is_local:
        return None
    config = Path(source) / "config.json"
    problem = json_file_problem(config)
    if problem:
        raise UserError(problem)
    return json.loads(config.read_text(encoding="utf-8")).get("model_type")


def load_pretrained(
    name_or_path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    add_markup: bool = True,
) -> tuple[JanusForConditionalGeneration, JanusProcessor]:
    """Load an HF-format Janus checkpoint (a local folder or a hub id) and its processor.

    Safetensors only, no remote code. Adds the GoT markup tokens when missing (see
    `add_markup_tokens`: rows already in the matrix keep their trained values, so a GoT-R1
    folder whose tokenizer lacks the markup computes what it was trained to), installs the GoT
    chat template (no default system prompt), and syncs the special-token ids.
    `dtype` is e.g. "bfloat16" or a torch dtype (default: float32).
    """
    import torch
    from transformers import AutoProcessor, JanusForConditionalGeneration

    source, is_local = _resolve_source(name_or_path)
    model_type = _janus_model_type(source, is_local)
    if model_type == "multi_modality":
        raise UserError(
            f"{source} is an original DeepSeek-format checkpoint; convert it first: "
            f"gotr1 convert {source} OUT_DIR"
        )
    if model_type not in (None, "janus"):
        raise UserError(f"{source}: model_type is {model_type!r}, expected 'janus'")
    problem = model_folder_problem(Path(source)) if is_local else None
    if problem:  # a damaged file, named, rather than a traceback from deep in the loaders
        raise UserError(problem)
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise UserError(f"unknown dtype {dtype!r} (try float32, bfloat16 or float16)")
        dtype = getattr(torch, dtype)
    hub = dict(revision=revision, local_files_only=local_files_only)
    try:
        model = JanusForConditionalGeneration.from_pretrained(
            source, dtype=dtype or torch.float32, use_safetensors=True, **hub
        )
        processor = AutoProcessor.from_pretrained(source, **hub)
    except (OSError, ValueError) as error:
        where = "folder" if is_local else "hub id"
        raise UserError(f"cannot load model {where} {source}: {error}") from None
    if device is not None:
        model.to(device)
    tokenizer = processor.tokenizer
    ensure_janus_token_attributes(tokenizer)
    if add_markup:
        add_markup_tokens(model, tokenizer)
    check_vocabulary(model, tokenizer)
    processor.chat_template = CHAT_TEMPLATE  # GoT format: roles User/Assistant, no system prompt
    processor.use_default_system_prompt = False  # (transformers' Janus-Pro folders turn it on)
    configure_special_tokens(model, tokenizer)
    return model.eval(), processor


def save_pretrained(
    model: JanusForConditionalGeneration,
    processor: JanusProcessor,
    path: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write model and processor as one plain HF folder (safetensors). Returns the folder.

    Every full-model folder gotr1 writes (SFT and GRPO checkpoints, demo stages, ``gotr1 convert``)
    goes through here, so each one opens and draws with plain transformers
    (``generate(generation_mode="image")``). `state_dict` replaces the module's own tensors (the
    gathered weights of a ZeRO-3 / FSDP model, whose parameters are shards). A LoRA (PEFT) model
    is refused: save its adapter with `gotr1.policy.lora.save_adapter`, or `merge_lora` it first.
    """
    if hasattr(model, "get_base_model"):
        raise ValueError("save_pretrained got a PEFT model; use save_adapter, or merge_lora first")
    if state_dict is None:  # a sharded model's own embedding is a shard: nothing to check there
        check_vocabulary(model, processor.tokenizer)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    configure_special_tokens(model, processor.tokenizer)
    model.save_pretrained(path, state_dict=state_dict)
    processor.save_pretrained(path)
    return path


def markup_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The id of each GoT markup token (raises if one is missing)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in GOT_R1_MARKUP_ORDER if t not in vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks the GoT markup tokens {missing}")
    return {t: vocab[t] for t in GOT_R1_MARKUP_ORDER}
