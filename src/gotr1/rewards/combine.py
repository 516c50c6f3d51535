"""The dual-stage, multi-dimensional reward: four judge questions combined into one number.

``DualStageReward(judge, config)`` scores a batch (a Rollouts-like object with ``prompts``,
``chains`` and ``images``, or the three lists) and returns :class:`Rewards`: every component per
sample, the total, judge failures and timings. Each component is one batched judge call.

Combinations (``RewardConfig.combination``), over the components in ``RewardConfig.components``:

- ``product`` — the paper: ``R_PI · (R_sem + R_spa) · R_RI``. With a subset, the product runs over
  the factors that have an included component, and the planning factor is the sum of whichever of
  R_sem and R_spa are included: {sem, spa} gives ``R_sem + R_spa``; {pi, sem} gives
  ``R_PI · R_sem``; {ri} gives ``R_RI``. The extra reward (if any) is one more factor.
- ``sum`` — the plain sum of the included components (plus the extra reward).
- ``weighted_sum`` — ``Σ weights[c] · R_c`` over the included components (plus
  ``extra_weight · extra``).

Failures: a component the judge could not score (or an extra reward that raised or is not a
finite number) is NaN in :class:`Rewards`, flagged in ``failed`` with a reason in ``reasons``.
With ``on_failure="zero"`` the total treats it as 0; with ``on_failure="drop"`` the sample's total
is NaN and ``keep`` is False: the GRPO trainer leaves that sample out and normalises its group's
advantages over the samples kept (:meth:`Rewards.group_keep` gives the stricter whole-group
variant).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gotr1.chain import parse_chain, render_layout
from gotr1.errors import ConfigError, refuse_set
from gotr1.numeric import finite_message
from gotr1.rewards.protocol import COMPONENTS, Box, Judge, match_boxes

COMBINATIONS: tuple[str, ...] = ("product", "sum", "weighted_sum")
FAILURE_POLICIES: tuple[str, ...] = ("zero", "drop")
SPATIAL_INPUTS: tuple[str, ...] = ("canvas", "text")

ExtraReward = Callable[[Sequence[str], Sequence[Any]], Sequence[float]]
"""An extra reward hook: (prompts, images) -> one score per sample (e.g. an aesthetic model)."""


@dataclass
class RewardConfig:
    """How the four judge answers become one reward."""

    components: tuple[str, ...] = field(
        default=COMPONENTS,
        metadata={"help": "which of sem, spa, ri, pi to compute and combine (the paper: all four)"},
    )
    combination: str = field(
        default="product",
        metadata={"help": "product: R_PI*(R_sem+R_spa)*R_RI; sum; weighted_sum (see weights)"},
    )
    weights: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(COMPONENTS, 1.0),
        metadata={"help": "per-component weights for weighted_sum"},
    )
    spatial_input: str = field(
        default="canvas",
        metadata={"help": "R_spa judges the drawn layout (canvas) or the coordinates as text"},
    )
    layout_size: int = field(default=448, metadata={"help": "side of the drawn layout, pixels"})
    on_failure: str = field(
        default="zero",
        metadata={
            "help": "a judge failure scores 0 (zero) or removes the failed sample (drop: its "
            "total is NaN and keep False; GRPO normalises its group over the samples kept)"
        },
    )
    extra_weight: float = field(
        default=1.0, metadata={"help": "weight of the extra reward in sum and weighted_sum"}
    )

    def __post_init__(self) -> None:
        """Refuse a bad value with a one-line `ConfigError` that begins with the field's name
        (the one owner of these checks: GRPOConfig's reward fields are judged here too)."""
        message = finite_message(self)
        if message:
            raise ConfigError(message, message.split()[0])
        self.components = tuple(self.components)
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown or not self.components:
            raise ConfigError(
                f"components must be a non-empty subset of {COMPONENTS}, got {self.components}",
                "components",
            )
        if len(set(self.components)) != len(self.components):
            raise ConfigError(f"components {self.components} repeat a name", "components")
        if self.combination not in COMBINATIONS:
            raise ConfigError(
                f"combination must be one of {', '.join(COMBINATIONS)}; got {self.combination!r}",
                "combination",
            )
        if self.on_failure not in FAILURE_POLICIES:
            raise ConfigError(
                f"on_failure must be one of {', '.join(FAILURE_POLICIES)}; got {self.on_failure!r}",
                "on_failure",
            )
        if self.spatial_input not in SPATIAL_INPUTS:
            raise ConfigError(
                f"spatial_input must be one of {', '.join(SPATIAL_INPUTS)}; "
                f"got {self.spatial_input!r}",
                "spatial_input",
            )
        bad = [k for k in self.weights if k not in COMPONENTS]
        if bad:
            raise ConfigError(
                f"weights name unknown components {bad}; expected {COMPONENTS}", "weights"
            )
        if self.layout_size < 32:
            raise ConfigError(
                f"layout_size {self.layout_size} is too small to draw names", "layout_size"
            )
        self._refuse_ignored()

    def _refuse_ignored(self) -> None:
        """Refuse a setting the combination or components would not read (defaults pass)."""
        changed = {c: w for c, w in self.weights.items() if w != 1}  # a missing weight is 1
        if self.combination != "weighted_sum" and changed:
            raise ConfigError(
                f"weights are set ({changed}) but only weighted_sum reads them, not "
                f"{self.combination}, so they would be ignored; remove them",
                "weights",
            )
        uncomputed = sorted(c for c in changed if c not in self.components)
        if uncomputed:
            raise ConfigError(
                f"weights weigh {uncomputed}, which are not among the components "
                f"{self.components}, so they would be ignored; remove them",
                "weights",
            )
        if self.combination == "product":
            refuse_set(self, ("extra_weight",), "the product multiplies by the extra reward as is")
        if "spa" not in self.components:
            refuse_set(self, ("spatial_input", "layout_size"), "R_spa is not among the components")
        elif self.spatial_input == "text":
            refuse_set(self, ("layout_size",), "spatial_input text draws no layout")


@dataclass
class Rewards:
    """Every reward component per sample, the total, failures and timings for one batch.

    ``sem``, ``spa``, ``ri``, ``pi`` are float64 arrays of shape [B] in [0, 1], NaN where the
    component was not computed (not in the config) or the judge failed; ``extra`` likewise or None.
    ``total`` is NaN exactly where ``keep`` is False. ``failed[c]`` flags judge failures per
    component; ``timings`` holds seconds per component (and ``layout_render``). When R_RI is
    computed, ``object_ious[i][j]`` is the IoU behind it for planned object j of sample i and
    ``grounded[i][j]`` the judge's candidate boxes for that object's name.
    """

    sem: np.ndarray
    spa: np.ndarray
    ri: np.ndarray
    pi: np.ndarray
    total: np.ndarray
    keep: np.ndarray
    failed: dict[str, np.ndarray]
    timings: dict[str, float]
    extra: np.ndarray | None = None
    reasons: dict[str, list[str | None]] = field(default_factory=dict)
    judge_stats: dict[str, float] = field(default_factory=dict)
    object_ious: list[list[float]] = field(default_factory=list)
    grounded: list[list[list[Box]]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.total.shape[0])

    def component(self, name: str) -> np.ndarray:
        """One component's per-sample scores by name (sem, spa, ri, pi, extra, total)."""
        if name == "extra":
            if self.extra is None:
                return np.full(len(self), np.nan)
            return self.extra
        if name not in (*COMPONENTS, "total"):
            raise KeyError(f"unknown reward component {name!r}")
        return getattr(self, name)

    @property
    def any_failed(self) -> np.ndarray:
        """[B] bool: at least one component failed for the sample."""
        flags = np.zeros(len(self), dtype=bool)
        for mask in self.failed.values():
            flags |= mask
        return flags

    @property
    def failure_counts(self) -> dict[str, int]:
        """Judge failures per component over the batch."""
        return {name: int(mask.sum()) for name, mask in self.failed.items()}

    def group_keep(self, group_ids: Any) -> np.ndarray:
        """[B] bool: rows whose whole group kept every sample (drop a group with any dropped row).

        The stricter alternative to ``keep``; the GRPO trainer uses ``keep`` (per sample)."""
        groups = np.asarray(group_ids.cpu() if hasattr(group_ids, "cpu") else group_ids)
        if groups.shape != self.keep.shape:
            raise ValueError(f"group_ids {groups.shape} do not match {self.keep.shape} rewards")
        bad_groups = np.unique(groups[~self.keep])
        return ~np.isin(groups, bad_groups)

    def tensor(self, name: str = "total", device: Any = None) -> Any:
        """A component as a float32 torch tensor (for advantages on the trainer's device)."""
        import torch

        return torch.as_tensor(self.component(name), dtype=torch.float32, device=device)

    def metrics(self, prefix: str = "rewards") -> dict[str, float]:
        """Batch means for logging: ``rewards/sem`` ... ``rewards/total``, failures, seconds."""
        out: dict[str, float] = {}
        for name in (*COMPONENTS, "extra", "total"):
            values = self.component(name)
            if np.isfinite(values).any():
                out[f"{prefix}/{name}"] = float(np.nanmean(values))
        for name, count in self.failure_counts.items():
            out[f"{prefix}/failures/{name}"] = float(count)
        out[f"{prefix}/dropped"] = float((~self.keep).sum())
        for name, seconds in self.timings.items():
            out[f"{prefix}/seconds/{name}"] = float(seconds)
        return out

    def sample(self, index: int) -> dict[str, Any]:
        """One sample's components, total and failures as plain JSON-ready values."""

        def value(array: np.ndarray | None) -> float | None:
            if array is None or not np.isfinite(array[index]):
                return None
            return float(array[index])

        row: dict[str, Any] = {name: value(self.component(name)) for name in COMPONENTS}
        if self.extra is not None:
            row["extra"] = value(self.extra)
        row["total"] = value(self.total)
        row["keep"] = bool(self.keep[index])
        row["failed"] = [name for name, mask in self.failed.items() if mask[index]]
        reasons = {
            name: texts[index] for name, texts in self.reasons.items() if texts and texts[index]
        }
        if reasons:
            row["failure_reasons"] = reasons
        if self.object_ious:
            row["object_ious"] = [round(v, 6) for v in self.object_ious[index]]
            row["grounded"] = [[list(b) for b in boxes] for boxes in self.grounded[index]]
        return row


def combine(
    components: dict[str, np.ndarray],
    config: RewardConfig,
    extra: np.ndarray | None = None,
) -> np.ndarray:
    """The total reward from per-sample components (no NaN inside) by the configured rule."""
    included = [c for c in COMPONENTS if c in config.components]
    size = len(next(iter(components.values()))) if components else len(extra)  # type: ignore[arg-type]
    if config.combination == "product":
        total = np.ones(size)
        if "pi" in included:
            total = total * components["pi"]
        planning = [c for c in ("sem", "spa") if c in included]
        if planning:
            total = total * sum(components[c] for c in planning)
        if "ri" in included:
            total = total * components["ri"]
        if extra is not None:
            total = total * extra
        return total
    if config.combination == "sum":
        total = sum((components[c] for c in included), np.zeros(size))
        if extra is not None:
            total = total + config.extra_weight * extra
        return total
    total = sum((config.weights.get(c, 1.0) * components[c] for c in included), np.zeros(size))
    if extra is not None:
        total = total + config.extra_weight * extra
    return total


def extra_scores(
    hook: ExtraReward, prompts: list[str], images: list[Any]
) -> tuple[np.ndarray, list[str | None]]:
    """Call an extra reward hook: its score per sample (NaN where it failed) and the reasons.

    An exception from the hook fails every sample of the batch; a value that is not a finite
    number (None, NaN, text) fails its sample. Both are then handled by the failure policy like a
    judge failure. A hook that returns a wrong number of scores is a bug in the hook, not a
    failure: that raises ValueError.
    """
    size = len(prompts)
    try:
        raw = hook(prompts, images)
    except Exception as error:  # noqa: BLE001 - a reward hook must never crash the trainer
        reason = f"extra reward raised {type(error).__name__}: {error}"
        return np.full(size, np.nan), [reason] * size
    try:
        extra = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):  # some values are not numbers: those samples fail
        extra = np.array([_number(v) for v in raw], dtype=np.float64)
    if extra.shape != (size,):
        raise ValueError(f"extra reward returned {extra.size} scores for {size} samples")
    bad = ~np.isfinite(extra)
    return extra, ["extra reward is not a finite number" if b else None for b in bad]


def ask_questions(judge: Any, asks: Sequence[Callable[[], None]]) -> None:
    """Run the judge questions of one batch (each a callable that stores its answers).

    A judge that sets ``concurrent_questions`` (the HTTP judge: its requests share one pool of
    ``max_concurrency`` workers) is asked all of them at once, so a server that hangs costs one
    wait per batch rather than one per question; others (the world judge, a local model) are
    asked one after another. A judge with ``batch_deadline()`` (a context manager) gives the whole
    batch one deadline. The answers are the same either way; the first exception is raised.
    """
    scope = getattr(judge, "batch_deadline", None)
    with scope() if callable(scope) else contextlib.nullcontext():
        if len(asks) < 2 or not getattr(judge, "concurrent_questions", False):
            for ask in asks:
                ask()
            return
        with ThreadPoolExecutor(len(asks), thread_name_prefix="gotr1-reward") as pool:
            for future in [pool.submit(ask) for ask in asks]:
                future.result()


def _number(value: Any) -> float:
    """A float, or NaN for anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _as_chain(chain: Any) -> Any:
    """A parsed chain from a Chain-like object or chain text."""
    if isinstance(chain, str):
        return parse_chain(chain)
    return chain


class DualStageReward:
    """GoT-R1's reward: judge the chain (R_sem, R_spa) and the image (R_RI, R_PI), then combine."""

    def __init__(
        self,
        judge: Judge,
        config: RewardConfig | None = None,
        extra_reward: ExtraReward | None = None,
    ) -> None:
        """Wrap a judge (world, Qwen local, OpenAI HTTP) with a combination config and a hook."""
        self.judge = judge
        self.config = config or RewardConfig()
        self.extra_reward = extra_reward

    def __repr__(self) -> str:
        return f"DualStageReward(judge={self.judge!r}, config={self.config!r})"

    def __call__(self, rollouts: Any) -> Rewards:
        """Score a Rollouts-like object (anything with ``prompts``, ``chains``, ``images``)."""
        for attribute in ("prompts", "chains", "images"):
            if not hasattr(rollouts, attribute):
                raise TypeError(f"{type(rollouts).__name__} has no {attribute!r} to score")
        return self.score(rollouts.prompts, rollouts.chains, rollouts.images)

    def score(
        self, prompts: Sequence[str], chains: Sequence[Any], images: Sequence[Any]
    ) -> Rewards:
        """Score a batch: prompts, chains (Chain objects or chain text) and generated images."""
        prompts = [str(p) for p in prompts]
        chains = [_as_chain(c) for c in chains]
        images = list(images)
        size = len(prompts)
        if not (len(chains) == len(images) == size):
            raise ValueError(f"{size} prompts, {len(chains)} chains and {len(images)} images")
        config = self.config
        values = {c: np.full(size, np.nan) for c in COMPONENTS}
        failed = {c: np.zeros(size, dtype=bool) for c in config.components}
        reasons: dict[str, list[str | None]] = {}
        timings: dict[str, float] = {}

        grounding: dict[str, Any] = {"object_ious": [], "candidates": []}

        def ask_sem() -> None:
            start = time.perf_counter()
            result = self.judge.semantic(prompts, chains)
            timings["sem"] = time.perf_counter() - start
            values["sem"], failed["sem"], reasons["sem"] = (
                result.scores,
                result.failed,
                result.reasons,
            )

        def ask_spa() -> None:
            layout_images = None
            if config.spatial_input == "canvas" and getattr(
                self.judge, "reads_layout_images", True
            ):
                start = time.perf_counter()
                layout_images = [render_layout(c, config.layout_size) for c in chains]
                timings["layout_render"] = time.perf_counter() - start
            start = time.perf_counter()
            result = self.judge.layout(prompts, chains, layout_images)
            timings["spa"] = time.perf_counter() - start
            values["spa"], failed["spa"], reasons["spa"] = (
                result.scores,
                result.failed,
                result.reasons,
            )

        def ask_ri() -> None:
            names = [[o.name for o in c.objects] for c in chains]
            start = time.perf_counter()
            grounded = self.judge.ground(images, names)
            timings["ri"] = time.perf_counter() - start
            object_ious = [
                match_boxes(names[i], [o.box for o in chains[i].objects], grounded.candidates[i])
                for i in range(size)
            ]
            ri = np.array([float(np.mean(ious)) if ious else 0.0 for ious in object_ious])
            ri[grounded.failed] = np.nan
            grounding["object_ious"], grounding["candidates"] = object_ious, grounded.candidates
            values["ri"], failed["ri"], reasons["ri"] = ri, grounded.failed, grounded.reasons

        def ask_pi() -> None:
            start = time.perf_counter()
            result = self.judge.image(prompts, images)
            timings["pi"] = time.perf_counter() - start
            values["pi"], failed["pi"], reasons["pi"] = result.scores, result.failed, result.reasons

        asks = {"sem": ask_sem, "spa": ask_spa, "ri": ask_ri, "pi": ask_pi}
        ask_questions(self.judge, [asks[c] for c in COMPONENTS if c in config.components])
        for mapping in (reasons, timings):  # the key order of questions asked one by one
            for key in ("sem", "layout_render", "spa", "ri", "pi"):
                if key in mapping:
                    mapping[key] = mapping.pop(key)
        object_ious: list[list[float]] = grounding["object_ious"]
        candidates: list[list[list[Box]]] = grounding["candidates"]

        extra = None
        if self.extra_reward is not None:
            start = time.perf_counter()
            extra, reasons["extra"] = extra_scores(self.extra_reward, prompts, images)
            timings["extra"] = time.perf_counter() - start
            failed["extra"] = ~np.isfinite(extra)

        any_failed = np.zeros(size, dtype=bool)
        for mask in failed.values():
            any_failed |= mask
        filled = {c: np.nan_to_num(values[c], nan=0.0) for c in config.components}
        total = combine(filled, config, None if extra is None else np.nan_to_num(extra, nan=0.0))
        keep = np.ones(size, dtype=bool)
        if config.on_failure == "drop":
            keep = ~any_failed
            total = np.where(keep, total, np.nan)
        stats = dict(getattr(self.judge, "stats", {}) or {})
        return Rewards(
            sem=values["sem"],
            spa=values["spa"],
            ri=values["ri"],
            pi=values["pi"],
            total=total,
            keep=keep,
            failed=failed,
            timings=timings,
            extra=extra,
            reasons=reasons,
            judge_stats={k: float(v) for k, v in stats.items() if isinstance(v, int | float)},
            object_ious=object_ious,
            grounded=candidates,
        )
