"""The demo's reward: the paper's dual-stage product, judged by the world judge, times the
"nothing extra drawn" factor of `gotr1.rewards.clean_image` (reported as "extra objects" in
report.html)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gotr1.train.config import GRPOConfig
from gotr1.train.grpo import make_reward


def uses_clean_factor(components: Sequence[str], clean_factor: bool) -> bool:
    """Whether the clean-image factor applies: only beside R_PI, the reward it corrects."""
    return clean_factor and "pi" in components


def make_demo_reward(components: Sequence[str], combination: str, clean_factor: bool = True) -> Any:
    """The GRPO reward of the demo: `DualStageReward` with the world judge over `components`
    combined by `combination`, times (product) or plus (sums) `clean_fraction` when
    `clean_factor` and R_PI is among the components (the factor corrects R_PI's blindness to
    clutter; without R_PI it would reward drawing nothing: a blank image is perfectly clean)."""
    return make_reward(
        GRPOConfig(
            judge="world",
            reward_components=list(components),
            reward_combination=combination,
            world_clean_image=uses_clean_factor(components, clean_factor),
        )
    )
