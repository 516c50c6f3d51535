"""The demo's reward: the paper's dual-stage product, judged by the world judge, times the
"nothing extra drawn" factor of `gotr1.rewards.clean_image` (reported as "extra objects" in
report.html)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def make_demo_reward(components: Sequence[str], combination: str, clean_factor: bool = True) -> Any:
    """The GRPO reward of the demo: `DualStageReward` with the world judge over `components`
    combined by `combination`, times (product) or plus (sums) `clean_fraction` when
    `clean_factor`."""
    from gotr1.rewards import DualStageReward, RewardConfig, WorldJudge
    from gotr1.rewards.clean_image import CleanImageReward

    judge = WorldJudge()
    config = RewardConfig(components=tuple(components), combination=combination)
    extra = CleanImageReward(judge) if clean_factor else None
    return DualStageReward(judge, config, extra_reward=extra)
