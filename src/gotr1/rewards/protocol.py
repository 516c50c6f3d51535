"""The judge protocol: four batched questions whose answers make up the dual-stage reward.

Every judge (the exact world judge, the Qwen2.5-VL judges) answers the same four questions, each
for a whole batch at once, every score in [0, 1]:

- ``semantic(prompts, chains)``: does the chain capture every object and attribute of the prompt,
  with no contradiction (R_sem, prompt → chain);
- ``layout(prompts, chains, layout_images)``: does the planned layout satisfy the prompt's spatial
  relations (R_spa, prompt → chain). ``layout_images[i]`` is ``render_layout(chains[i])``; when
  ``layout_images`` is ``None`` the judge reads the box coordinates as text instead (the paper's
  ablation);
- ``ground(images, names)``: where is each planned object in the generated image (for R_RI,
  chain → image). ``names[i]`` lists the chain's object names for ``images[i]``; the answer holds,
  for each name, the candidate boxes found (0–1000 grid of that image, possibly none). A judge
  that reports a single box per name returns lists of length 0 or 1. Candidates rather than one
  box let two planned objects with the same name claim two different detections (see
  :func:`match_boxes`);
- ``image(prompts, images)``: does the image match the prompt (R_PI, prompt → image).

A judge may set ``reads_layout_images = False`` (the world judge does: it reads the boxes that the
canvas would show); the reward then skips drawing layouts for it.

A question a judge could not answer for a sample (an unusable reply after a retry, a server that
never answered) is a *failure*: the score is NaN and ``failed[i]`` is True. What a failure costs
(score 0, or dropping the sample) is the reward's policy, not the judge's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gotr1.chain import box_iou as chain_box_iou

Box = tuple[int, int, int, int]
"""(x1, y1, x2, y2) on the 0–1000 grid of an image."""

COMPONENTS: tuple[str, ...] = ("sem", "spa", "ri", "pi")
"""The reward components, in the paper's order: R_sem, R_spa, R_RI, R_PI."""


@dataclass
class JudgeScores:
    """A batch of scores in [0, 1] from one judge question; NaN where the judge failed."""

    scores: np.ndarray
    failed: np.ndarray
    reasons: list[str | None] = field(default_factory=list)
    retried: int = 0

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.failed = np.asarray(self.failed, dtype=bool)
        if self.scores.shape != self.failed.shape or self.scores.ndim != 1:
            raise ValueError(
                f"scores {self.scores.shape} and failed {self.failed.shape} must be equal 1-d shapes"
            )
        if not self.reasons:
            self.reasons = [None] * len(self.scores)

    @classmethod
    def from_lists(
        cls, scores: Sequence[float | None], reasons: Sequence[str | None] | None = None
    ) -> JudgeScores:
        """Build from per-sample scores where ``None`` marks a failure."""
        values = np.array([np.nan if s is None else float(s) for s in scores], dtype=np.float64)
        failed = np.array([s is None for s in scores], dtype=bool)
        return cls(values, failed, list(reasons) if reasons is not None else [], 0)

    @property
    def num_failed(self) -> int:
        """How many samples the judge could not score."""
        return int(self.failed.sum())


@dataclass
class GroundResult:
    """Candidate boxes for every planned object name of every image; failures per image."""

    candidates: list[list[list[Box]]]
    failed: np.ndarray
    reasons: list[str | None] = field(default_factory=list)
    retried: int = 0

    def __post_init__(self) -> None:
        self.failed = np.asarray(self.failed, dtype=bool)
        if len(self.candidates) != len(self.failed):
            raise ValueError(f"{len(self.candidates)} candidate lists for {len(self.failed)} flags")
        if not self.reasons:
            self.reasons = [None] * len(self.candidates)

    @property
    def num_failed(self) -> int:
        """How many images had at least one name the judge could not ground."""
        return int(self.failed.sum())


@runtime_checkable
class Judge(Protocol):
    """The four batched questions of the dual-stage reward (see the module docstring)."""

    def semantic(self, prompts: Sequence[str], chains: Sequence[Any]) -> JudgeScores:
        """R_sem: does each chain capture every object and attribute of its prompt."""
        ...

    def layout(
        self, prompts: Sequence[str], chains: Sequence[Any], layout_images: Sequence[Any] | None
    ) -> JudgeScores:
        """R_spa: does each planned layout satisfy its prompt's spatial relations."""
        ...

    def ground(self, images: Sequence[Any], names: Sequence[Sequence[str]]) -> GroundResult:
        """Candidate boxes (0–1000 grid) for each planned object name in each image."""
        ...

    def image(self, prompts: Sequence[str], images: Sequence[Any]) -> JudgeScores:
        """R_PI: does each image match its prompt."""
        ...


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (delegates to gotr1.chain)."""
    return chain_box_iou(a, b)


def match_boxes(
    names: Sequence[str], planned: Sequence[Box], candidates: Sequence[Sequence[Box]]
) -> list[float]:
    """IoU of each planned object with the grounded box assigned to it (0 when none).

    Objects that share a name share one pool of candidate boxes (the judge is asked once per
    distinct name, and ``candidates[j]`` of every object with that name is searched together);
    each candidate is given to at most one object, greedily by descending IoU, so two planned
    "red circle"s cannot both claim the one red circle in the image.
    """
    if not (len(names) == len(planned) == len(candidates)):
        raise ValueError(f"{len(names)} names, {len(planned)} boxes, {len(candidates)} candidates")
    ious = [0.0] * len(names)
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name, []).append(index)
    for indices in groups.values():
        pool: list[Box] = []
        seen: set[Box] = set()
        for index in indices:
            for box in candidates[index]:
                key = tuple(int(v) for v in box)
                if key not in seen:
                    seen.add(key)  # type: ignore[arg-type]
                    pool.append(key)  # type: ignore[arg-type]
        pairs = sorted(
            ((box_iou(planned[i], pool[k]), i, k) for i in indices for k in range(len(pool))),
            key=lambda t: (-t[0], t[1], t[2]),
        )
        used_objects: set[int] = set()
        used_boxes: set[int] = set()
        for iou, i, k in pairs:
            if iou <= 0.0:
                break
            if i in used_objects or k in used_boxes:
                continue
            ious[i] = iou
            used_objects.add(i)
            used_boxes.add(k)
    return ious
