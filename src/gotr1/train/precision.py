"""Which autocast precision a run trains in.

``mixed_precision: auto`` takes bf16 only where the hardware runs it natively: on a CPU with
AVX512-BF16 or AMX (a CPU without them emulates bf16, and a small model's step then takes several
times as long as in float32), on a CUDA GPU where torch says bf16 is supported; float32 ("no")
elsewhere. ``GOTR1_NATIVE_BF16=0`` or ``=1`` overrides the CPU probe (a CPU torch misreads, or a
test of the other branch). An explicit ``bf16`` on a CPU without native bf16 is kept, with a
one-line warning that measures how much slower it is there.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

NATIVE_BF16_ENV = "GOTR1_NATIVE_BF16"
"""Set to 0 or 1 to override whether the CPU counts as running bf16 natively."""

_SAID_ENV = "GOTR1_PRECISION_SAID"
"""The last choice said (``bf16@cpu``), inherited by worker processes so a run says it once."""


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run asked for, what it got, and why."""

    asked: str
    chosen: str
    device: str
    reason: str
    warning: str = ""

    def describe(self) -> str:
        """One line for the console: ``mixed precision: auto -> bf16 on cpu (...)``, or the
        warning when the choice is slow on this device."""
        if self.warning:
            return f"warning: {self.warning}"
        return f"mixed precision: {self.asked} -> {self.chosen} on {self.device} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (metrics.json, run logs)."""
        return asdict(self)


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 arithmetic natively (AMX or AVX512-BF16), and the reason."""
    override = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1", f"{NATIVE_BF16_ENV}={override}"
    for probe, name in (
        ("_is_amx_tile_supported", "AMX"),
        ("_is_avx512_bf16_supported", "AVX512-BF16"),
    ):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True, f"the CPU has {name}"
    capability = torch.backends.cpu.get_cpu_capability()
    return False, f"the CPU ({capability}) has neither AVX512-BF16 nor AMX"


def choose_mixed_precision(asked: str, device_type: str) -> PrecisionChoice:
    """Resolve ``asked`` (auto, no, bf16, fp16) for a device type ("cpu", "cuda", ...)."""
    if device_type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        reason = "the GPU supports bf16" if native else "the GPU does not support bf16"
    elif device_type == "cpu":
        native, reason = cpu_native_bf16()
    else:
        native, reason = False, f"no native bf16 rule for {device_type}"
    if asked == "auto":
        return PrecisionChoice(asked, "bf16" if native else "no", device_type, reason)
    if asked == "bf16" and not native and device_type == "cpu":
        warning = (
            f"mixed_precision bf16 on a CPU without native bf16 ({reason}): a 256x256 matmul "
            f"takes {bf16_slowdown():.1f}x as long as in float32 here; mixed_precision auto or "
            "no trains in float32"
        )
        return PrecisionChoice(asked, asked, device_type, reason, warning)
    return PrecisionChoice(asked, asked, device_type, "as asked")


def bf16_slowdown(size: int = 256, repeats: int = 5) -> float:
    """How many times longer a ``size`` x ``size`` matmul takes in bf16 than in float32 on this
    CPU (medians of ``repeats`` timings each)."""

    def median_seconds(dtype: torch.dtype) -> float:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        for _ in range(3):  # warm-up: the first bf16 product also builds its kernel
            a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return median_seconds(torch.bfloat16) / max(median_seconds(torch.float32), 1e-9)


def say_once(choice: PrecisionChoice) -> None:
    """Print what ``auto`` chose, or the warning of an emulated bf16, on stderr once per run: the
    processes a run starts (which inherit the environment) and its later stages, which are handed
    the choice itself, stay silent about the same choice."""
    key = f"{choice.chosen}@{choice.device}"
    said = os.environ.get(_SAID_ENV) == key
    os.environ[_SAID_ENV] = key
    if said or (choice.asked != "auto" and not choice.warning):
        return
    if os.environ.get("RANK", "0") == "0":
        print(choice.describe(), file=sys.stderr, flush=True)
