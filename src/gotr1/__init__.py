"""gotr1: reasoning-driven image generation (GoT-R1) — SFT and GRPO with a dual-stage judge reward."""

__version__ = "0.1.0"
