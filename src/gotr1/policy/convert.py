"""Convert DeepSeek-format Janus / GoT-R1 checkpoints into the Hugging Face layout.

DeepSeek's own code (``MultiModalityCausalLM``, used by the released GoT-R1 weights) names its
parts differently from transformers' ``JanusForConditionalGeneration``:

    DeepSeek                                   transformers
    language_model.model.*                     model.language_model.*
    language_model.lm_head.weight              lm_head.weight
    gen_embed.weight                           model.generation_embeddings.weight
    gen_aligner.layers.0 / .2                  model.generation_aligner.fc1 / .hidden_layers.0
    gen_head.output_mlp_projector / .vision_head   model.generation_head.proj_out / .vision_head
    gen_vision_model.* (LlamaGen VQ)           model.vqmodel.*  (conv_blocks->down/up, res->block,
                                                                 mid.0/1/2->block_1/attn_1/block_2)
    vision_model.vision_tower.* (timm SigLIP)  model.vision_model.*  (fused attn.qkv split into
                                                                 q/k/v_proj, pos_embed squeezed)
    aligner.layers.0 / .2                      model.aligner.fc1 / .hidden_layers.0

Weights are read from safetensors, or from DeepSeek's ``pytorch_model*.bin`` shards (how it publishes
Janus-Pro) with ``torch.load(weights_only=True)``: tensors only, never another pickled object.

Dropped: the SigLIP attention-pooling head (``attn_pool.*``, unused by Janus) and the VQ's
``codebook_used`` statistics buffer. The mapping is written here from the two model definitions
(both directions, so a test can go HF -> DeepSeek -> HF bit-exactly).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from gotr1.errors import UserError
from gotr1.policy.io import add_markup_tokens, save_pretrained
from gotr1.policy.tokenizer import BEGIN_OF_IMAGE, END_OF_IMAGE, IMAGE_TOKEN, build_processor

# Architectures the DeepSeek config names instead of describing (its code holds the sizes).
SIGLIP_TOWERS: dict[str, dict[str, Any]] = {
    "siglip_large_patch16_384": dict(width=1024, layers=24, heads=16, mlp_ratio=4.0, patch_size=16),
}
VQ_MODELS: dict[
    str, dict[str, Any]
] = {  # LlamaGen VQ ModelArgs: ch=128, z_channels=256, 2 res blocks
    "VQ-16": dict(ch=128, ch_mult=[1, 1, 2, 2, 4], z_channels=256, num_res_blocks=2),
    "VQ-8": dict(ch=128, ch_mult=[1, 2, 2, 4], z_channels=256, num_res_blocks=2),
}

_VISION = "vision_model.vision_tower."
_HF_VISION = "model.vision_model."

# (DeepSeek pattern, HF replacement), applied in order to the key's remainder after its prefix.
_VQ_RULES = [
    (r"^(encoder)\.conv_blocks\.(\d+)\.res\.", r"\1.down.\2.block."),
    (r"^(encoder)\.conv_blocks\.(\d+)\.", r"\1.down.\2."),
    (r"^(decoder)\.conv_blocks\.(\d+)\.res\.", r"\1.up.\2.block."),
    (r"^(decoder)\.conv_blocks\.(\d+)\.", r"\1.up.\2."),
    (r"^(encoder|decoder)\.mid\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid\.1\.", r"\1.mid.attn_1."),
    (r"^(encoder|decoder)\.mid\.2\.", r"\1.mid.block_2."),
]
_VQ_RULES_BACK = [
    (r"^(encoder)\.down\.(\d+)\.block\.", r"\1.conv_blocks.\2.res."),
    (r"^(encoder)\.down\.(\d+)\.", r"\1.conv_blocks.\2."),
    (r"^(decoder)\.up\.(\d+)\.block\.", r"\1.conv_blocks.\2.res."),
    (r"^(decoder)\.up\.(\d+)\.", r"\1.conv_blocks.\2."),
    (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid.0."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid.1."),
    (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid.2."),
]
_VISION_RULES = [
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^pos_embed$", "embeddings.position_embedding.weight"),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),  # split later
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection_layer."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]
_VISION_RULES_BACK = [
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.projection_layer\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"^post_layernorm\.", "norm."),
]
_DROPPED = re.compile(
    r"^vision_model\.vision_tower\.attn_pool\.|\.codebook_used$|rotary_emb\.inv_freq$"
)


def _apply(rules: list[tuple[str, str]], rest: str) -> str | None:
    """Rewrite `rest` with the first matching rule (None when no rule matches)."""
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, rest)
        if count:
            return new
    return None


def _mlp_key(rest: str, to_hf: bool) -> str | None:
    """MlpProjector ``layers.{0,2,4..}`` <-> JanusAlignerMLP ``fc1`` / ``hidden_layers.{k}``."""
    if to_hf:
        match = re.match(r"^layers\.(\d+)\.(.+)$", rest)
        if not match or int(match[1]) % 2:
            return None
        index = int(match[1]) // 2
        return f"fc1.{match[2]}" if index == 0 else f"hidden_layers.{index - 1}.{match[2]}"
    match = re.match(r"^(?:fc1|hidden_layers\.(\d+))\.(.+)$", rest)
    if not match:
        return None
    index = 0 if match[1] is None else int(match[1]) + 1
    return f"layers.{2 * index}.{match[2]}"


def original_to_hf_key(key: str) -> str | None:
    """The HF name of a DeepSeek-format key. Returns None for dropped keys; raises KeyError for
    keys outside the DeepSeek layout. Fused ``attn.qkv`` maps to a ``self_attn.qkv`` pseudo-key."""
    if _DROPPED.search(key):
        return None
    new: str | None = None
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    if key.startswith("language_model.model."):
        return "model.language_model." + key.removeprefix("language_model.model.")
    if key.startswith("gen_embed."):
        return "model.generation_embeddings." + key.removeprefix("gen_embed.")
    if key.startswith("gen_head.output_mlp_projector."):
        return "model.generation_head.proj_out." + key.removeprefix(
            "gen_head.output_mlp_projector."
        )
    if key.startswith("gen_head.vision_head."):
        return "model.generation_head.vision_head." + key.removeprefix("gen_head.vision_head.")
    if key.startswith("gen_aligner."):
        new = _mlp_key(key.removeprefix("gen_aligner."), to_hf=True)
        new = new and "model.generation_aligner." + new
    elif key.startswith("aligner."):
        new = _mlp_key(key.removeprefix("aligner."), to_hf=True)
        new = new and "model.aligner." + new
    elif key.startswith("gen_vision_model."):
        rest = key.removeprefix("gen_vision_model.")
        new = "model.vqmodel." + (_apply(_VQ_RULES, rest) or rest)
    elif key.startswith(_VISION):
        new = _apply(_VISION_RULES, key.removeprefix(_VISION))
        new = new and _HF_VISION + new
    if new is None:
        raise KeyError(key)
    return new


def hf_to_original_key(key: str) -> str:
    """The DeepSeek name of an HF key (``self_attn.qkv`` pseudo-keys map to ``attn.qkv``)."""
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if key.startswith("model.language_model."):
        return "language_model.model." + key.removeprefix("model.language_model.")
    if key.startswith("model.generation_embeddings."):
        return "gen_embed." + key.removeprefix("model.generation_embeddings.")
    if key.startswith("model.generation_head.proj_out."):
        return "gen_head.output_mlp_projector." + key.removeprefix(
            "model.generation_head.proj_out."
        )
    if key.startswith("model.generation_head.vision_head."):
        return "gen_head.vision_head." + key.removeprefix("model.generation_head.vision_head.")
    new: str | None = None
    if key.startswith("model.generation_aligner."):
        new = _mlp_key(key.removeprefix("model.generation_aligner."), to_hf=False)
        new = new and "gen_aligner." + new
    elif key.startswith("model.aligner."):
        new = _mlp_key(key.removeprefix("model.aligner."), to_hf=False)
        new = new and "aligner." + new
    elif key.startswith("model.vqmodel."):
        rest = key.removeprefix("model.vqmodel.")
        new = "gen_vision_model." + (_apply(_VQ_RULES_BACK, rest) or rest)
    elif key.startswith(_HF_VISION):
        new = _apply(_VISION_RULES_BACK, key.removeprefix(_HF_VISION))
        new = new and _VISION + new
    if new is None:
        raise KeyError(key)
    return new


def convert_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DeepSeek-format tensors -> HF ``JanusForConditionalGeneration`` tensors.

    Splits each fused vision ``qkv`` into ``q_proj``/``k_proj``/``v_proj`` and squeezes the vision
    position embedding from [1, N, D] to [N, D]; everything else is renamed, not touched. Raises
    ValueError listing keys that belong to no known part.
    """
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in original.items():
        try:
            new = original_to_hf_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is None:
            continue
        if ".self_attn.qkv." in new:
            if tensor.shape[0] % 3:
                raise ValueError(f"{key}: fused qkv of shape {tuple(tensor.shape)} is not 3 x D")
            for name, part in zip(
                ("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True
            ):
                converted[new.replace(".qkv.", f".{name}.")] = part.contiguous()
        elif new.endswith("position_embedding.weight") and tensor.dim() == 3:
            converted[new] = tensor.squeeze(0)
        else:
            converted[new] = tensor
    if unknown:
        shown = ", ".join(unknown[:8]) + (
            f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""
        )
        raise ValueError(f"{len(unknown)} weight(s) outside the DeepSeek Janus layout: {shown}")
    return converted


def to_original_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF Janus tensors -> DeepSeek-format tensors (fuses q/k/v, unsqueezes the position table).

    The inverse of `convert_state_dict` (minus the dropped ``attn_pool``/``codebook_used``).
    """
    original: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in hf.items():
        match = re.match(r"^(.*\.self_attn\.)(q|k|v)_proj\.(weight|bias)$", key)
        if match and key.startswith(_HF_VISION):
            fused = f"{match[1]}qkv.{match[3]}"
            pending.setdefault(fused, {})[match[2]] = tensor
            continue
        new = hf_to_original_key(key)
        if new == _VISION + "pos_embed":
            tensor = tensor.unsqueeze(0)
        original[new] = tensor
    for fused, parts in pending.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{fused}: needs q, k and v projections, found {sorted(parts)}")
        original[hf_to_original_key(fused)] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return original


# --- configs -----------------------------------------------------------------------------------


def _section(config: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    """``config[name]["params"]`` (or the section itself for language_config), with clear errors."""
    if name not in config or not isinstance(config[name], dict):
        raise UserError(f"{source}: missing section '{name}'")
    section = config[name]
    if name == "language_config":
        return section
    params = section.get("params", {})
    if not isinstance(params, dict):
        raise UserError(f"{source}: '{name}.params' must be a mapping")
    return params


def janus_config_from_original(config: dict[str, Any], source: str = "config.json") -> JanusConfig:
    """The HF `JanusConfig` of a DeepSeek ``multi_modality`` config.json.

    Named architectures (``siglip_large_patch16_384``, ``VQ-16``) take their sizes from the tables
    above; a config may also spell them out (SigLIP ``width/layers/heads/mlp_ratio/patch_size``,
    LlamaGen ``ch/ch_mult/z_channels/num_res_blocks``), as tiny test checkpoints do.
    """
    language = _section(config, "language_config", source)
    vision = _section(config, "vision_config", source)
    aligner = _section(config, "aligner_config", source)
    gen_vision = _section(config, "gen_vision_config", source)
    gen_aligner = _section(config, "gen_aligner_config", source)
    gen_head = _section(config, "gen_head_config", source)

    llama_keys = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "hidden_act",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ]
    text_kwargs = {k: language[k] for k in llama_keys if k in language}
    for required in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        if required not in text_kwargs:
            raise UserError(f"{source}: language_config.{required} is missing")
    hidden = text_kwargs["hidden_size"]
    tie = bool(language.get("tie_word_embeddings", False))
    text_kwargs["tie_word_embeddings"] = tie

    tower = dict(SIGLIP_TOWERS.get(vision.get("model_name", ""), {}))
    tower.update(
        {
            k: vision[k]
            for k in ("width", "layers", "heads", "mlp_ratio", "patch_size")
            if k in vision
        }
    )
    if set(tower) != {"width", "layers", "heads", "mlp_ratio", "patch_size"}:
        raise UserError(
            f"{source}: unknown vision tower {vision.get('model_name')!r}; known: "
            f"{sorted(SIGLIP_TOWERS)} (or give width/layers/heads/mlp_ratio/patch_size)"
        )
    image_size = int(vision.get("image_size", 384))
    patch_size = int(tower["patch_size"])

    vq = dict(VQ_MODELS.get(config["gen_vision_config"].get("cls", ""), {}))
    vq.update(
        {
            k: gen_vision[k]
            for k in ("ch", "ch_mult", "z_channels", "num_res_blocks")
            if k in gen_vision
        }
    )
    if set(vq) != {"ch", "ch_mult", "z_channels", "num_res_blocks"}:
        raise UserError(
            f"{source}: unknown VQ model {config['gen_vision_config'].get('cls')!r}; known: "
            f"{sorted(VQ_MODELS)} (or give ch/ch_mult/z_channels/num_res_blocks)"
        )
    for name, params in (("gen_aligner_config", gen_aligner), ("gen_head_config", gen_head)):
        widths = {params.get("n_embed", hidden), params.get("image_token_embed", hidden)}
        if widths != {hidden}:
            raise UserError(
                f"{source}: {name} widths {sorted(widths)} differ from the text hidden size {hidden}; "
                "transformers' Janus needs them equal"
            )
    codebook = int(gen_vision.get("image_token_size", 16384))
    if int(gen_head.get("image_token_size", codebook)) != codebook:
        raise UserError(f"{source}: gen_head image_token_size differs from the VQ codebook size")

    return JanusConfig(
        text_config=LlamaConfig(**text_kwargs),
        vision_config=JanusVisionConfig(
            hidden_size=int(tower["width"]),
            num_hidden_layers=int(tower["layers"]),
            num_attention_heads=int(tower["heads"]),
            mlp_ratio=float(tower["mlp_ratio"]),
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=int(aligner.get("n_embed", hidden)),
            depth=int(aligner.get("depth", 2)),
            num_image_tokens=(image_size // patch_size) ** 2,
        ),
        vq_config=JanusVQVAEConfig(
            num_embeddings=codebook,
            embed_dim=int(gen_vision.get("n_embed", 8)),
            base_channels=int(vq["ch"]),
            channel_multiplier=list(vq["ch_mult"]),
            latent_channels=int(vq["z_channels"]),
            num_res_blocks=int(vq["num_res_blocks"]),
            projection_dim=hidden,
            num_hidden_layers=int(gen_aligner.get("depth", 2)),
            image_token_embed_dim=hidden,
        ),
        image_token_id=int(config.get("image_token_id", 100581)),
        tie_word_embeddings=tie,
    )


def original_config_from_hf(config: JanusConfig) -> dict[str, Any]:
    """A DeepSeek ``multi_modality`` config.json for an HF `JanusConfig` (sizes spelled out)."""
    text, vision, vq = config.text_config, config.vision_config, config.vq_config
    hidden = text.hidden_size
    language = {
        k: getattr(text, k)
        for k in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rms_norm_eps",
            "hidden_act",
        ]
    }
    language.update(model_type="llama", tie_word_embeddings=bool(config.tie_word_embeddings))
    rope = getattr(text, "rope_parameters", None) or {}
    language["rope_theta"] = float(rope.get("rope_theta", getattr(text, "rope_theta", 10000.0)))

    def mlp(input_dim: int, depth: int) -> dict[str, Any]:
        return dict(depth=depth, input_dim=input_dim, n_embed=hidden, projector_type="mlp_gelu")

    return {
        "model_type": "multi_modality",
        "image_token_id": config.image_token_id,
        "language_config": language,
        "vision_config": {
            "cls": "CLIPVisionTower",
            "model_type": "vision",
            "params": dict(
                image_size=vision.image_size,
                model_name="siglip_custom",
                select_feature="same",
                select_layer=-1,
                width=vision.hidden_size,
                layers=vision.num_hidden_layers,
                heads=vision.num_attention_heads,
                mlp_ratio=vision.mlp_ratio,
                patch_size=vision.patch_size,
            ),
        },
        "aligner_config": {
            "cls": "MlpProjector",
            "model_type": "aligner",
            "params": mlp(vision.hidden_size, vision.depth) | {"n_embed": vision.projection_dim},
        },
        "gen_vision_config": {
            "cls": "VQ-custom",
            "model_type": "gen_vision",
            "params": dict(
                image_token_size=vq.num_embeddings,
                n_embed=vq.embed_dim,
                ch=vq.base_channels,
                ch_mult=list(vq.channel_multiplier),
                z_channels=vq.latent_channels,
                num_res_blocks=vq.num_res_blocks,
            ),
        },
        "gen_aligner_config": {
            "cls": "MlpProjector",
            "model_type": "gen_aligner",
            "params": mlp(vq.embed_dim, vq.num_hidden_layers),
        },
        "gen_head_config": {
            "cls": "vision_head",
            "model_type": "gen_head",
            "params": dict(
                image_token_embed=hidden, image_token_size=vq.num_embeddings, n_embed=hidden
            ),
        },
    }


# --- the checkpoint converter ------------------------------------------------------------------


def _shard_paths(folder: Path, index_name: str, pattern: str) -> list[Path]:
    """Weight files of one format: those a shard index lists, else the files matching `pattern`."""
    index = folder / index_name
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise UserError(f"{index}: malformed shard index ({error})") from None
        return [folder / name for name in files]
    return sorted(folder.glob(pattern))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path}: not a readable safetensors file ({error})") from None


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one ``pytorch_model*.bin`` file, read as transformers reads them:
    ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only and
    refuses every other object; anything but a flat mapping of names to tensors is refused too."""
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to read is the same answer here
        reason = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())
        if "WeightsUnpickler error:" in reason:  # keep torch's one useful sentence
            reason = reason.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise UserError(
            f"{path}: not a plain tensor checkpoint (torch.load with weights_only=True refused "
            f"it: {type(error).__name__}{': ' + reason if reason else ''})"
        ) from None
    if not isinstance(loaded, dict):
        raise UserError(
            f"{path}: holds a {type(loaded).__name__}, not a mapping of names to tensors"
        )
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; only tensors "
                "are read from .bin checkpoints"
            )
    return loaded


def read_checkpoint_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a DeepSeek checkpoint folder.

    ``*.safetensors`` shards (via ``model.safetensors.index.json`` when present) come first; without
    them, ``pytorch_model*.bin`` shards (via ``pytorch_model.bin.index.json`` when present), the
    way DeepSeek publishes Janus-Pro, read with ``torch.load(weights_only=True)``: tensors only,
    never another pickled object. No other file is opened.
    """
    paths = _shard_paths(folder, "model.safetensors.index.json", "*.safetensors")
    read = _read_safetensors
    if not paths:
        paths = _shard_paths(folder, "pytorch_model.bin.index.json", "pytorch_model*.bin")
        read = _read_torch_bin
    if not paths:
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt")
        )
        hint = f" (found {', '.join(others)}: not read)" if others else ""
        raise UserError(f"{folder}: no *.safetensors or pytorch_model*.bin weights{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: listed in the shard index but missing")
        tensors.update(read(path))
    return tensors


def _source_processor(src: Path, config: JanusConfig):
    """The HF JanusProcessor for a DeepSeek checkpoint folder's tokenizer and preprocessor config."""
    # DeepSeek's tokenizer.json is a byte-level BPE although its config names LlamaTokenizerFast;
    # read the serialized tokenizer as it is rather than rebuilding it as that class.
    loader = PreTrainedTokenizerFast if (src / "tokenizer.json").is_file() else AutoTokenizer
    try:
        tokenizer = loader.from_pretrained(
            str(src),
            extra_special_tokens={
                "image_token": IMAGE_TOKEN,
                "boi_token": BEGIN_OF_IMAGE,
                "eoi_token": END_OF_IMAGE,
            },
        )
    except (OSError, ValueError) as error:
        raise UserError(f"{src}: cannot load its tokenizer ({error})") from None
    tokenizer.padding_side = "left"
    preprocessor: dict[str, Any] = {}
    if (src / "preprocessor_config.json").is_file():
        try:
            preprocessor = json.loads((src / "preprocessor_config.json").read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{src}/preprocessor_config.json: not valid JSON ({error})") from None
    grid = config.vision_config.image_size // config.vision_config.patch_size
    return build_processor(
        tokenizer,
        image_size=int(preprocessor.get("image_size", config.vision_config.image_size)),
        num_image_tokens=grid * grid,
        image_mean=tuple(preprocessor.get("image_mean", (0.5, 0.5, 0.5))),
        image_std=tuple(preprocessor.get("image_std", (0.5, 0.5, 0.5))),
    )


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    dtype: str | None = None,
    markup_init: str = "keep",
    overwrite: bool = False,
) -> Path:
    """Convert a DeepSeek-format Janus / GoT-R1 folder into a plain HF folder at `dst`.

    The source holds ``config.json`` (model_type ``multi_modality``), the weights (safetensors, or
    DeepSeek's ``pytorch_model*.bin`` read as tensors only, see `read_checkpoint_weights`) and the
    tokenizer files. The GoT markup tokens are added to the tokenizer when missing, in GoT-R1's
    order; ``markup_init="keep"`` keeps existing embedding rows at those ids (GoT-R1 trained them),
    ``"mean"`` resets them to the mean embedding (a base Janus-Pro). `dtype` casts floating
    weights (default: keep the checkpoint's). Returns `dst`.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise UserError(f"{src}: no such checkpoint folder")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise UserError(f"{src}: not a checkpoint folder (no config.json)")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{config_path}: expected a JSON object")
    model_type = raw.get("model_type")
    if model_type == "janus":
        raise UserError(f"{src} is already in the Hugging Face Janus layout; load it directly")
    if model_type not in (None, "multi_modality"):
        raise UserError(f"{config_path}: model_type {model_type!r} is not a DeepSeek Janus model")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise UserError(f"{dst}: exists and is not empty (pass --overwrite to replace its files)")
    target_dtype = None
    if dtype is not None:
        target_dtype = getattr(torch, dtype, None)
        if not isinstance(target_dtype, torch.dtype):
            raise UserError(f"unknown dtype {dtype!r} (try float32, bfloat16 or float16)")

    config = janus_config_from_original(raw, source=str(config_path))
    processor = _source_processor(src, config)
    try:
        tensors = convert_state_dict(read_checkpoint_weights(src))
    except ValueError as error:
        raise UserError(f"{src}: {error}") from None
    if target_dtype is not None:
        tensors = {
            k: v.to(target_dtype) if v.is_floating_point() else v for k, v in tensors.items()
        }
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    elif "lm_head.weight" not in tensors:
        raise UserError(f"{src}: no language_model.lm_head.weight and the config is not tied")

    with init_empty_weights():
        model = JanusForConditionalGeneration(config)
    expected = set(model.state_dict()) - (
        {"lm_head.weight"} if config.tie_word_embeddings else set()
    )
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise UserError(
            f"{src}: weights do not match config.json: missing {missing[:6]}"
            f"{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
            f"{'...' if len(unexpected) > 6 else ''}"
        )
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    for key, tensor in tensors.items():
        if shapes[key] != tuple(tensor.shape):
            raise UserError(
                f"{src}: {key} has shape {tuple(tensor.shape)}, config implies {shapes[key]}"
            )
    model.load_state_dict(tensors, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()

    add_markup_tokens(model, processor.tokenizer, init=markup_init)
    return save_pretrained(model, processor, dst)
