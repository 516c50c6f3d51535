"""Does a GRPO step's gradient carry signal, or is it noise? Measured before training.

A policy-gradient estimate from one batch is g = s + n: the expected gradient s (what the reward
asks of the model) plus sampling noise n, whose E|n|^2 shrinks only as 1/rows. With K independent
batches from the same start weights, E[g_j . g_k] = |s|^2 for j != k and E|g_k|^2 = |s|^2 + E|n|^2,
so the **signal fraction**

    rho = mean_{j != k} g_j . g_k  /  mean_k |g_k|^2

is the share of one batch's squared gradient that is signal. rho near 0 means the update is a
random direction (Adam then moves every weight by about the learning rate anyway, so the model
drifts); the batch with as much signal as noise holds rows * (1 - rho) / rho rollouts.

The same batches with their advantages shuffled across the rows that count give the null:
shuffled advantages no longer depend on what was sampled, so their expected gradient is exactly 0
and their rho says how far from 0 this estimate wanders by chance. The gradient is split into its
chain-token and image-token parts (the two stages of GoT-R1), each with its own rho, and rho is
also taken per parameter tensor: Adam steps each weight on its own gradient history, so signal
confined to a few tensors can train while the whole vector's rho is ~0 (the largest per-tensor rho
of the shuffled gradients says what chance gives the best of many tensors).

Batch k is what GRPO step k would train on (the run's prompt order and sampling seeds), taken at
the start weights, with the run's reward, advantages, token weights and loss normaliser
(`gotr1.train.grpo.score_rollouts`), in the update's micro-batches of rows. Memory: K gradient
vectors per part are kept on the CPU (trainable parameters x 4 bytes x K x 4): meant for small
models or LoRA adapters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from gotr1.train.config import ConfigError, GRPOConfig
from gotr1.train.data import PromptSource
from gotr1.train.grpo import build_policy, grpo_loss, make_reward, rollout_sampling, score_rollouts
from gotr1.train.runtime import TrainingModule, make_accelerator, step_seed

PARTS = ("chain", "image", "all")


@dataclass
class SignalFraction:
    """rho of K gradient estimates (see the module docstring), with its jackknife error."""

    rho: float
    standard_error: float  # jackknife over the batches
    mean_norm: float  # mean |g_k|

    @classmethod
    def from_gram(cls, gram: np.ndarray) -> SignalFraction:
        """From the K x K matrix of dot products between the estimates (K >= 2; the standard
        error, a jackknife over batches, needs K >= 3 and is NaN below)."""
        k = gram.shape[0]
        if k < 2:
            raise ValueError("a signal fraction needs at least two gradient estimates")
        diagonal = np.diag(gram)
        if float(np.mean(diagonal)) <= 0:
            return cls(float("nan"), float("nan"), 0.0)
        error = float("nan")
        if k >= 3:
            leave_one_out = np.array(
                [_rho(np.delete(np.delete(gram, i, 0), i, 1)) for i in range(k)]
            )
            error = float(
                np.sqrt((k - 1) / k * np.sum((leave_one_out - leave_one_out.mean()) ** 2))
            )
        return cls(_rho(gram), error, float(np.mean(np.sqrt(diagonal))))


def _rho(gram: np.ndarray) -> float:
    """Mean off-diagonal entry over mean diagonal entry."""
    k = gram.shape[0]
    off_diagonal = (gram.sum() - np.trace(gram)) / (k * (k - 1))
    return float(off_diagonal / np.mean(np.diag(gram)))


@dataclass
class TensorSignal:
    """rho of one parameter tensor's part of the whole gradient (chain + image tokens)."""

    name: str
    numel: int
    rho: float
    standard_error: float


@dataclass
class SignalReport:
    """`measure_gradient_signal`'s result: rho of the real and the shuffled-advantage gradients
    per part, and what the batches held."""

    batches: int
    rows_per_batch: int
    rows_in_loss: float  # mean per batch: rows with a non-zero advantage and weight
    reward_mean: float
    reward_std_in_groups: float
    real: dict[str, SignalFraction]
    shuffled: dict[str, SignalFraction]
    seconds: float
    # Adam moves each weight on its own gradient history, so signal confined to a few tensors
    # (a head's bias, say) can train while the whole vector's rho is ~0: the tensors with the
    # largest rho, and the same ranking of the shuffled gradients (what chance gives the best).
    top_tensors: list[TensorSignal] = field(default_factory=list)
    top_shuffled_tensors: list[TensorSignal] = field(default_factory=list)

    def rows_for_equal_signal(self, part: str = "all", sigmas: float = 0.0) -> float:
        """Rollouts per step whose gradient holds as much signal as noise, from rho + `sigmas`
        standard errors (sigmas = 2: a lower bound when rho is indistinguishable from 0; inf
        when that rho is not positive)."""
        rho = self.real[part].rho + sigmas * self.real[part].standard_error
        if not rho > 0:
            return float("inf")
        return self.rows_per_batch * max(0.0, 1 - rho) / rho

    def distinguishable(self, part: str = "all", sigmas: float = 2.0) -> bool:
        """Whether the real rho exceeds the shuffled one by `sigmas` combined standard errors."""
        real, null = self.real[part], self.shuffled[part]
        error = float(np.hypot(real.standard_error, null.standard_error))
        return bool(real.rho - null.rho > sigmas * error)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived numbers."""
        record = asdict(self)
        record["rows_for_equal_signal"] = {p: self.rows_for_equal_signal(p) for p in PARTS}
        record["rows_for_equal_signal_at_least"] = {
            p: self.rows_for_equal_signal(p, sigmas=2.0) for p in PARTS
        }
        record["distinguishable"] = {p: self.distinguishable(p) for p in PARTS}
        return record

    def table(self) -> str:
        """A plain-text table for the terminal."""
        lines = [
            f"{self.batches} batches of {self.rows_per_batch} rollouts "
            f"({self.rows_in_loss:.0f} in the loss on average); reward {self.reward_mean:.3f}, "
            f"within-group std {self.reward_std_in_groups:.3f}; {self.seconds:.0f} s",
            f"{'part':<6} {'rho':>8} {'± se':>7} {'shuffled':>9} {'± se':>7} {'signal?':>8} "
            f"{'rows for signal = noise':>24}",
        ]
        for part in PARTS:
            real, null = self.real[part], self.shuffled[part]
            signal = self.distinguishable(part)
            rows = self.rows_for_equal_signal(part, sigmas=0.0 if signal else 2.0)
            needed = "-" if rows == float("inf") else f"{'' if signal else '>= '}{rows:,.0f}"
            lines.append(
                f"{part:<6} {real.rho:>8.4f} {real.standard_error:>7.4f} {null.rho:>9.4f} "
                f"{null.standard_error:>7.4f} {'yes' if signal else 'no':>8} {needed:>24}"
            )
        if self.top_tensors:
            chance = self.top_shuffled_tensors[0] if self.top_shuffled_tensors else None
            lines.append(
                "tensors with the largest rho (chain + image)"
                + (f"; shuffled, the largest is {chance.rho:.3f} ({chance.name})" if chance else "")
            )
            lines += [
                f"  {t.rho:>7.3f} ± {t.standard_error:.3f}  {t.name} ({t.numel:,})"
                for t in self.top_tensors
            ]
        return "\n".join(lines)


def shuffled_advantages(
    advantages: torch.Tensor, row_in_loss: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """`advantages` permuted at random among the rows in the loss (others keep 0): the same
    values, no longer tied to what each row sampled."""
    rows = torch.nonzero(row_in_loss).flatten()
    shuffled = advantages.clone()
    shuffled[rows] = advantages[rows[torch.randperm(len(rows), generator=generator)]]
    return shuffled


def measure_gradient_signal(
    config: GRPOConfig,
    batches: int = 6,
    reward_fn: Callable[[Any], Any] | None = None,
    log: Callable[[str], None] | None = None,
    top: int = 8,
) -> SignalReport:
    """Gradients of the first `batches` GRPO steps of `config` at its start weights, and their
    signal fraction per part against the shuffled-advantage null. Single process."""

    if batches < 2:
        raise ConfigError(f"batches must be >= 2 (pairs of independent gradients), got {batches}")
    if config.chain_advantage != "total":
        raise ConfigError(
            "chain_advantage: grpo-signal measures the update of one advantage per sample "
            f"(total), got {config.chain_advantage!r}"
        )
    started = time.perf_counter()
    config.check_files()
    accelerator = make_accelerator(config)
    if accelerator.num_processes > 1:
        raise ConfigError("measure the gradient signal in one process (not under accelerate)")
    policy = build_policy(config)
    wrapped = accelerator.prepare(TrainingModule(policy.model))
    policy.model = accelerator.unwrap_model(wrapped).model
    reward_fn = reward_fn or make_reward(config)
    prompts = PromptSource(config.prompts, config.seed, config.world_split)
    sampling = rollout_sampling(config)
    named = [(n, p) for n, p in policy.model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    shuffle_generator = torch.Generator().manual_seed(step_seed(config.seed, -1))
    # Per batch, the chain and the image parts (their sum, the whole gradient, is derived).
    estimates: dict[str, list[torch.Tensor]] = {
        f"{kind}/{part}": [] for kind in ("real", "shuffled") for part in ("chain", "image")
    }
    rewards_seen, group_stds, in_loss = [], [], []
    for step in range(batches):
        generator = torch.Generator().manual_seed(step_seed(config.seed, step, 0))
        rollouts = policy.rollout(
            prompts.take(step * config.num_prompts, config.num_prompts),
            config.num_generations,
            sampling,
            generator,
        )
        rewards = reward_fn(rollouts)
        scored = score_rollouts(config, rollouts, rewards)
        rewards_seen.append(scored.all_total[scored.all_keep])
        group_stds.append(scored.group_std[torch.isfinite(scored.group_std)])
        row_in_loss = (scored.weights.sum(1) > 0) & (scored.advantages != 0)
        in_loss.append(float(row_in_loss.sum()))
        shuffled = shuffled_advantages(scored.advantages, row_in_loss, shuffle_generator)

        coefficients = {
            kind: token_coefficients(advantages, scored, config)
            for kind, advantages in (("real", scored.advantages), ("shuffled", shuffled))
        }
        sums = batch_gradients(wrapped, policy, rollouts, coefficients, config, params)
        for key, vectors in estimates.items():
            vectors.append(sums[key])
        if log:
            log(f"batch {step + 1}/{batches}: reward {float(rewards_seen[-1].mean()):.3f}")

    def gram_fraction(vectors: torch.Tensor) -> SignalFraction:
        return SignalFraction.from_gram((vectors @ vectors.T).numpy())

    def analyse(kind: str) -> tuple[dict[str, SignalFraction], list[TensorSignal]]:
        """rho of each part, and the tensors of the whole gradient ranked by rho."""
        chain, image = (torch.stack(estimates[f"{kind}/{p}"]).double() for p in ("chain", "image"))
        fractions = {"chain": gram_fraction(chain), "image": gram_fraction(image)}
        whole = chain + image
        del chain, image
        fractions["all"] = gram_fraction(whole)
        ranked, start = [], 0
        for name, param in named:
            found = gram_fraction(whole[:, start : start + param.numel()])
            start += param.numel()
            if np.isfinite(found.rho):
                ranked.append(TensorSignal(name, param.numel(), found.rho, found.standard_error))
        return fractions, sorted(ranked, key=lambda t: -t.rho)[:top]

    real, real_tensors = analyse("real")
    shuffled, shuffled_tensors = analyse("shuffled")
    all_rewards = torch.cat(rewards_seen)
    all_stds = torch.cat(group_stds)
    return SignalReport(
        batches=batches,
        rows_per_batch=config.num_prompts * config.num_generations,
        rows_in_loss=float(np.mean(in_loss)),
        reward_mean=float(all_rewards.mean()) if all_rewards.numel() else float("nan"),
        reward_std_in_groups=float(all_stds.mean()) if all_stds.numel() else float("nan"),
        real=real,
        shuffled=shuffled,
        seconds=time.perf_counter() - started,
        top_tensors=real_tensors,
        top_shuffled_tensors=shuffled_tensors,
    )


def batch_gradients(
    wrapped: torch.nn.Module,
    policy: Any,
    rollouts: Any,
    coefficients: dict[str, torch.Tensor],
    config: GRPOConfig,
    params: list[torch.nn.Parameter],
) -> dict[str, torch.Tensor]:
    """The loss gradient of a rollout batch for each coefficient table ("KIND" ->
    [rows, columns] from `token_coefficients`), split by stage: {"KIND/chain", "KIND/image",
    "KIND/all"} -> flat float32 CPU vectors. The surrogate is linear in the rows, so
    micro-batches of rows (as the update takes them) add up to the batch's gradient."""
    sums: dict[str, torch.Tensor] = {}
    wrapped.train()
    for rows in torch.arange(len(rollouts)).tensor_split(config.gradient_accumulation_steps):
        lp = wrapped(
            "logprobs",
            rollouts.select(rows),
            special=policy.special,
            image_logprob=config.image_logprob,
            micro_batch_size=config.logprob_micro_batch_size,
        )
        new = torch.cat([lp.chain, lp.image], dim=1)
        chain_columns = lp.chain.shape[1]
        for kind, table in coefficients.items():
            picked = table[rows].to(new.device)
            for part, columns in (
                ("chain", slice(0, chain_columns)),
                ("image", slice(chain_columns, None)),
            ):
                grad = _flat_grad((new[:, columns] * picked[:, columns]).sum(), params)
                key = f"{kind}/{part}"
                sums[key] = grad if key not in sums else sums[key] + grad
        del lp, new
    for kind in coefficients:
        sums[f"{kind}/all"] = sums[f"{kind}/chain"] + sums[f"{kind}/image"]
    return sums


def token_coefficients(
    advantages: torch.Tensor,
    scored: Any,
    config: GRPOConfig,
) -> torch.Tensor:
    """d loss / d log-prob of every token [rows, chain + image columns] at ratio 1 (the first
    update of a step, where it does not depend on the log-probs' values): the loss's gradient is
    the sum over tokens of this coefficient times the token's log-prob gradient."""

    point = torch.zeros(scored.weights.shape, dtype=torch.float32, requires_grad=True)
    loss, _ = grpo_loss(
        point,
        point.detach(),
        None,
        advantages.cpu(),
        scored.weights.cpu(),
        scored.normaliser,
        config.epsilon,
        config.clip_high,
        0.0,  # the KL term's gradient is 0 at the start weights (policy = reference)
        config.loss_type,
    )
    (coefficients,) = torch.autograd.grad(loss, point)
    return coefficients


def _flat_grad(surrogate: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The gradient of `surrogate` over `params` as one float32 CPU vector (0 where unused)."""
    grads = torch.autograd.grad(surrogate, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).detach().float().flatten().cpu()
            for g, p in zip(grads, params, strict=True)
        ]
    )
