"""A "nothing extra drawn" reward factor for the world judge.

The world judge's R_PI is the world benchmark's soft score, in which "only asked objects" is one
requirement among three to six (`gotr1.world.bench`); before that requirement existed R_PI never
penalised clutter, and GRPO with the plain summed reward learned to paint many shapes of every
colour. A real MLLM judge scores a cluttered picture as a major mismatch (PAPER.md: 0-4), and
R_RI (planned boxes matched to *any* detection of the planned name) gets easier with clutter.
Multiplying the reward by `clean_fraction` (the share of drawn objects the prompt asked for, like
R_sem's penalty for contradicting objects in the chain) makes clutter cost as much as a real
judge would. It is the ``extra_reward`` hook of `DualStageReward` (`GRPOConfig.world_clean_image`,
the demo's reward).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gotr1.world import detect, parse_prompt
from gotr1.world.bench import clean_fraction, count_extra_objects

__all__ = ["CleanImageReward", "clean_fraction", "count_extra_objects"]


class CleanImageReward:
    """The extra-reward hook of `DualStageReward`: (prompts, images) -> `clean_fraction` per
    sample (NaN for a prompt outside the world grammar, a counted judge failure)."""

    def __init__(self, judge: Any = None) -> None:
        self.judge = judge

    def __call__(self, prompts: Sequence[str], images: Sequence[Any]) -> list[float]:
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
