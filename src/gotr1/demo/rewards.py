"""The demo's reward: the paper's dual-stage product, judged by the world judge, times a
"nothing extra drawn" factor.

Why the factor: the world judge's R_PI is the world benchmark's soft score, which counts what the
prompt asks for (objects present, colours, counts, relation) but never penalises objects the prompt
did not ask for. A real MLLM judge scores a cluttered picture as a major mismatch (PAPER.md: 0–4);
the world judge does not, and R_RI (planned boxes matched to *any* detection of the planned name)
gets easier with clutter too. Measured: GRPO from a weak SFT model with the plain four-way product
learned to paint many shapes of every colour — the benchmark's soft score rose by ~0.2 while the
chains fell apart. Multiplying by `clean_fraction` (the share of drawn objects the prompt asked
for, like R_sem's penalty for contradicting objects in the chain) removes that shortcut.

`clean_fraction` is also reported for both models in report.html (as "extra objects").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def count_extra_objects(spec: Any, detections: Sequence[Any]) -> int:
    """Detections that fill no prompt slot: each detection goes to a prompt object it matches
    (shape, and colour when the prompt gives one; coloured slots first) until the slot holds the
    asked number; the rest are extra."""
    order = sorted(range(len(spec.objects)), key=lambda k: spec.objects[k].color is None)
    room = [obj.count for obj in spec.objects]
    extra = 0
    for detection in detections:
        for k in order:
            obj = spec.objects[k]
            if (
                room[k] > 0
                and detection.shape == obj.shape
                and obj.color in (None, detection.color)
            ):
                room[k] -= 1
                break
        else:
            extra += 1
    return extra


def clean_fraction(spec: Any, detections: Sequence[Any]) -> float:
    """asked / (asked + extra): 1 when nothing unasked is drawn, 1/2 when as many extra objects as
    asked ones are drawn (`asked` = the number of objects the prompt asks for)."""
    asked = sum(obj.count for obj in spec.objects)
    return asked / (asked + count_extra_objects(spec, detections))


class CleanImageReward:
    """The extra-reward hook of `DualStageReward`: (prompts, images) -> `clean_fraction` per
    sample (NaN for a prompt outside the world grammar, a counted judge failure)."""

    def __init__(self, judge: Any = None) -> None:
        self.judge = judge

    def __call__(self, prompts: Sequence[str], images: Sequence[Any]) -> list[float]:
        from gotr1.world import detect, parse_prompt

        scores = []
        for prompt, image in zip(prompts, images, strict=True):
            try:
                spec = parse_prompt(str(prompt))
            except ValueError:
                scores.append(float("nan"))
                continue
            detections = self.judge.detect(image) if self.judge is not None else detect(image)
            scores.append(clean_fraction(spec, detections))
        return scores


def make_demo_reward(components: Sequence[str], combination: str, clean_factor: bool = True) -> Any:
    """The GRPO reward of the demo: `DualStageReward` with the world judge over `components`
    combined by `combination`, times (product) or plus (sums) `clean_fraction` when
    `clean_factor`."""
    from gotr1.rewards import DualStageReward, RewardConfig, WorldJudge

    judge = WorldJudge()
    config = RewardConfig(components=tuple(components), combination=combination)
    extra = CleanImageReward(judge) if clean_factor else None
    return DualStageReward(judge, config, extra_reward=extra)
