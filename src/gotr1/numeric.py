"""The one check every config system runs over its numeric settings: each must be finite.

No setting of gotr1 means anything at NaN or infinity (a learning rate, a clipping norm, a CFG
weight, a timeout, a reward weight), and none of the range checks catches NaN (every comparison
with it is false), so each config's validation calls `non_finite_fields` first over all its
fields. This module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def _non_finite(value: Any) -> bool:
    """Whether a value is, or holds (in a list, tuple or dict, at any depth), a NaN or ±inf."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(item) for item in value)
    return False


def non_finite_fields(config: Any) -> list[tuple[str, Any]]:
    """(name, value) of each field of a dataclass `config` that is or holds a NaN or ±inf."""
    return [
        (field.name, getattr(config, field.name))
        for field in dataclasses.fields(config)
        if _non_finite(getattr(config, field.name))
    ]


def finite_message(config: Any, prefix: str = "") -> str | None:
    """A one-line message naming the first non-finite field of `config` (``prefix`` goes before
    the field's name, e.g. "demo setting "), or None when every number is finite."""
    bad = non_finite_fields(config)
    if not bad:
        return None
    name, value = bad[0]
    if isinstance(value, float):
        return f"{prefix}{name} must be a finite number, got {value}"
    return f"{prefix}{name} must hold only finite numbers, got {value}"
