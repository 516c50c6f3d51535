"""A "nothing extra drawn" reward factor for the world judge.

The world judge's R_PI is the world benchmark's soft score, which counts what the prompt asks for
(objects present, colours, counts, relation) but never penalises objects the prompt did not ask
for. A real MLLM judge scores a cluttered picture as a major mismatch (PAPER.md: 0-4); the world
judge does not, and R_RI (planned boxes matched to *any* detection of the planned name) gets
easier with clutter too. Measured: GRPO with the plain summed reward learned to paint many shapes
of every colour (the benchmark's soft score rose while the chains fell apart). Multiplying by
`clean_fraction` (the share of drawn objects the prompt asked for, like R_sem's penalty for
contradicting objects in the chain) removes that shortcut. It is the ``extra_reward`` hook of
`DualStageReward` (`GRPOConfig.world_clean_image`, the demo's reward).
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
