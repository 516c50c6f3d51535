"""The dual-stage, multi-dimensional reward of GoT-R1 and the judges that answer its questions.

- :class:`Judge` — the protocol: ``semantic``, ``layout``, ``ground``, ``image`` (batched, [0, 1]).
- :class:`WorldJudge` — exact, programmatic judge of the embedded world.
- :class:`QwenLocalJudge` — Qwen2.5-VL through transformers; :class:`OpenAIJudge` — any
  OpenAI-compatible chat-completions server (e.g. vLLM serving Qwen2.5-VL).
- :class:`DualStageReward` — combines the four answers (product, sum, weighted sum, any subset)
  into :class:`Rewards`.

Importing this package does not import torch; the local Qwen judge imports it when built.
"""

from gotr1.rewards.combine import (
    COMBINATIONS,
    FAILURE_POLICIES,
    DualStageReward,
    ExtraReward,
    RewardConfig,
    Rewards,
    combine,
)
from gotr1.rewards.openai_http import OpenAIJudge, OpenAIJudgeConfig
from gotr1.rewards.protocol import (
    COMPONENTS,
    Box,
    GroundResult,
    Judge,
    JudgeScores,
    match_boxes,
)
from gotr1.rewards.qwen_local import QwenLocalConfig, QwenLocalJudge
from gotr1.rewards.vlm import ChatRequest, Reply, VLMJudge, VLMJudgeConfig
from gotr1.rewards.world_judge import WorldJudge

__all__ = [
    "COMBINATIONS",
    "COMPONENTS",
    "FAILURE_POLICIES",
    "Box",
    "ChatRequest",
    "DualStageReward",
    "ExtraReward",
    "GroundResult",
    "Judge",
    "JudgeScores",
    "OpenAIJudge",
    "OpenAIJudgeConfig",
    "QwenLocalConfig",
    "QwenLocalJudge",
    "Reply",
    "RewardConfig",
    "Rewards",
    "VLMJudge",
    "VLMJudgeConfig",
    "WorldJudge",
    "combine",
    "match_boxes",
]
