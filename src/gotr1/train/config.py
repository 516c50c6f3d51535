"""Training configs: `SFTConfig` and `GRPOConfig`, dataclasses with a help string per field.

Field names follow TRL's `GRPOConfig` where they mean the same thing (num_generations, beta,
epsilon, epsilon_high, loss_type, scale_rewards, num_iterations, max_grad_norm, ...). A config is
read from a flat YAML mapping (``field: value``) and any field can be overridden on the command line
(``--field value``; dashes and underscores are interchangeable). Bad values fail at start with a
`ConfigError` that names the field.

This module imports nothing heavy (the `gotr1` command builds its parsers from it): yaml, and the
policy, rewards and world packages (which load PIL and numpy), are imported by the functions that
use them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gotr1.errors import ConfigError, refuse_set  # ConfigError is importable from here too
from gotr1.numeric import finite_message

if TYPE_CHECKING:
    from gotr1.policy.sampling import SamplingConfig
    from gotr1.rewards.combine import RewardConfig

LR_SCHEDULERS = ("cosine", "linear", "constant")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
REPORT_TO = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
CHAIN_ADVANTAGES = ("total", "plan")
IMAGE_LOGPROB = ("guided", "conditional")
JUDGES = ("world", "qwen", "openai")
JUDGE_FIELDS = {
    "world": (),
    "qwen": ("judge_model", "judge_device"),
    "openai": ("judge_model", "judge_base_url", "judge_api_key_env"),
}  # the judge_* settings each judge reads
LORA_FIELDS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_train_image_head",
)
BAD_ROW_POLICIES = ("skip", "error")
REWARD_COMPONENTS = ("sem", "spa", "ri", "pi")
EXTRA_COMPONENTS = ("hps",)  # reward factors beside the judge's: HPS v2.1 (gotr1.rewards.hps)
HPS_FIELDS = ("hps_model", "hps_device", "hps_weight")
REWARD_FIELDS = {
    "components": "reward_components",
    "combination": "reward_combination",
    "weights": "reward_weights",
    "on_failure": "reward_on_failure",
    "extra_weight": "hps_weight",
}  # RewardConfig's field -> GRPOConfig's


def _field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help string (mutable defaults go through a factory)."""
    if isinstance(default, list | dict | tuple):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


# ----------------------------------------------------------------------------------------------
# The configs
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Fields shared by SFT and GRPO: the run folder, optimisation, precision, logging, saving."""

    output_dir: str = _field("runs/train", "Run folder: checkpoints, train_log.jsonl, samples.")
    overwrite_output_dir: bool = _field(
        False, "Start afresh in an output_dir that already holds checkpoints (they are deleted)."
    )
    seed: int = _field(0, "Seed of weights init, data order, CFG dropout and rollout sampling.")
    max_steps: int = _field(1000, "Optimizer steps (SFT) / GRPO steps (one rollout batch each).")
    learning_rate: float = _field(1e-5, "Peak learning rate of AdamW.")
    lr_scheduler_type: str = _field(
        "cosine", f"Learning-rate schedule: {', '.join(LR_SCHEDULERS)}."
    )
    warmup_ratio: float = _field(0.0, "Fraction of optimizer steps of linear warm-up.")
    warmup_steps: int = _field(0, "Warm-up steps (overrides warmup_ratio when > 0).")
    min_lr_ratio: float = _field(0.0, "Cosine/linear schedules end at this fraction of the peak.")
    weight_decay: float = _field(0.0, "AdamW weight decay.")
    adam_beta1: float = _field(0.9, "AdamW beta1.")
    adam_beta2: float = _field(0.99, "AdamW beta2.")
    adam_epsilon: float = _field(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _field(1.0, "Clip the global gradient norm to this (0: no clipping).")
    gradient_accumulation_steps: int = _field(
        1, "Micro-batches per optimizer step on each process (the batch is split into this many)."
    )
    dtype: str = _field(
        "float32",
        "dtype of the weights as loaded: float32, bfloat16 (half the memory; LoRA adapters stay "
        "float32, but full fine-tuning then keeps bf16 weights and optimizer states) or float16.",
    )
    mixed_precision: str = _field(
        "no",
        "Autocast precision via accelerate: auto (bf16 where the CPU or GPU runs it natively, "
        "float32 elsewhere), no, bf16 or fp16; weights and optimizer states stay float32.",
    )
    gradient_checkpointing: bool = _field(
        False, "Recompute decoder activations in the backward pass (less memory, ~30% slower)."
    )
    logging_steps: int = _field(1, "Write a train_log.jsonl line every this many steps.")
    save_steps: int = _field(500, "Save a checkpoint every this many steps (and at the end).")
    save_total_limit: int = _field(2, "Keep only the last this many checkpoints.")
    sample_steps: int = _field(
        500, "Every this many steps dump sample prompts, chains, layouts and images (0: never)."
    )
    num_samples: int = _field(4, "Samples per dump.")
    report_to: list[str] = _field(
        [], f"accelerate trackers to log to as well as train_log.jsonl: {', '.join(REPORT_TO)}."
    )
    threads: int | None = _field(None, "torch CPU threads per process (None: torch's default).")
    progress: bool = _field(True, "Show a progress bar.")

    def validate(self) -> None:
        """Check values; raise `ConfigError` naming the field. Called at construction."""
        message = finite_message(self)  # first: NaN passes every range check below
        if message:
            raise ConfigError(message)
        _positive(self, "max_steps", "learning_rate", "gradient_accumulation_steps")
        _positive(self, "logging_steps", "save_steps", "save_total_limit")
        _non_negative(self, "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm")
        _non_negative(self, "sample_steps", "num_samples", "min_lr_ratio")
        _choice(self, "lr_scheduler_type", LR_SCHEDULERS)
        _choice(self, "mixed_precision", MIXED_PRECISION)
        _choice(self, "dtype", ("float32", "bfloat16", "float16"))
        if self.warmup_ratio >= 1:
            raise ConfigError(f"warmup_ratio must be < 1, got {self.warmup_ratio}")
        if self.min_lr_ratio > 1:
            raise ConfigError(f"min_lr_ratio must be <= 1, got {self.min_lr_ratio}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        unknown = [t for t in self.report_to if t not in REPORT_TO]
        if unknown:
            raise ConfigError(f"report_to: unknown tracker(s) {unknown}; choose from {REPORT_TO}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or None, got {self.threads}")

    def __post_init__(self) -> None:
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML/JSON-ready) dict of the config."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def warmup(self, total_steps: int) -> int:
        """Warm-up length in optimizer steps for a run of `total_steps`."""
        return self.warmup_steps or int(self.warmup_ratio * total_steps)


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on GoT examples: chain tokens (text head) + image tokens (image head).

    ``model`` is a preset name (``world-tiny``: a new model trained from scratch — the world
    tokenizer and the VQ image tokenizer are trained first, unless ``vq_from`` names a model folder
    whose tokenizer and VQ to reuse) or a model folder to fine-tune.
    """

    output_dir: str = _field(
        "runs/sft", "Run folder: checkpoints, train_log.jsonl, samples, final/."
    )
    model: str = _field(
        "world-tiny",
        "A preset name or preset YAML file (a new model from scratch) or an HF Janus folder.",
    )
    vq_from: str | None = _field(
        None, "From scratch: copy tokenizer and VQ from this model folder instead of training them."
    )
    vq_steps: int = _field(
        4000,
        "From scratch: VQ training steps (gotr1.policy.vq.train_vq; world-tiny reaches detector "
        "agreement 0.986 after 4,000, about 27 min on one CPU thread).",
    )
    vq_batch_size: int = _field(32, "From scratch: world renders per VQ step.")
    vq_learning_rate: float = _field(3e-3, "From scratch: VQ peak learning rate.")
    data: list[str] = _field(
        ["world"],
        "'world' (examples from the world generator, endless) or GoT-style JSONL file(s): one "
        "object per line with a prompt, a GoT chain and an image path.",
    )
    prompt_field: str = _field("prompt", "JSONL key of the prompt.")
    chain_field: str = _field("chain", "JSONL key of the GoT chain text.")
    image_field: str = _field("image", "JSONL key of the image path (relative: to image_root).")
    image_root: str | None = _field(
        None, "Folder relative image paths start from (default: the JSONL file's folder)."
    )
    on_bad_row: str = _field(
        "skip",
        "A bad JSONL row (bad JSON, missing key, unreadable image, chain too long): "
        "skip it (reported with file and line) or error.",
    )
    world_split: str = _field("train", "World split the generator samples prompts from.")
    world_chain_colors: str = _field(
        "drawn",
        "How the world's chains name objects: each with the colour it is drawn in, so the plan "
        "chooses the colours the prompt leaves open (drawn), or as the prompt names them (prompt; "
        "plans then rename the colour-shape pairs prompts hold out, see README).",
    )
    batch_size: int = _field(32, "Examples per micro-batch on each process.")
    learning_rate: float = _field(1e-3, "Peak learning rate of AdamW (from scratch: 1e-3).")
    warmup_steps: int = _field(50, "Warm-up steps.")
    weight_decay: float = _field(0.01, "AdamW weight decay.")
    max_steps: int = _field(2000, "Optimizer steps.")
    chain_loss_weight: float = _field(1.0, "Weight of the chain-token cross-entropy.")
    image_loss_weight: float = _field(1.0, "Weight of the image-token cross-entropy.")
    cfg_dropout: float = _field(
        0.1,
        "Fraction of examples whose condition (prompt and chain) is blanked to pad, as the "
        "rollout's unconditional CFG row is built, so guidance has a learned unconditional branch.",
    )
    prompt_only_dropout: float = _field(
        0.0,
        "Fraction of examples (apart from cfg_dropout's) whose chain alone is blanked to pad, as "
        "two-condition guidance's prompt-only row is built, so plan_cfg_weight has a learned "
        "prompt-only branch. 0 = off.",
    )
    max_chain_tokens: int = _field(600, "Longest chain (tokens, with <begin_of_image>) kept.")
    length_groups: int = _field(
        1,
        "Each micro-batch runs as this many forward and backward passes over rows of similar "
        "length, each trimmed to its own longest row: the same gradient with less padding "
        "(benchmarks/length_groups.py). 1 = one pass.",
    )
    freeze: list[str] = _field(
        ["vqmodel", "vision_model", "aligner"],
        "Janus submodules (model.<name>) kept frozen; the VQ and the understanding tower by default.",
    )
    sample_cfg_weight: float = _field(5.0, "CFG weight of the sample dumps' rollouts.")
    sample_max_chain_tokens: int = _field(200, "Chain cap of the sample dumps' rollouts.")

    def validate(self) -> None:
        super().validate()
        self.sample_sampling()  # SamplingConfig owns the checks of the sample dumps' fields
        _positive(
            self, "batch_size", "max_chain_tokens", "vq_steps", "vq_batch_size", "length_groups"
        )
        _positive(self, "vq_learning_rate")
        _non_negative(self, "chain_loss_weight", "image_loss_weight")
        _choice(self, "on_bad_row", BAD_ROW_POLICIES)
        _choice(self, "world_split", world_splits())
        _choice(self, "world_chain_colors", world_chain_colors())
        if not 0 <= self.cfg_dropout < 1:
            raise ConfigError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if not 0 <= self.prompt_only_dropout < 1 - self.cfg_dropout:
            raise ConfigError(
                f"prompt_only_dropout must be >= 0 and leave conditional examples "
                f"(cfg_dropout + prompt_only_dropout < 1), got {self.prompt_only_dropout}"
            )
        if self.chain_loss_weight == 0 and self.image_loss_weight == 0:
            raise ConfigError(
                "chain_loss_weight and image_loss_weight are both 0: nothing to learn"
            )
        if not self.data:
            raise ConfigError("data: give 'world' or at least one JSONL file")
        if "world" in self.data and len(self.data) > 1:
            raise ConfigError("data: 'world' cannot be mixed with JSONL files")

    def sample_sampling(self) -> SamplingConfig:
        """The `SamplingConfig` of the sample dumps' rollouts; it checks sample_cfg_weight and
        sample_max_chain_tokens, and its errors name them."""
        from gotr1.policy.sampling import SamplingConfig

        try:
            return SamplingConfig(
                cfg_weight=self.sample_cfg_weight, max_chain_tokens=self.sample_max_chain_tokens
            )
        except ConfigError as error:
            raise error.renamed(
                {"cfg_weight": "sample_cfg_weight", "max_chain_tokens": "sample_max_chain_tokens"}
            ) from None

    def check_files(self) -> None:
        """Check that the files the config names exist (at the start of a run)."""
        if self.data != ["world"]:
            for path in self.data:
                if not Path(path).is_file():
                    raise ConfigError(f"data: no such file {path}")
        if self.image_root is not None and not Path(self.image_root).is_dir():
            raise ConfigError(f"image_root: no such folder {self.image_root}")
        if self.vq_from is not None and not (Path(self.vq_from) / "config.json").is_file():
            raise ConfigError(f"vq_from: {self.vq_from} is not a model folder (no config.json)")
        _check_model(self.model, allow_preset=True)


@dataclass
class GRPOConfig(TrainConfig):
    """GRPO with GoT-R1's dual-stage reward. Defaults are the paper's where it gives them
    (N = 16, 8 prompts per step, lr 1e-5 cosine, LoRA rank = alpha = 32, temperature 1, 1000 steps);
    beta 0.01 and rollout CFG 5 are T2I-R1's (the paper does not give them)."""

    output_dir: str = _field(
        "runs/grpo", "Run folder: checkpoints, train_log.jsonl, samples, final/."
    )
    model: str = _field(
        "runs/sft/final", "The policy to start from: an HF Janus folder (after SFT)."
    )
    prompts: str = _field(
        "world",
        "'world' (prompts from the world grammar) or a prompt file: .txt (one per line) "
        "or .jsonl (a 'prompt' key per line).",
    )
    world_split: str = _field("train", "World split the prompts come from.")
    max_steps: int = _field(1000, "GRPO steps (each: one rollout batch, num_iterations updates).")
    num_prompts: int = _field(
        8, "Prompts per GRPO step over all processes (each process gets whole groups)."
    )
    num_generations: int = _field(16, "Group size N: samples per prompt.")
    learning_rate: float = _field(1e-5, "Peak learning rate of AdamW.")
    beta: float = _field(
        0.01, "KL coefficient (k3 estimator) to the reference policy; 0 = no reference forward."
    )
    epsilon: float = _field(0.2, "Lower clipping range of the importance ratio: 1 - epsilon.")
    epsilon_high: float | None = _field(
        None, "Upper clipping range: 1 + epsilon_high (None: epsilon; DAPO uses 0.28)."
    )
    num_iterations: int = _field(
        1, "Updates per rollout batch (mu). > 1 keeps old log-probs from before the first update."
    )
    loss_type: str = _field(
        "grpo",
        "Token aggregation: grpo (mean per sequence, then over sequences), bnpo (mean over "
        "the process's tokens), dr_grpo (sum / (rows * max length)), dapo (mean over all tokens "
        "of all processes).",
    )
    scale_rewards: str = _field(
        "group",
        "Advantage scaling: group (divide by the group's std), batch (by the whole "
        "batch's std, over all processes) or none (Dr. GRPO).",
    )
    mask_truncated_chains: bool = _field(
        False,
        "Leave out of the loss the chain tokens of chains that hit max_chain_tokens (their "
        "images are complete samples and stay).",
    )
    filter_zero_std_groups: bool = _field(
        False,
        "DAPO-style: groups whose rewards are all equal get no loss weight at all "
        "(they are always counted in frac_reward_zero_std).",
    )
    text_temperature: float = _field(1.0, "Sampling temperature of chain tokens.")
    image_temperature: float = _field(1.0, "Sampling temperature of image tokens.")
    top_p: float = _field(
        1.0, "Nucleus sampling of chain tokens: must be 1 (off) for exact GRPO log-prob ratios."
    )
    cfg_weight: float = _field(5.0, "Classifier-free guidance of the rollout's image tokens.")
    plan_cfg_weight: float | None = _field(
        None,
        "Two-condition guidance of the rollout's image tokens (and of the guided log-probs): the "
        "plan's weight, with cfg_weight the prompt's (see SamplingConfig). None = off.",
    )
    max_chain_tokens: int = _field(600, "Chain cap; longer chains get <begin_of_image> forced.")
    max_batch_rows: int | None = _field(
        None, "Rollout rows per engine pass (whole groups); None = all at once."
    )
    image_logprob: str = _field(
        "guided",
        "Image-token log-probs of the ratio and KL: guided (the CFG-mixed distribution "
        "that sampled them, exact) or conditional (conditional branch only).",
    )
    chain_token_weight: float = _field(
        1.0, "Weight of each chain token in the loss (1 and 1: pooled like the paper)."
    )
    image_token_weight: float = _field(1.0, "Weight of each image token in the loss.")
    chain_advantage: str = _field(
        "total",
        "What the chain tokens' advantage comes from: total (the paper: every token of a sample "
        "shares its total reward's advantage) or plan (stage-wise credit: chain tokens take the "
        "group advantage of the plan's own reward, R_sem + R_spa of the included ones; image "
        "tokens keep the total's).",
    )
    reward_components: list[str] = _field(
        list(REWARD_COMPONENTS),
        "Which of sem, spa, ri, pi to compute and combine, and optionally hps (HPS v2.1, the "
        "camera-ready paper's aesthetic factor: one more factor of the product, term of the sum).",
    )
    reward_combination: str = _field(
        "product", "product: R_PI*(R_sem+R_spa)*R_RI (the paper); sum; weighted_sum."
    )
    reward_weights: dict[str, float] = _field({}, "Per-component weights of weighted_sum.")
    reward_on_failure: str = _field(
        "zero",
        "A judge failure scores 0 (zero), or takes only the failed sample out of the loss "
        "(drop): its group's advantages are normalised over the samples kept, and a group left "
        "with fewer than 2 kept samples contributes nothing.",
    )
    spatial_input: str = _field("canvas", "R_spa judges the drawn layout (canvas) or text.")
    world_clean_image: bool = _field(
        False,
        "judge world only, with 'pi' among the components: one more reward factor (a term "
        "under sums), the share of drawn objects the prompt asked for — against the world "
        "judge's clutter shortcut (R_PI counts unasked objects as one requirement only; "
        "gotr1.rewards.clean_image).",
    )
    judge: str = _field("world", "Judge: world (exact, programmatic), qwen (local), openai (HTTP).")
    judge_model: str | None = _field(None, "qwen: folder/hub id; openai: model name.")
    judge_base_url: str = _field("http://127.0.0.1:8000/v1", "openai: server root.")
    judge_device: str | None = _field(None, "qwen: torch device of the judge (e.g. cuda:7).")
    judge_api_key_env: str = _field("OPENAI_API_KEY", "openai: environment variable of the key.")
    hps_model: str | None = _field(
        None,
        "hps: the HPS v2.1 model as a transformers CLIPModel folder or hub id (convert the "
        "released open_clip checkpoint with gotr1 convert-hps).",
    )
    hps_device: str | None = _field(None, "hps: torch device of the HPS model (default: auto).")
    hps_weight: float = _field(1.0, "hps: weight of R_HPS in sum and weighted_sum.")
    use_lora: bool = _field(
        True,
        "Train LoRA adapters (reference = adapters disabled); false: full fine-tuning with a "
        "frozen reference copy (only when beta > 0).",
    )
    lora_r: int = _field(32, "LoRA rank.")
    lora_alpha: int = _field(32, "LoRA alpha.")
    lora_dropout: float = _field(0.0, "LoRA dropout.")
    lora_target_modules: list[str] = _field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Llama projections that get adapters.",
    )
    lora_train_image_head: bool = _field(False, "With LoRA, also train a full image-head copy.")
    freeze: list[str] = _field(
        ["vqmodel", "vision_model", "aligner"],
        "Full fine-tuning: Janus submodules (model.<name>) kept frozen.",
    )
    logprob_micro_batch_size: int | None = _field(
        None, "Rows per forward of the no-grad log-prob passes (old, reference); None: all."
    )
    log_entropy: bool = _field(True, "Compute the mean token entropy (one more softmax pass).")
    logging_steps: int = _field(1, "Write a train_log.jsonl line every this many steps.")
    save_steps: int = _field(100, "Save a checkpoint every this many steps (and at the end).")
    sample_steps: int = _field(50, "Dump sample rollouts every this many steps (0: never).")

    def validate(self) -> None:
        super().validate()
        self.sampling()  # SamplingConfig owns the checks of the sampling fields
        self._check_hps()
        self.reward_config()  # RewardConfig owns the checks of the reward fields
        _positive(self, "num_prompts", "num_iterations", "lora_r", "lora_alpha")
        _non_negative(self, "beta", "epsilon", "chain_token_weight", "image_token_weight")
        if self.num_generations < 2:
            raise ConfigError(
                f"num_generations must be >= 2 (group-normalised advantages need a group), got "
                f"{self.num_generations}"
            )
        if self.epsilon_high is not None and self.epsilon_high < 0:
            raise ConfigError(f"epsilon_high must be >= 0 or None, got {self.epsilon_high}")
        if self.top_p != 1:
            raise ConfigError(
                f"top_p must be 1 for GRPO, got {self.top_p}: the teacher-forced log-probs score "
                "the whole distribution, so a nucleus would make the importance ratio inexact"
            )
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _choice(self, "loss_type", LOSS_TYPES)
        _choice(self, "world_split", world_splits())
        _choice(self, "scale_rewards", SCALE_REWARDS)
        _choice(self, "chain_advantage", CHAIN_ADVANTAGES)
        if self.chain_advantage == "plan" and not {"sem", "spa"} & set(self.reward_components):
            raise ConfigError(
                "chain_advantage plan needs 'sem' or 'spa' in reward_components: the plan's "
                f"reward is theirs, got {self.reward_components}"
            )
        _choice(self, "image_logprob", IMAGE_LOGPROB)
        _choice(self, "judge", JUDGES)
        self._refuse_ignored()
        if self.world_clean_image and self.judge != "world":
            raise ConfigError("world_clean_image needs judge: world")
        if self.world_clean_image and "pi" not in self.reward_components:
            raise ConfigError(
                "world_clean_image corrects R_PI and needs 'pi' in reward_components (without "
                "it the factor rewards drawing nothing)"
            )
        if self.chain_token_weight == 0 and self.image_token_weight == 0:
            raise ConfigError("chain_token_weight and image_token_weight are both 0")
        if self.logprob_micro_batch_size is not None and self.logprob_micro_batch_size < 1:
            raise ConfigError("logprob_micro_batch_size must be >= 1 or None")
        from gotr1.policy.lora import LANGUAGE_PROJECTIONS

        bad = [m for m in self.lora_target_modules if m not in LANGUAGE_PROJECTIONS]
        if bad or not self.lora_target_modules:
            raise ConfigError(
                f"lora_target_modules must be a non-empty subset of {list(LANGUAGE_PROJECTIONS)}, "
                f"got {self.lora_target_modules}"
            )

    def _check_hps(self) -> None:
        """hps needs its model and a judge component beside it, and is the only extra factor."""
        if "hps" not in self.reward_components:
            refuse_set(self, HPS_FIELDS, "'hps' is not among reward_components")
            return
        if not self.hps_model:
            raise ConfigError(
                "hps_model is required with 'hps' in reward_components (a CLIPModel folder or hub "
                "id of HPS v2.1; see gotr1 convert-hps)",
                "hps_model",
            )
        if self.world_clean_image:
            raise ConfigError(
                "world_clean_image and 'hps' are both extra reward factors; use one of them",
                "world_clean_image",
            )
        if not [c for c in self.reward_components if c not in EXTRA_COMPONENTS]:
            raise ConfigError(
                "reward_components needs at least one of sem, spa, ri, pi beside hps",
                "reward_components",
            )

    def _refuse_ignored(self) -> None:
        """Refuse a setting the chosen judge or training mode would not read (a default passes)."""
        every = ("judge_model", "judge_device", "judge_base_url", "judge_api_key_env")
        unread = tuple(name for name in every if name not in JUDGE_FIELDS[self.judge])
        refuse_set(self, unread, f"judge {self.judge} does not read it")
        if self.judge == "world" and self.spatial_input == "text":
            raise ConfigError(
                "spatial_input is set ('text') but the world judge reads the planned boxes "
                "either way (R_spa is the canvas mode's), so it would be ignored; remove it",
                "spatial_input",
            )
        if self.use_lora:
            refuse_set(
                self, ("freeze",), "use_lora trains adapters only (freeze is for full fine-tuning)"
            )
        else:
            refuse_set(self, LORA_FIELDS, "use_lora is false")

    @property
    def clip_high(self) -> float:
        """The upper clipping range (epsilon_high, or epsilon when unset)."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def sampling(self) -> SamplingConfig:
        """The `SamplingConfig` of the rollouts; it checks the sampling fields (same names)."""
        from gotr1.policy.sampling import SamplingConfig

        return SamplingConfig(
            text_temperature=self.text_temperature,
            image_temperature=self.image_temperature,
            top_p=self.top_p,
            cfg_weight=self.cfg_weight,
            plan_cfg_weight=self.plan_cfg_weight,
            max_chain_tokens=self.max_chain_tokens,
            max_batch_rows=self.max_batch_rows,
        )

    def reward_config(self) -> RewardConfig:
        """The `RewardConfig` of the run's reward; it checks the reward fields, and its errors
        are passed on naming this config's fields (reward_weights for its weights, ...)."""
        from gotr1.rewards.combine import RewardConfig

        try:
            return RewardConfig(
                components=tuple(c for c in self.reward_components if c not in EXTRA_COMPONENTS),
                combination=self.reward_combination,
                weights=dict.fromkeys(REWARD_COMPONENTS, 1.0) | dict(self.reward_weights),
                spatial_input=self.spatial_input,
                on_failure=self.reward_on_failure,
                extra_weight=self.hps_weight,
            )
        except ConfigError as error:
            raise error.renamed(REWARD_FIELDS) from None

    def check_files(self) -> None:
        """Check that the files the config names exist (at the start of a run)."""
        _check_model(self.model, allow_preset=False)
        if self.prompts != "world" and not Path(self.prompts).is_file():
            raise ConfigError(f"prompts: no such file {self.prompts}")


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def _positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is None or value <= 0:
            raise ConfigError(f"{name} must be > 0, got {value}")


def _non_negative(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is None or value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")


def _choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_model(model: str, allow_preset: bool) -> None:
    from gotr1.policy.presets import PRESETS

    if allow_preset and model in PRESETS:
        return
    if allow_preset and str(model).endswith((".yaml", ".yml")):
        if not Path(model).is_file():
            raise ConfigError(f"model: no such preset file {model}")
        return
    path = Path(model)
    if path.is_dir() and (
        (path / "config.json").is_file() or (path / "adapter_config.json").is_file()
    ):
        return
    hint = f" or a preset ({', '.join(PRESETS)})" if allow_preset else ""
    raise ConfigError(f"model: {model} is not a model folder (no config.json){hint}")


# ----------------------------------------------------------------------------------------------
# YAML and command-line overrides
# ----------------------------------------------------------------------------------------------

ConfigT = typing.TypeVar("ConfigT", bound=TrainConfig)


def field_help(cls: type[TrainConfig]) -> dict[str, tuple[str, Any]]:
    """{field: (help, default)} of a config class, for --help texts and docs."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out[f.name] = (f.metadata.get("help", ""), default)
    return out


def build_config(
    cls: type[ConfigT],
    values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "config",
) -> ConfigT:
    """A validated config from YAML-style `values` then `overrides` (values or strings).

    Each value is converted to its field's type; unknown fields, unconvertible values and invalid
    ones raise `ConfigError` naming the field (and `source`).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    from_file: dict[str, Any] = {}
    from_flags: set[str] = set()
    for where, mapping in ((source, values or {}), ("command line", overrides or {})):
        for key, value in mapping.items():
            name = str(key).replace("-", "_")
            if name not in names:
                close = difflib.get_close_matches(name, sorted(names), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"{where}: unknown field {key!r}{hint}")
            try:
                merged[name] = coerce(value, hints[name])
            except (TypeError, ValueError) as error:
                raise ConfigError(f"{where}: field {name}: {error}") from None
            if where == source:
                from_file[name] = merged[name]
            else:
                from_flags.add(name)
    try:
        return cls(**merged)
    except ConfigError as error:
        where = _blame(cls, error, from_file, from_flags, source)
        raise ConfigError(f"{where}: {error}", error.field) from None


def _blame(
    cls: type[TrainConfig],
    error: ConfigError,
    from_file: dict[str, Any],
    from_flags: set[str],
    source: str,
) -> str:
    """Where a refused config came from: the command-line flag of the field the error names when
    the flag set it, else `source` (the YAML file). An error about a field neither set (a check
    across fields) is the command line's when the file's values alone pass."""
    names = {f.name for f in dataclasses.fields(cls)}
    field = error.field
    if field not in names:
        match = re.match(r"[A-Za-z_]\w*", str(error))
        field = match.group(0) if match else None
    if field in from_flags:
        return f"command line (--{field})"
    if field in from_file or not from_flags:
        return source
    try:
        cls(**from_file)
    except ConfigError:
        return source
    return f"command line ({', '.join(f'--{name}' for name in sorted(from_flags))})"


def load_config(
    cls: type[ConfigT], path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ConfigT:
    """Read a config from a YAML file (optional), apply overrides, validate."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        import yaml

        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(yaml_error_line(path, error)) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
        values = loaded
    return build_config(cls, values, overrides, source)


def yaml_error_line(path: str | Path, error: Exception) -> str:
    """A YAML file's syntax error in one line: ``FILE:LINE:COLUMN: not valid YAML: what``
    (PyYAML's own message spans several lines, with the offending text and a caret)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    parts = (getattr(error, "problem", None), getattr(error, "context", None))
    what = " ".join(part for part in parts if part)
    if not what:
        what = " ".join(str(error).split())
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return f"{where}: not valid YAML: {what}"


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write a config as YAML (what a run actually used)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def world_splits() -> tuple[str, ...]:
    """The embedded world's prompt splits (train, test, sft)."""
    from gotr1.world.grammar import SPLITS

    return SPLITS


def world_chain_colors() -> tuple[str, ...]:
    """How the world's SFT chains may name objects (`gotr1.world.chains.CHAIN_COLORS`)."""
    from gotr1.world.chains import CHAIN_COLORS

    return CHAIN_COLORS


def coerce(value: Any, hint: Any) -> Any:
    """Convert a YAML value or a command-line string to the type `hint` (raise ValueError)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
            raise ValueError("None is not allowed")
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
            if number.is_integer():
                return int(number)
        raise ValueError(f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        raise ValueError(f"expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads a bare no / yes as a boolean
            return "yes" if value else "no"
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = _parse_sequence(value)
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        return [coerce(item, args[0]) for item in value]
    if origin is dict:
        if isinstance(value, str):
            value = _parse_mapping(value)
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        return {str(k): coerce(v, args[1]) for k, v in value.items()}
    raise TypeError(f"unsupported field type {hint!r}")


def _parse_sequence(text: str) -> list[Any]:
    """'a,b' or '[a, b]' (YAML) -> list; '' -> []."""
    text = text.strip()
    if text.startswith("["):
        import yaml

        loaded = yaml.safe_load(text)
        if isinstance(loaded, list):
            return loaded
        raise ValueError(f"expected a list, got {text!r}")
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_mapping(text: str) -> dict[str, Any]:
    """'a=1,b=2' or '{a: 1, b: 2}' (YAML) -> dict."""
    text = text.strip()
    if text.startswith("{"):
        import yaml

        loaded = yaml.safe_load(text)
        if isinstance(loaded, dict):
            return loaded
        raise ValueError(f"expected a mapping, got {text!r}")
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected name=value pairs, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
