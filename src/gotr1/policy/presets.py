"""Model presets: one Janus architecture, three sizes.

A preset is the shape of a `JanusForConditionalGeneration`: a Llama text model, a SigLIP-style
vision tower (the understanding path; GoT-R1 never uses it but `JanusConfig` needs one), and the
VQ image tokenizer with its image embedding, aligner and image head (the generation path).

- ``world-tiny``: a few million parameters, trained from scratch on CPU for the built-in world;
  64x64 images as 8x8 = 64 image tokens.
- ``janus-pro-1b`` / ``janus-pro-7b``: the published shapes of DeepSeek's Janus-Pro (384x384 images
  as 24x24 = 576 tokens over a 16384-code VQ), so benchmarks can build them with random weights
  (on the meta device for shape checks) without a download.

The YAML files under ``configs/`` mirror these presets field for field (a test keeps them equal);
``get_preset`` also accepts a path to such a YAML file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import JanusConfig, JanusForConditionalGeneration


@dataclass(frozen=True)
class PresetConfig:
    """The shape of a Janus model. The three dicts are keyword arguments of transformers'
    `LlamaConfig`, `JanusVisionConfig` and `JanusVQVAEConfig`; sizes that must agree with the text
    model (projection widths, number of image tokens) are filled in by `janus_config`."""

    name: str = field(metadata={"help": "Preset name, e.g. 'world-tiny'."})
    text: dict[str, Any] = field(
        metadata={"help": "LlamaConfig kwargs: vocab_size, hidden_size, layers, heads, ..."}
    )
    vision: dict[str, Any] = field(
        metadata={"help": "JanusVisionConfig kwargs of the understanding tower (image/patch size)."}
    )
    vq: dict[str, Any] = field(
        metadata={"help": "JanusVQVAEConfig kwargs: codebook size, channels, downsampling levels."}
    )
    image_token_id: int = field(
        default=5, metadata={"help": "Id of <image_placeholder> (understanding inputs)."}
    )
    tie_word_embeddings: bool = field(
        default=False,
        metadata={"help": "Tie the text head to the input embeddings (Janus-Pro: untied)."},
    )
    description: str = field(default="", metadata={"help": "One line about the preset."})
    world_tokenizer: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Keyword arguments of gotr1.policy.tokenizer.train_world_tokenizer for models "
            "of this shape trained from scratch on the world (e.g. vocab_size, whole_numbers)."
        },
    )

    @property
    def image_size(self) -> int:
        """Side of the square images this model generates, in pixels."""
        return int(self.vision["image_size"])

    @property
    def image_grid(self) -> int:
        """Image tokens per side (the VQ latent grid)."""
        return int(self.vision["image_size"]) // int(self.vision["patch_size"])

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image (grid squared): 64 for world-tiny, 576 for Janus-Pro."""
        return self.image_grid**2

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-ready) of this preset."""
        return dataclasses.asdict(self)


# --- the presets -----------------------------------------------------------------------------

WORLD_TINY = PresetConfig(
    name="world-tiny",
    description="~5M parameters: 4-layer Llama (hidden 256), 8x8 image tokens for 64x64 images",
    text=dict(
        vocab_size=512,  # the world tokenizer is trained to about this size
        hidden_size=256,
        intermediate_size=704,  # 2.75 x hidden, the Janus-Pro-1B ratio
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="silu",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    ),
    vision=dict(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        mlp_ratio=2.0,
        image_size=64,
        patch_size=8,
        depth=2,
    ),
    vq=dict(
        num_embeddings=512,
        embed_dim=8,
        latent_channels=64,
        base_channels=32,  # GroupNorm(32) needs multiples of 32
        channel_multiplier=[1, 1, 2, 2],  # three downsamplings: 64 px -> 8x8 codes
        num_res_blocks=1,
        num_hidden_layers=2,  # image aligner depth
    ),
    image_token_id=5,
    tie_word_embeddings=False,
)

# Janus-Pro shapes from DeepSeek's released config.json (language_config, vision_config =
# siglip_large_patch16_384, aligner/gen_aligner depth 2, gen_vision VQ-16: 16384 codes of dim 8)
# and transformers' conversion of it (deepseek-community/Janus-Pro-*): LlamaConfig defaults for
# rms_norm_eps (1e-6) and rope_theta (1e4); separate lm_head (the checkpoints are untied).
_JANUS_PRO_VISION = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    mlp_ratio=4.0,
    image_size=384,
    patch_size=16,
    depth=2,
)
_JANUS_PRO_VQ = dict(
    num_embeddings=16384,
    embed_dim=8,
    latent_channels=256,
    base_channels=128,
    channel_multiplier=[1, 1, 2, 2, 4],
    num_res_blocks=2,
    num_hidden_layers=2,
)

JANUS_PRO_1B = PresetConfig(
    name="janus-pro-1b",
    description="deepseek-ai/Janus-Pro-1B: 24-layer Llama (hidden 2048), 576 image tokens",
    text=dict(
        vocab_size=102400,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=16384,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="silu",
        bos_token_id=100000,
        eos_token_id=100001,
        pad_token_id=100002,
    ),
    vision=dict(_JANUS_PRO_VISION),
    vq=dict(_JANUS_PRO_VQ),
    image_token_id=100581,
    tie_word_embeddings=False,
)

JANUS_PRO_7B = PresetConfig(
    name="janus-pro-7b",
    description="deepseek-ai/Janus-Pro-7B: 30-layer Llama (hidden 4096), 576 image tokens",
    text=dict(
        vocab_size=102400,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=30,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=16384,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="silu",
        bos_token_id=100000,
        eos_token_id=100001,
        pad_token_id=100002,
    ),
    vision=dict(_JANUS_PRO_VISION),
    vq=dict(_JANUS_PRO_VQ),
    image_token_id=100594,
    tie_word_embeddings=False,
)

PRESETS: dict[str, PresetConfig] = {p.name: p for p in (WORLD_TINY, JANUS_PRO_1B, JANUS_PRO_7B)}


# --- lookup ----------------------------------------------------------------------------------


def preset_from_dict(data: dict[str, Any], source: str = "preset") -> PresetConfig:
    """Build a `PresetConfig` from a plain dict (a parsed YAML file), naming bad fields."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    known = {f.name for f in dataclasses.fields(PresetConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown}; known: {sorted(known)}")
    for section in ("name", "text", "vision", "vq"):
        if section not in data:
            raise ValueError(f"{source}: missing required field '{section}'")
    for section in ("text", "vision", "vq"):
        if not isinstance(data[section], dict):
            raise ValueError(f"{source}: field '{section}' must be a mapping")
    preset = PresetConfig(**data)
    validate_preset(preset, source)
    return preset


def load_preset_yaml(path: str | Path) -> PresetConfig:
    """Read a preset from a YAML file such as configs/world-tiny.yaml."""
    import yaml  # not loaded by `gotr1 --help`, which imports this module

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"preset file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    return preset_from_dict(data, source=str(path))


def get_preset(name: str | Path | PresetConfig) -> PresetConfig:
    """Return a preset by name ('world-tiny', 'janus-pro-1b', 'janus-pro-7b') or YAML path."""
    if isinstance(name, PresetConfig):
        return name
    key = str(name)
    if key in PRESETS:
        return PRESETS[key]
    if key.endswith((".yaml", ".yml")) or Path(key).is_file():
        return load_preset_yaml(key)
    raise ValueError(f"unknown preset {key!r}; choose one of {sorted(PRESETS)} or a YAML file")


def validate_preset(preset: PresetConfig, source: str = "preset") -> None:
    """Check the sizes that must agree across the three parts; raise ValueError naming the field."""
    text, vision, vq = preset.text, preset.vision, preset.vq
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        if key not in text:
            raise ValueError(f"{source}: text.{key} is required")
    if text["hidden_size"] % text["num_attention_heads"]:
        raise ValueError(f"{source}: text.hidden_size must be divisible by num_attention_heads")
    image_size, patch_size = vision.get("image_size"), vision.get("patch_size")
    if not image_size or not patch_size or image_size % patch_size:
        raise ValueError(f"{source}: vision.image_size must be a multiple of vision.patch_size")
    levels = len(vq.get("channel_multiplier", ()))
    if levels < 1:
        raise ValueError(f"{source}: vq.channel_multiplier must list at least one level")
    downsample = 2 ** (levels - 1)
    if image_size // downsample != image_size // patch_size:
        raise ValueError(
            f"{source}: the VQ downsamples {image_size}px by {downsample} (vq.channel_multiplier has "
            f"{levels} levels) but the image grid is {image_size // patch_size} "
            f"(vision.image_size / vision.patch_size); they must agree"
        )
    channels = [vq.get("base_channels", 128) * m for m in vq["channel_multiplier"]]
    if any(c % 32 for c in channels) or vq.get("latent_channels", 256) % 32:
        raise ValueError(f"{source}: VQ channel counts must be multiples of 32 (GroupNorm groups)")


# --- building ----------------------------------------------------------------------------------


def janus_config(preset: str | PresetConfig, vocab_size: int | None = None) -> JanusConfig:
    """The transformers `JanusConfig` of a preset, with the shared widths filled in."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    preset = get_preset(preset)
    validate_preset(preset, preset.name)
    text_kwargs = dict(preset.text)
    if vocab_size is not None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        text_kwargs["vocab_size"] = int(vocab_size)
    text_kwargs["tie_word_embeddings"] = preset.tie_word_embeddings
    hidden = text_kwargs["hidden_size"]

    vision_kwargs = dict(preset.vision)
    vision_kwargs.setdefault("projection_dim", hidden)  # aligner output feeds the text model
    vision_kwargs["num_image_tokens"] = preset.num_image_tokens

    vq_kwargs = dict(preset.vq)
    vq_kwargs["channel_multiplier"] = list(vq_kwargs.get("channel_multiplier", [1, 1, 2, 2, 4]))
    vq_kwargs.setdefault("projection_dim", hidden)  # image aligner output / image head width
    vq_kwargs.setdefault("image_token_embed_dim", hidden)  # image head input = text hidden state

    return JanusConfig(
        text_config=LlamaConfig(**text_kwargs),
        vision_config=JanusVisionConfig(**vision_kwargs),
        vq_config=JanusVQVAEConfig(**vq_kwargs),
        image_token_id=preset.image_token_id,
        tie_word_embeddings=preset.tie_word_embeddings,
    )


def build_model(
    preset: str | PresetConfig,
    vocab_size: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> JanusForConditionalGeneration:
    """A randomly initialised `JanusForConditionalGeneration` of a preset.

    `vocab_size` overrides the preset's text vocabulary (e.g. ``len(tokenizer)``); `seed` makes the
    initial weights reproducible; ``device="meta"`` builds the shapes without memory (Janus-Pro-7B
    shape checks and parameter counts).
    """
    import torch
    from transformers import JanusForConditionalGeneration

    config = janus_config(preset, vocab_size)
    torch.manual_seed(seed)
    if device is None:
        model = JanusForConditionalGeneration(config)
    else:
        with torch.device(device):
            model = JanusForConditionalGeneration(config)
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.bos_token_id = config.text_config.bos_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    return model.eval()


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts of a Janus model by part (text model, heads, vision tower, VQ), and total."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    janus = base.model

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    parts = {
        "language_model": count(janus.language_model),
        "lm_head": 0 if base.config.tie_word_embeddings else count(base.lm_head),
        "image_head": count(janus.generation_head),
        "image_embed": count(janus.generation_embeddings) + count(janus.generation_aligner),
        "vision_tower": count(janus.vision_model) + count(janus.aligner),
        "vq": count(janus.vqmodel),
    }
    parts["total"] = sum(p.numel() for p in {id(p): p for p in base.parameters()}.values())
    return parts
