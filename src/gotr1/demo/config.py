"""Settings of `gotr1 demo`: the small ``world-demo`` preset and the full / quick run settings.

The preset shrinks what costs on a CPU (docs/world.md): 32x32 images as 8x8 = 64 image tokens, a
small VQ, a narrow 3-layer Llama, box coordinates as single tokens. This module imports nothing
heavy.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from gotr1.errors import UserError
from gotr1.numeric import finite_message
from gotr1.train.config import coerce

DEMO_PRESET: dict[str, Any] = {
    "name": "world-demo",
    "description": "~1.7M parameters: 3-layer Llama (hidden 128), 8x8 image tokens for 32x32 images",
    "text": {
        "vocab_size": 600,
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1.0e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
    },
    "vision": {
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "mlp_ratio": 2.0,
        "image_size": 32,
        "patch_size": 4,
        "depth": 2,
    },
    "vq": {
        "num_embeddings": 512,
        "embed_dim": 8,
        "latent_channels": 32,
        "base_channels": 64,  # not 32: GroupNorm's 32 groups would normalise each channel alone
        "channel_multiplier": [1, 1, 1],
        "num_res_blocks": 0,
        "num_hidden_layers": 2,
    },
    "image_token_id": 5,
    "tie_word_embeddings": False,
    "world_tokenizer": {"vocab_size": 600, "whole_numbers": True},
}
"""The ``world-demo`` preset (``configs/world-demo.yaml`` mirrors it; a test keeps them equal)."""


def _f(default: Any, help: str) -> Any:
    if isinstance(default, list | dict):
        value = default
        return field(default_factory=lambda: copy.deepcopy(value), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DemoConfig:
    """Everything a demo run does. `DemoConfig.full()` and `DemoConfig.quick()` are the two
    shipped settings; any field can be changed (the stages that depend on it rerun)."""

    out: str = _f("runs/demo", "Run folder: stages, metrics.json, report.html, train_log.jsonl.")
    seed: int = _f(0, "Seed of the SFT/GRPO weights, data order and the evaluation's sampling.")
    quick: bool = _f(False, "The --quick settings (a smoke run: small budgets, fewer prompts).")
    preset: dict[str, Any] = _f(DEMO_PRESET, "Model shape (gotr1.policy.presets.PresetConfig).")
    threads: int | None = _f(
        None,
        "torch CPU threads (None: torch's default, all cores); with grpo_processes > 1, "
        "threads per GRPO process (None: 1).",
    )
    progress: bool = _f(True, "Progress bars.")

    # Stage 1: the image tokenizer (shared by every seed: it is infrastructure, not the result).
    tokenizer_dir: str | None = _f(
        None, "Folder of the tokenizer stage (None: <out>/tokenizer); seeds can share one."
    )
    vq_seed: int = _f(0, "Seed of the image tokenizer (kept fixed across demo seeds).")
    vq_steps: int = _f(2000, "VQ training steps.")
    vq_batch_size: int = _f(16, "World renders per VQ step.")
    vq_learning_rate: float = _f(3e-3, "VQ peak learning rate.")
    vq_foreground_weight: float = _f(9.0, "Extra VQ loss weight of object pixels.")
    vq_foreground_margin: int = _f(
        1, "Background pixels this close to an object get its weight (1 px of 32 = 2 px of 64)."
    )

    # Stage 2: SFT.
    sft_steps: int = _f(4000, "SFT optimizer steps.")
    sft_batch_size: int = _f(32, "SFT examples per step.")
    sft_learning_rate: float = _f(3e-3, "SFT peak learning rate (cosine).")
    sft_warmup_steps: int = _f(20, "SFT warm-up steps.")
    sft_length_groups: int = _f(
        2,
        "Passes an SFT batch runs in, rows grouped by length (SFTConfig.length_groups): the same "
        "gradient with half the padding (the SFT loop 1.19x faster in float32, 1.03-1.07x in bf16).",
    )
    sft_world_split: str = _f(
        "train",
        "World split of the SFT corpus: train, or sft (train without the RL-only compositions, "
        "gotr1.world.RL_ONLY_PAIRS / RL_ONLY_RELATIONS, which only GRPO's prompts then hold).",
    )
    sft_chain_colors: str = _f(
        "drawn",
        "How SFT chains name objects: drawn (each with the colour it is drawn in, so the plan "
        "picks the colours a prompt leaves open) or prompt (as the prompt names them).",
    )
    mixed_precision: str = _f(
        "auto",
        "Autocast of SFT and GRPO updates: auto (bf16 where the CPU or GPU runs it natively, "
        "float32 elsewhere), no (float32) or bf16.",
    )
    sft_prompt_only_dropout: float = _f(
        0.0,
        "Share of SFT examples with the chain alone blanked (SFTConfig.prompt_only_dropout), so "
        "eval_plan_cfg_weight has a learned prompt-only branch. 0 = off.",
    )
    sft_save_steps: int = _f(
        250,
        "SFT saves a checkpoint every this many steps (and at the end): a demo stopped part-way "
        "resumes its SFT from the last one. Not part of the stage's identity.",
    )

    # Stage 3: GRPO.
    grpo_steps: int = _f(72, "GRPO steps.")
    grpo_num_prompts: int = _f(
        64, "Prompts per GRPO step (each sampled grpo_num_generations times)."
    )
    grpo_num_generations: int = _f(8, "Group size N.")
    grpo_processes: int = _f(
        2, "Processes GRPO trains in on CPU (DDP over gloo under torchrun; 1: in this process)."
    )
    grpo_update_rollouts: int = _f(
        32,
        "Rollouts a GRPO process takes into one forward and backward pass of its update (the "
        "rest by gradient accumulation): what bounds the update's memory.",
    )
    grpo_learning_rate: float = _f(2e-4, "GRPO peak learning rate (cosine).")
    grpo_min_lr_ratio: float = _f(
        0.1, "Where GRPO's cosine schedule ends, as a fraction of the peak (1: constant)."
    )
    grpo_save_steps: int = _f(
        8, "GRPO saves a checkpoint every this many steps (as sft_save_steps)."
    )
    grpo_beta: float = _f(0.0, "KL coefficient to the SFT policy (0: no reference pass).")
    grpo_num_iterations: int = _f(1, "Updates per rollout batch.")
    grpo_chain_advantage: str = _f(
        "total",
        "What GRPO's chain tokens learn from: total (the paper: the sample's reward) or plan "
        "(stage-wise credit: the plan's own reward R_sem + R_spa; image tokens keep the total).",
    )
    reward_combination: str = _f("product", "product (the paper), sum or weighted_sum.")
    reward_components: list[str] = _f(["sem", "spa", "ri", "pi"], "Reward components used.")
    clean_image_factor: bool = _f(
        True,
        "Multiply the reward by the share of drawn objects the prompt asked for "
        "(gotr1.rewards.clean_image: the world judge's R_PI counts clutter as one requirement).",
    )
    cfg_weight: float = _f(3.0, "Classifier-free guidance of rollouts and evaluation.")
    max_chain_tokens: int = _f(160, "Chain cap of rollouts and evaluation (tokens).")

    # Stage 4: the held-out benchmark.
    eval_prompts: int = _f(300, "Held-out (test split) benchmark prompts.")
    eval_prompt_seed: int = _f(0, "Seed of the benchmark's prompt list (fixed: the benchmark).")
    eval_images_per_prompt: int = _f(4, "Images per benchmark prompt (GenEval draws four).")
    eval_prompts_per_batch: int = _f(100, "Prompts per evaluation rollout batch.")
    eval_plan_cfg_weight: float | None = _f(
        None,
        "Two-condition guidance of the evaluation: the plan's weight, cfg_weight the prompt's "
        "(SamplingConfig.plan_cfg_weight; needs sft_prompt_only_dropout > 0). None = off.",
    )
    eval_plan_candidates: int = _f(
        1,
        "Plans sampled per evaluation image; the world judge's chain stage (R_sem + R_spa) "
        "picks the one drawn (PlanOptions.candidates). 1 = draw the plan sampled.",
    )
    eval_repair_plans: bool = _f(
        False,
        "Repair each evaluation plan's geometry before drawing: boxes clamped, the prompt's "
        "relation made to hold, overlapping objects separated (PlanOptions.repair).",
    )
    eval_plan_judge_noise: float = _f(
        0.0,
        "Gaussian noise of this standard deviation on each plan candidate's score before the "
        "choice (PlanOptions.judge_noise; needs eval_plan_candidates > 1). 0 = the exact judge.",
    )
    report_examples: int = _f(24, "Side-by-side examples in report.html.")

    @classmethod
    def full(cls, **overrides: Any) -> DemoConfig:
        """The full demo's settings (the headline run)."""
        return cls(**overrides)

    @classmethod
    def quick_settings(cls, **overrides: Any) -> DemoConfig:
        """The --quick settings: every stage runs, with small budgets and 60 held-out prompts."""
        values: dict[str, Any] = dict(
            quick=True,
            vq_steps=150,
            sft_steps=60,
            grpo_steps=4,
            grpo_num_prompts=4,
            grpo_num_generations=4,
            eval_prompts=60,
            eval_images_per_prompt=1,
            report_examples=12,
            grpo_processes=1,
        )
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise `gotr1.errors.UserError` naming the field for values a run cannot use (the
        stages' own configs are checked by `gotr1.demo.pipeline.check_settings`)."""
        message = finite_message(self, "demo setting ")  # first: NaN passes range checks
        if message:
            raise UserError(message)
        positive = (
            "vq_steps",
            "vq_batch_size",
            "sft_steps",
            "sft_batch_size",
            "grpo_steps",
            "grpo_num_prompts",
            "eval_prompts",
            "eval_images_per_prompt",
            "eval_prompts_per_batch",
            "max_chain_tokens",
            "sft_save_steps",
            "grpo_save_steps",
            "grpo_update_rollouts",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"demo setting {name} must be >= 1, got {getattr(self, name)}")
        if self.grpo_num_generations < 2:
            raise UserError(
                f"demo setting grpo_num_generations must be >= 2, got {self.grpo_num_generations}"
            )
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if self.grpo_processes < 1:
            raise UserError(f"demo setting grpo_processes must be >= 1, got {self.grpo_processes}")
        if self.grpo_num_prompts % self.grpo_processes:
            raise UserError(
                f"demo setting grpo_num_prompts ({self.grpo_num_prompts}) must be a multiple of "
                f"grpo_processes ({self.grpo_processes}): each process takes whole prompt groups"
            )
        if not 0 <= self.grpo_min_lr_ratio <= 1:
            raise UserError(
                f"demo setting grpo_min_lr_ratio must be in [0, 1], got {self.grpo_min_lr_ratio}"
            )
        from gotr1.world.chains import CHAIN_COLORS  # the world package loads PIL and numpy

        choices = {
            "sft_world_split": ("train", "sft"),
            "sft_chain_colors": CHAIN_COLORS,
            "mixed_precision": ("auto", "no", "bf16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(
                    f"demo setting {name} must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, name)!r}"
                )
        for name in ("report_examples", "vq_foreground_margin"):
            if getattr(self, name) < 0:
                raise UserError(f"demo setting {name} must be >= 0, got {getattr(self, name)}")


SET_RESERVED = ("out", "seed", "quick", "threads", "progress", "preset")
"""Fields with their own command-line option (or, for the preset, no text form): not for --set."""


def parse_settings(assignments: list[str]) -> dict[str, Any]:
    """``["grpo_steps=24", "reward_components=sem,pi"]`` -> typed DemoConfig overrides; raises
    `gotr1.errors.UserError` naming the bad assignment (unknown field, wrong type)."""
    hints = typing.get_type_hints(DemoConfig)
    settable = sorted(f.name for f in dataclasses.fields(DemoConfig) if f.name not in SET_RESERVED)
    values: dict[str, Any] = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or name not in settable:
            raise UserError(
                f"--set {assignment!r}: expected FIELD=VALUE with FIELD one of {', '.join(settable)}"
            )
        try:
            values[name] = coerce(text.strip(), hints[name])
        except ValueError as error:
            raise UserError(f"--set {assignment!r}: {error}") from None
    return values
