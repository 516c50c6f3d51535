"""`SamplingConfig`: how rollouts are sampled. It owns the checks of the sampling settings.

The GRPO config (``text_temperature``, ``top_p``, ``cfg_weight``, ``plan_cfg_weight``, ... under
the same names) and the SFT sample dumps build one and let it judge their values, so each check
lives here only. This module imports nothing heavy (the training configs validate through it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gotr1.errors import ConfigError
from gotr1.numeric import finite_message


@dataclass
class SamplingConfig:
    """How rollouts are sampled (both stages) and how the decoding engine runs."""

    text_temperature: float = field(
        default=1.0, metadata={"help": "Temperature of the chain tokens; 0 means greedy."}
    )
    image_temperature: float = field(
        default=1.0, metadata={"help": "Temperature of the image tokens; 0 means greedy."}
    )
    top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling for chain tokens (1.0 = off)."}
    )
    cfg_weight: float = field(
        default=5.0,
        metadata={"help": "Classifier-free guidance w: uncond + w*(cond-uncond); 1 = no guidance."},
    )
    plan_cfg_weight: float | None = field(
        default=None,
        metadata={
            "help": "Two-condition guidance: the plan's weight w_plan in uncond + cfg_weight*"
            "(prompt_only-uncond) + w_plan*(cond-prompt_only), where prompt_only blanks the chain "
            "only. None = one-condition guidance with cfg_weight (equal weights give the same)."
        },
    )
    max_chain_tokens: int = field(
        default=600,
        metadata={"help": "Cap on chain tokens; a chain that reaches it gets <begin_of_image>."},
    )
    max_batch_rows: int | None = field(
        default=None,
        metadata={
            "help": "Rows (samples, before CFG doubling) per engine pass; whole prompt groups are "
            "kept together. None = all rows at once."
        },
    )
    compile_decode: bool = field(
        default=False,
        metadata={
            "help": "CUDA only: torch.compile (CUDA graphs) the stage-2 decode step. Ignored on CPU."
        },
    )

    def __post_init__(self) -> None:
        """Refuse a bad value with a one-line `ConfigError` that names the field."""
        message = finite_message(self)  # first: NaN passes every range check below
        if message:
            raise ConfigError(message, message.split()[0])
        for name in ("text_temperature", "image_temperature"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"{name} must be >= 0 (0 means greedy), got {getattr(self, name)}", name
                )
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.cfg_weight < 0:
            raise ConfigError(f"cfg_weight must be >= 0, got {self.cfg_weight}", "cfg_weight")
        if self.plan_cfg_weight is not None and self.plan_cfg_weight < 0:
            raise ConfigError(
                f"plan_cfg_weight must be >= 0 or None, got {self.plan_cfg_weight}",
                "plan_cfg_weight",
            )
        if self.max_chain_tokens < 1:
            raise ConfigError(
                f"max_chain_tokens must be > 0, got {self.max_chain_tokens}", "max_chain_tokens"
            )
        if self.max_batch_rows is not None and self.max_batch_rows < 1:
            raise ConfigError(
                f"max_batch_rows must be >= 1 or None, got {self.max_batch_rows}", "max_batch_rows"
            )

    @property
    def guided(self) -> bool:
        """Whether stage 2 runs the unconditional branch (cfg_weight != 1)."""
        return self.cfg_weight != 1.0

    @property
    def plan_guided(self) -> bool:
        """Whether stage 2 runs the prompt-only row (chain blanked): a plan weight that differs
        from cfg_weight. Equal weights are one-condition guidance exactly, without that row."""
        return self.plan_cfg_weight is not None and self.plan_cfg_weight != self.cfg_weight
