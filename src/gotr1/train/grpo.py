"""GRPO for GoT-R1: sample chains and images, judge them, push up what the judge liked.

One step, the arrows of DESIGN.md:

    prompts ─▶ policy.rollout ─▶ Rollouts ─▶ DualStageReward ─▶ Rewards
            ─▶ group_advantages ─▶ (reference / old log-probs) ─▶ grpo_loss ─▶ optimizer step

The math is in two short functions, `group_advantages` and `grpo_loss`; `train_grpo` only moves
data between them. Every token of a sample shares its total reward's advantage, as in the paper,
or (``chain_advantage: plan``) the chain tokens take the plan's own (see `score_rollouts`).
Under ``accelerate launch`` every process gets whole prompt groups
(``num_prompts / num_processes`` prompts, all N samples of each), so advantages are always
normalised over complete groups without communication; batch-level numbers (the batch std of
``scale_rewards="batch"``, token counts of the ``dapo`` / ``grpo`` normalisers, metrics) are
gathered across processes.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gotr1.policy.io import load_pretrained
from gotr1.policy.lora import apply_lora, is_lora, load_adapter
from gotr1.policy.policy import Policy
from gotr1.policy.rollout import SamplingConfig
from gotr1.rewards import (
    DualStageReward,
    OpenAIJudge,
    OpenAIJudgeConfig,
    QwenLocalConfig,
    QwenLocalJudge,
    WorldJudge,
)
from gotr1.rewards.clean_image import CleanImageReward
from gotr1.rewards.hps import HPSReward
from gotr1.train import checkpoint as ckpt
from gotr1.train.config import ConfigError, GRPOConfig, save_config
from gotr1.train.data import PromptSource
from gotr1.train.memory import PeakMemory, limit_heap_retention_for
from gotr1.train.runlog import RunLog, dump_samples, progress_bar
from gotr1.train.runtime import (
    TrainingModule,
    clip_gradients,
    enable_gradient_checkpointing,
    freeze_modules,
    gathered_parameters,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    save_policy,
    step_seed,
    uses_accelerate_state,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

    from gotr1.policy.policy import Policy
    from gotr1.policy.rollout import Rollouts, SamplingConfig
    from gotr1.rewards import DualStageReward
    from gotr1.rewards.combine import Rewards
    from gotr1.train.data import PromptSource

ZERO_STD = 1e-6
"""A group whose reward std is below this has no learning signal: its advantages are exactly 0."""


# ----------------------------------------------------------------------------------------------
# The math
# ----------------------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    scale_rewards: str = "group",
    batch_std: float | torch.Tensor | None = None,
    eps: float = 1e-4,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A_i = r_i - mean(r of i's group), divided by the group's std ("group"), by `batch_std`
    ("batch") or by nothing ("none"). Every group must be complete in `rewards`.

    `keep` [B] bool (default: every row) says which rows count: a group's mean and std are over
    its kept rows only (a dropped row's reward, NaN or not, is never read), and a row that is not
    kept gets an advantage of 0. A group with fewer than two kept rows has no std (NaN) and gives
    every row 0.

    Returns (advantages [B], zero_std [B] bool — the row's group has no learning signal: all-equal
    kept rewards, or fewer than two kept rows —, group_std [G], NaN where fewer than two rows were
    kept). Rows without signal get an advantage of exactly 0 (never NaN).
    """
    rewards = rewards.float()
    keep = torch.ones_like(rewards, dtype=torch.bool) if keep is None else keep.bool()
    weight = keep.float()
    kept = torch.where(keep, rewards, torch.zeros_like(rewards))
    groups = int(group_ids.max()) + 1
    count = torch.zeros(groups, device=rewards.device).index_add_(0, group_ids, weight)
    mean = torch.zeros(groups, device=rewards.device).index_add_(0, group_ids, kept)
    mean = mean / count.clamp(min=1)
    centred = (kept - mean[group_ids]) * weight
    variance = torch.zeros(groups, device=rewards.device).index_add_(0, group_ids, centred**2)
    group_std = (variance / (count - 1).clamp(min=1)).sqrt()  # unbiased, as torch.std
    group_std = torch.where(count >= 2, group_std, torch.full_like(group_std, float("nan")))
    if scale_rewards == "group":
        advantages = centred / (group_std[group_ids] + eps)
    elif scale_rewards == "batch":
        if batch_std is None:
            raise ValueError('scale_rewards="batch" needs batch_std')
        advantages = centred / (torch.as_tensor(batch_std, dtype=torch.float32) + eps)
    elif scale_rewards == "none":
        advantages = centred
    else:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}")
    zero_std = ~(group_std[group_ids] >= ZERO_STD)  # NaN (fewer than two kept) counts as none
    return advantages.masked_fill(zero_std | ~keep, 0.0), zero_std, group_std


def grpo_loss(
    new: torch.Tensor,
    old: torch.Tensor,
    ref: torch.Tensor | None,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    normaliser: float,
    epsilon: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    loss_type: str = "grpo",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped GRPO objective (+ beta * KL) of some rows, as their share of the batch loss.

    new / old / ref: [B, T] per-token log-probs (chain tokens, then image tokens) under the
    current, the sampling-time and the reference policy. advantages: [B] (one per row) or [B, T]
    (one per token: stage-wise credit, see `ScoredRollouts.token_advantages`). weights: [B, T], 0 on
    padding and on rows left out of the loss, otherwise the token's chain or image weight.
    normaliser: the batch's divisor for `loss_type` (see `loss_normaliser`).
    Returns (loss, sums for metrics).
    """
    ratio = torch.exp(new - old)  # pi_theta / pi_old per token (1 when old = new.detach())
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    per_token = -torch.min(ratio * adv, clipped * adv)  # minimise the negative surrogate
    kl = torch.zeros_like(per_token)
    if beta > 0:
        log_ref_ratio = ref - new
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # k3 estimator of KL(pi_theta || pi_ref)
        per_token = per_token + beta * kl

    if loss_type == "grpo":  # each sequence's token mean, then summed over sequences
        per_row = (per_token * weights).sum(1) / weights.sum(1).clamp(min=1e-8)
        loss = per_row.sum() / normaliser
    else:  # bnpo, dapo: over tokens; dr_grpo: over rows * max length (normaliser says which)
        loss = (per_token * weights).sum() / normaliser

    with torch.no_grad():
        active = (weights > 0).float()
        low = (ratio < 1 - epsilon) & (adv < 0)
        high = (ratio > 1 + epsilon_high) & (adv > 0)
        stats = {
            "tokens": active.sum(),
            "kl": (kl * active).sum(),
            "clip_low": (low.float() * active).sum(),
            "clip_high": (high.float() * active).sum(),
        }
    return loss, stats


def loss_normaliser(
    loss_type: str,
    weights: torch.Tensor,
    max_length: int,
    global_sum: Any = None,
    num_processes: int = 1,
) -> float:
    """The divisor of `grpo_loss` for this process's whole batch `weights` [B, T].

    grpo: rows in the loss; bnpo: this process's weighted tokens; dapo: weighted tokens of all
    processes; dr_grpo: rows * max_length (a constant). Across processes (`global_sum` sums a
    number over them) grpo and dapo divide the global count by `num_processes`, because DDP
    averages the processes' gradients: the result is the mean over the whole batch.
    """
    if loss_type == "grpo":
        count = float((weights.sum(1) > 0).sum())
    elif loss_type in ("bnpo", "dapo"):
        count = float(weights.sum())
    elif loss_type == "dr_grpo":
        return float(weights.shape[0] * max_length)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    if loss_type in ("grpo", "dapo") and global_sum is not None:
        count = global_sum(count) / num_processes
    return count if count > 0 else 1.0  # nothing in the loss anywhere: any divisor gives 0


# ----------------------------------------------------------------------------------------------
# Building the pieces
# ----------------------------------------------------------------------------------------------


def make_reward(config: GRPOConfig) -> DualStageReward:
    """The dual-stage reward with the configured judge and combination."""
    judge = make_judge(config)
    extra = None
    if config.world_clean_image:
        extra = CleanImageReward(judge)
    if "hps" in config.reward_components:
        extra = HPSReward(str(config.hps_model), device=config.hps_device)
    return DualStageReward(judge, config.reward_config(), extra_reward=extra)


def make_judge(config: GRPOConfig) -> Any:
    """The configured judge: the world's exact judge, local Qwen2.5-VL, or an HTTP server."""
    if config.judge == "world":
        return WorldJudge()
    if config.judge == "qwen":
        return QwenLocalJudge(
            QwenLocalConfig(
                model=config.judge_model or QwenLocalConfig.model, device=config.judge_device
            )
        )

    return OpenAIJudge(
        OpenAIJudgeConfig(
            base_url=config.judge_base_url,
            model=config.judge_model or OpenAIJudgeConfig.model,
            api_key_env=config.judge_api_key_env,
        )
    )


def rollout_sampling(config: GRPOConfig) -> SamplingConfig:
    """The `SamplingConfig` of the run's rollouts (GRPOConfig.sampling, which checks it)."""
    return config.sampling()


def build_policy(config: GRPOConfig, resume_from: Path | None = None) -> Policy:
    """The policy to train: LoRA adapters on the start model (reference = adapters off), or the
    full model with a frozen reference copy (only when beta > 0). Resumes the trained weights
    from ``resume_from/model``."""

    model, processor = load_pretrained(config.model, dtype=config.dtype)
    reference = None
    if config.use_lora:
        torch.manual_seed(config.seed)
        if resume_from is not None:
            model = load_adapter(model, resume_from / "model", is_trainable=True)
        else:
            model = apply_lora(
                model,
                config.lora_r,
                config.lora_alpha,
                config.lora_dropout,
                config.lora_target_modules,
                config.lora_train_image_head,
            )
    else:
        if config.beta > 0:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        if resume_from is not None:
            model, _ = load_pretrained(resume_from / "model", dtype=config.dtype)
        freeze_modules(model, config.freeze)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return Policy(model, processor, reference_model=reference)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def train_grpo(
    config: GRPOConfig,
    resume: bool | str | Path = False,
    reward_fn: Any = None,
) -> Path:
    """Run GRPO as configured; returns the folder of the final policy (``<output_dir>/final``:
    an HF folder, or a PEFT adapter folder under LoRA).

    `resume` = True continues from the newest checkpoint in output_dir (or give a checkpoint
    folder). `reward_fn` replaces the configured reward (anything called with Rollouts that
    returns `Rewards`). Works under ``accelerate launch``.
    """

    config.check_files()
    accelerator = make_accelerator(config)
    processes = accelerator.num_processes
    if config.num_prompts % processes:
        raise ConfigError(
            f"num_prompts ({config.num_prompts}) must be a multiple of the number of processes "
            f"({processes}): every process holds whole groups"
        )
    rows = config.num_prompts // processes * config.num_generations
    if config.gradient_accumulation_steps > rows:
        raise ConfigError(
            f"gradient_accumulation_steps ({config.gradient_accumulation_steps}) exceeds the "
            f"{rows} rollout rows each process holds per step"
        )
    out = Path(config.output_dir)
    resume_from = ckpt.prepare_output_dir(accelerator, config, resume)

    policy = build_policy(config, resume_from)
    # large CPU rollouts otherwise leave GiBs of freed heap resident
    limit_heap_retention_for(policy.model, accelerator.device.type)
    optimizer = make_optimizer(policy.model, config)
    scheduler = make_scheduler(optimizer, config, config.max_steps * config.num_iterations)
    wrapped, optimizer = accelerator.prepare(TrainingModule(policy.model), optimizer)
    policy.model = accelerator.unwrap_model(wrapped).model  # the same module, for rollouts
    if policy.reference_model is not None:
        policy.reference_model.to(accelerator.device)

    start_step = 0
    if resume_from is not None:
        start_step = int(
            ckpt.load_checkpoint(
                accelerator, resume_from, optimizer, scheduler, uses_accelerate_state(accelerator)
            )["step"]
        )
    if accelerator.is_main_process:
        save_config(config, out / "config.yaml")

    reward_fn = reward_fn or make_reward(config)
    prompts = PromptSource(config.prompts, config.seed, config.world_split)
    sampling = rollout_sampling(config)
    log = RunLog(
        out, accelerator, config.to_dict(), start_step if resume_from else None, "gotr1-grpo"
    )
    bar = progress_bar(accelerator, config.max_steps, start_step, config.progress, "grpo")

    def save(step: int, metrics: dict[str, float]) -> None:
        ckpt.save_checkpoint(
            accelerator,
            out,
            step,
            lambda folder: save_policy(accelerator, wrapped, policy, folder),
            optimizer,
            scheduler,
            {"data_position": step * config.num_prompts, "metrics": metrics, "kind": "grpo"},
            config.save_total_limit,
            uses_accelerate_state(accelerator),
        )

    metrics: dict[str, float] = {}
    for step in range(start_step, config.max_steps):
        metrics, rollouts, rewards, scored = grpo_step(
            config,
            accelerator,
            wrapped,
            optimizer,
            scheduler,
            policy,
            reward_fn,
            prompts,
            sampling,
            step,
        )
        done = step + 1
        if config.sample_steps and (done % config.sample_steps == 0 or done == config.max_steps):
            _dump(accelerator, config, done, rollouts, rewards, scored)
        if done % config.logging_steps == 0 or done == config.max_steps:
            log.log(done, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", step_time=f"{metrics['step_time']:.1f}s")
        if done % config.save_steps == 0 and done != config.max_steps:
            save(done, metrics)
    bar.close()

    save(config.max_steps, metrics)
    final = out / "final"
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
    save_policy(accelerator, wrapped, policy, final)
    accelerator.wait_for_everyone()
    log.close()
    return final


@dataclass
class ScoredRollouts:
    """What the GRPO loss needs from one judged rollout batch (this process's rows)."""

    advantages: torch.Tensor  # [B] float32, 0 for rows without signal
    weights: torch.Tensor  # [B, chain + image tokens]: each token's weight in the loss
    normaliser: float  # the batch divisor of `loss_type`
    zero_std: torch.Tensor  # [B] bool: the row's group has no learning signal
    group_std: torch.Tensor  # [G], NaN where fewer than two rows were kept
    all_total: torch.Tensor  # [rows of all processes] rewards, NaN as 0
    all_keep: torch.Tensor  # [rows of all processes] bool: the judge scored the row
    chain_advantages: torch.Tensor | None = None  # [B]: the plan's own (chain_advantage "plan")

    def token_advantages(self, rows: torch.Tensor, chain_tokens: int) -> torch.Tensor:
        """The advantages of `rows` for the loss: [rows] when every token of a row shares one,
        [rows, chain + image tokens] when the chain tokens take the plan's advantage."""
        if self.chain_advantages is None:
            return self.advantages[rows]
        image_tokens = self.weights.shape[1] - chain_tokens
        chain = self.chain_advantages[rows, None].expand(-1, chain_tokens)
        image = self.advantages[rows, None].expand(-1, image_tokens)
        return torch.cat([chain, image], dim=1)


def score_rollouts(
    config: GRPOConfig,
    rollouts: Rollouts,
    rewards: Rewards,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    global_sum: Callable[[float], float] | None = None,
    processes: int = 1,
) -> ScoredRollouts:
    """Advantages and token weights of a judged batch, as configured.

    Advantages are over the kept rows of complete groups (all on this process); the batch std is
    over the kept rows of all processes (`gather` concatenates a tensor over them; default: this
    process only). A group left with fewer than two kept rows has no std (NaN) and stays out of
    the loss, like the dropped rows themselves. Weights: chain tokens (minus truncated chains, if
    asked, and always minus the <begin_of_image> forced at the cap), then the image tokens, times
    the row's weight. With ``chain_advantage: plan`` the
    chain tokens' advantages are the same computation over the plan's reward (R_sem + R_spa of
    the included ones).
    """
    gather = gather or (lambda values: values.cpu())
    group_ids = rollouts.group_ids.cpu()
    keep = torch.as_tensor(np.asarray(rewards.keep), dtype=torch.bool)
    all_keep = gather(keep)

    def advantages_of(reward: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(advantages, zero_std, group_std, the reward over all processes) of one reward."""
        values = torch.as_tensor(np.nan_to_num(reward, nan=0.0), dtype=torch.float32)
        everywhere = gather(values)
        kept = everywhere[all_keep]
        batch_std = kept.std() if kept.numel() > 1 else torch.tensor(0.0)
        found = group_advantages(values, group_ids, config.scale_rewards, batch_std, keep=keep)
        return (*found, everywhere)

    advantages, zero_std, group_std, all_total = advantages_of(rewards.total)
    chain_advantages = None
    if config.chain_advantage == "plan":
        included = [c for c in ("sem", "spa") if c in config.reward_components]
        plan = sum(np.nan_to_num(rewards.component(c), nan=0.0) for c in included)
        chain_advantages = advantages_of(plan)[0]
    row_weight = (keep & torch.isfinite(group_std)[group_ids]).float()
    if config.filter_zero_std_groups:
        row_weight = row_weight * (~zero_std).float()

    chain_weight = rollouts.chain_mask.cpu().float() * config.chain_token_weight
    truncated = rollouts.truncated.cpu()
    if config.mask_truncated_chains:
        chain_weight[truncated] = 0.0
    # A chain cut at the cap ends in a <begin_of_image> the sampler forced, not sampled: no
    # gradient through it (chains are right-padded, so it is the row's last real chain token).
    last = rollouts.chain_mask.cpu().sum(1).long() - 1
    forced = truncated.nonzero().flatten()
    chain_weight[forced, last[forced]] = 0.0
    image_weight = torch.full(rollouts.image_ids.shape, config.image_token_weight)
    weights = torch.cat([chain_weight, image_weight], dim=1) * row_weight[:, None]
    max_length = config.max_chain_tokens + rollouts.image_ids.shape[1]
    normaliser = loss_normaliser(config.loss_type, weights, max_length, global_sum, processes)
    return ScoredRollouts(
        advantages, weights, normaliser, zero_std, group_std, all_total, all_keep, chain_advantages
    )


@dataclass
class StepTimes:
    """Seconds each part of a GRPO step took on this process."""

    rollout: float = 0.0
    reward: float = 0.0
    logprobs: float = 0.0
    update: float = 0.0


@dataclass
class UpdateSums:
    """What the update adds up over this process's rows (the first iteration's), summed over
    processes by `step_metrics`; and the update's grad norm and learning rate."""

    sums: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "tokens",
                "kl",
                "clip_low",
                "clip_high",
                "entropy_chain",
                "entropy_chain_tokens",
                "entropy_image",
                "entropy_image_tokens",
                "logprob_gap",
                "logprob_gap_tokens",
            ),
            0.0,
        )
    )
    grad_norm: float = float("nan")
    learning_rate: float = 0.0


def grpo_step(
    config: GRPOConfig,
    accelerator: Accelerator,
    wrapped: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    policy: Policy,
    reward_fn: Callable[[Rollouts], Rewards],
    prompts: PromptSource,
    sampling: SamplingConfig,
    step: int,
) -> tuple[dict[str, float], Rollouts, Rewards, ScoredRollouts]:
    """One GRPO step on this process's whole groups; returns (metrics, rollouts, rewards, the
    scored batch: advantages and token weights). Metrics are over all processes."""

    started = time.perf_counter()
    times = StepTimes()
    memory = PeakMemory(accelerator.device)
    memory.reset()
    rank, processes = accelerator.process_index, accelerator.num_processes
    per_process = config.num_prompts // processes
    gather = process_gather(accelerator)

    def global_sum(value: float) -> float:
        return float(gather(torch.tensor([float(value)], dtype=torch.float64)).sum())

    # 1. Rollouts: this process's prompts, N samples each (no autograd graph is built).
    local_prompts = prompts.take(step * config.num_prompts + rank * per_process, per_process)
    generator = torch.Generator().manual_seed(step_seed(config.seed, step, rank))
    with gathered_parameters(accelerator, wrapped):
        rollouts = policy.rollout(local_prompts, config.num_generations, sampling, generator)
    times.rollout = time.perf_counter() - started
    rollout_peak = memory.peak_gib()
    memory.reset()

    # 2. Rewards. A judge failure under on_failure="drop" takes that sample (keep False) out.
    mark = time.perf_counter()
    rewards = reward_fn(rollouts)
    times.reward = time.perf_counter() - mark

    # 3-4. Advantages over the kept rows of complete groups, and which tokens count.
    scored = score_rollouts(config, rollouts, rewards, gather, global_sum, processes)

    # 5. Reference and old log-probs, without gradients.
    mark = time.perf_counter()
    old, ref = fixed_logprobs(config, accelerator, wrapped, policy, rollouts)
    times.logprobs = time.perf_counter() - mark

    # 6. num_iterations updates, each over gradient_accumulation_steps micro-batches of rows.
    mark = time.perf_counter()
    update = grpo_update(
        config, accelerator, wrapped, optimizer, scheduler, policy, rollouts, scored, old, ref
    )
    times.update = time.perf_counter() - mark

    # 7. Metrics over all processes.
    metrics = step_metrics(config, rollouts, rewards, scored, update, times, gather)
    peaks = gather(torch.tensor([[rollout_peak, memory.peak_gib()]], dtype=torch.float64))
    metrics["memory/rollout_peak_gib"], metrics["memory/update_peak_gib"] = peaks.amax(0).tolist()
    metrics["step_time"] = time.perf_counter() - started
    return metrics, rollouts, rewards, scored


def process_gather(accelerator: Accelerator) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that concatenates a tensor over all processes (on the CPU)."""
    if accelerator.num_processes == 1:
        return lambda values: values.cpu()
    return lambda values: accelerator.gather(values.to(accelerator.device)).cpu()


def fixed_logprobs(
    config: GRPOConfig,
    accelerator: Accelerator,
    wrapped: torch.nn.Module,
    policy: Policy,
    rollouts: Rollouts,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The old and reference log-probs of every token, [rows, chain + image tokens], without
    gradients: no reference pass when beta == 0, and old log-probs only when a rollout batch is
    reused (num_iterations > 1; otherwise old = new.detach(), ratio 1). None where not needed."""

    kwargs = dict(
        special=policy.special,
        image_logprob=config.image_logprob,
        micro_batch_size=config.logprob_micro_batch_size,
    )
    ref = old = None
    with torch.no_grad():
        if config.beta > 0:
            if is_lora(policy.model):
                lp = wrapped("reference", rollouts, **kwargs)
            else:  # full fine-tuning: the frozen copy, under the same autocast as the policy
                with accelerator.autocast():
                    lp = policy.reference_logprobs(
                        rollouts, config.image_logprob, config.logprob_micro_batch_size
                    )
            ref = torch.cat([lp.chain, lp.image], dim=1)
        if config.num_iterations > 1:
            lp = wrapped("logprobs", rollouts, **kwargs)
            old = torch.cat([lp.chain, lp.image], dim=1)
    return old, ref


def update_passes(rollouts: Rollouts, passes: int) -> list[torch.Tensor]:
    """The row indices of each of the update's `passes` micro-batches: rows ordered by chain
    length, then prompt length, and cut into near-equal parts, so a pass pads its rows to
    lengths like their own (the loss adds up over any partition of the rows: the same gradient
    as rows in sampling order, with less padding; benchmarks/length_groups.py)."""
    prompt = rollouts.prompt_mask.sum(dim=1).long().cpu()
    chain = rollouts.chain_mask.sum(dim=1).long().cpu()
    key = chain * (int(prompt.max()) + 1) + prompt if len(prompt) else chain
    order = torch.sort(key, stable=True).indices
    return list(order.tensor_split(passes))


def grpo_update(
    config: GRPOConfig,
    accelerator: Accelerator,
    wrapped: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    policy: Policy,
    rollouts: Rollouts,
    scored: ScoredRollouts,
    old: torch.Tensor | None,
    ref: torch.Tensor | None,
) -> UpdateSums:
    """`num_iterations` optimizer steps of `grpo_loss` over the scored rollouts, each in
    `gradient_accumulation_steps` micro-batches of rows; returns the first iteration's sums."""

    device = accelerator.device
    weights = scored.weights.to(device)
    chain_tokens = rollouts.chain_mask.shape[1]
    accumulation = config.gradient_accumulation_steps
    out = UpdateSums(learning_rate=scheduler.get_last_lr()[0])
    sums = out.sums
    wrapped.train()
    for iteration in range(config.num_iterations):
        for rows in update_passes(rollouts, accumulation):
            batch = rollouts.select(rows)
            with accelerator.accumulate(wrapped):
                lp = wrapped(
                    "logprobs",
                    batch,
                    special=policy.special,
                    image_logprob=config.image_logprob,
                    with_entropy=config.log_entropy and iteration == 0,
                )
                new = torch.cat([lp.chain, lp.image], dim=1)
                loss, stats = grpo_loss(
                    new,
                    new.detach() if old is None else old[rows],
                    None if ref is None else ref[rows],
                    scored.token_advantages(rows, chain_tokens).to(device),
                    weights[rows],
                    scored.normaliser,
                    config.epsilon,
                    config.clip_high,
                    config.beta,
                    config.loss_type,
                )
                accelerator.backward(loss * accumulation)  # accelerate divides by accumulation
                if accelerator.sync_gradients:
                    out.grad_norm = clip_gradients(accelerator, wrapped, config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            if iteration == 0:
                for key in ("tokens", "kl", "clip_low", "clip_high"):
                    sums[key] += float(stats[key])
                mask = batch.chain_mask.bool()
                sampled = torch.cat([batch.chain_logprobs[mask], batch.image_logprobs.flatten()])
                teacher_forced = torch.cat([lp.chain[mask], lp.image.flatten()]).detach().float()
                sums["logprob_gap"] += float(
                    (teacher_forced - sampled.to(teacher_forced)).abs().sum()
                )
                sums["logprob_gap_tokens"] += sampled.numel()
                if lp.chain_entropy is not None:
                    sums["entropy_chain"] += float(lp.chain_entropy.detach()[mask].sum())
                    sums["entropy_chain_tokens"] += float(mask.sum())
                    sums["entropy_image"] += float(lp.image_entropy.detach().sum())
                    sums["entropy_image_tokens"] += float(lp.image_entropy.numel())
        scheduler.step()
    return out


def step_metrics(
    config: GRPOConfig,
    rollouts: Rollouts,
    rewards: Rewards,
    scored: ScoredRollouts,
    update: UpdateSums,
    times: StepTimes,
    gather: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """A GRPO step's metrics over all processes, TRL's names where they exist."""
    local = {
        **update.sums,
        "judge_failures": float(sum(rewards.failure_counts.values())),
        "parsed_chains": float(sum(bool(c.objects) and not c.errors for c in rollouts.chains)),
    }
    totals = dict(
        zip(
            local,
            gather(torch.tensor([list(local.values())], dtype=torch.float64)).sum(0).tolist(),
            strict=True,
        )
    )
    lengths = gather(rollouts.chain_mask.sum(1).float().cpu())
    truncated = gather(rollouts.truncated.cpu().float())
    group_std = gather(scored.group_std)  # NaN for groups left with fewer than two kept rows
    scored_groups = torch.isfinite(group_std)
    scored_std = group_std[scored_groups]
    kept_total = scored.all_total[scored.all_keep]
    tokens = max(totals["tokens"], 1.0)

    def mean_or_nan(values: torch.Tensor) -> float:
        return float(values.mean()) if values.numel() else float("nan")

    metrics: dict[str, float] = {
        "reward": mean_or_nan(kept_total),
        "reward_std": mean_or_nan(scored_std),
        "frac_reward_zero_std": mean_or_nan((scored_std < ZERO_STD).float()),
        "completions/mean_length": float(lengths.mean()),
        "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": float(truncated.mean()),
        "clip_ratio/low_mean": totals["clip_low"] / tokens,
        "clip_ratio/high_mean": totals["clip_high"] / tokens,
        "clip_ratio/region_mean": (totals["clip_low"] + totals["clip_high"]) / tokens,
        "grad_norm": update.grad_norm,
        "learning_rate": update.learning_rate,
        "judge/failures": totals["judge_failures"],
        "judge/dropped_rows": float((~scored.all_keep).sum()),
        "judge/dropped_groups": float((~scored_groups).sum()),
        "chains/parse_rate": totals["parsed_chains"] / max(len(lengths), 1),
        "debug/logprob_gap": totals["logprob_gap"] / max(totals["logprob_gap_tokens"], 1.0),
        "time/rollout": times.rollout,
        "time/reward": times.reward,
        "time/logprobs": times.logprobs,
        "time/update": times.update,
    }
    extra = "hps" if "hps" in config.reward_components else "extra"  # the extra factor's name
    for name in ("sem", "spa", "ri", "pi", "extra"):
        values = gather(torch.as_tensor(rewards.component(name), dtype=torch.float32))
        if torch.isfinite(values).any():
            label = extra if name == "extra" else name
            metrics[f"rewards/{label}/mean"] = float(values[torch.isfinite(values)].mean())
    if config.beta > 0:
        metrics["kl"] = totals["kl"] / tokens
    chain_n, image_n = totals["entropy_chain_tokens"], totals["entropy_image_tokens"]
    if config.log_entropy and chain_n + image_n > 0:
        metrics["entropy"] = (totals["entropy_chain"] + totals["entropy_image"]) / (
            chain_n + image_n
        )
        metrics["entropy/chain"] = totals["entropy_chain"] / max(chain_n, 1.0)
        metrics["entropy/image"] = totals["entropy_image"] / max(image_n, 1.0)
    return metrics


def _dump(
    accelerator: Any,
    config: GRPOConfig,
    step: int,
    rollouts: Rollouts,
    rewards: Rewards,
    scored: ScoredRollouts,
) -> None:
    """Save the first `num_samples` rows of the main process's rollouts with their rewards and
    advantages (the chain tokens' own too, under ``chain_advantage: plan``)."""

    if not accelerator.is_main_process or not config.num_samples:
        return
    count = min(config.num_samples, len(rollouts))
    extra = [
        {
            **rewards.sample(i),
            "advantage": float(scored.advantages[i]),
            **(
                {}
                if scored.chain_advantages is None
                else {"chain_advantage": float(scored.chain_advantages[i])}
            ),
            "truncated": bool(rollouts.truncated[i]),
        }
        for i in range(count)
    ]
    dump_samples(
        config.output_dir,
        step,
        rollouts.prompts[:count],
        rollouts.chain_texts[:count],
        rollouts.images[:count],
        extra,
    )
