"""Peak memory of a stretch of work: CUDA's allocator peak on a GPU, resident memory on a CPU.

Training logs it per GRPO phase (``memory/rollout_peak_gib``, ``memory/update_peak_gib``) so
that a run shows what its settings cost before it runs out of memory, and benchmarks read the same
numbers. On Linux the CPU peak is the process's VmHWM, reset at the start of each stretch through
``/proc/self/clear_refs``; where that cannot be reset, the peak since the process started.

`limit_heap_retention` keeps glibc from holding freed memory: GRPO on CPU calls it for models from
`HEAP_LIMIT_MIN_PARAMETERS` on (`limit_heap_retention_for`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_STATM = Path("/proc/self/statm")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.M)
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
HEAP_MMAP_THRESHOLD = 128 * 1024
"""Blocks from this size on get their own pages from the kernel, and give them back when freed."""
HEAP_LIMIT_MIN_PARAMETERS = 100_000_000
"""Models from this many parameters on get `limit_heap_retention` in CPU GRPO. At Janus-Pro-1B's
width it keeps gigabytes of freed heap from staying resident at the same speed; on the demo's
1.7M-parameter model, whose retained heap is small, mapping every block of 128 KiB or more on its
own pages made a rollout about 1.2x and a guided update pass about 1.7x slower (float32, one
thread, fresh processes alternated)."""


class PeakMemory:
    """The peak memory of `device` since the last `reset`, in GiB."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.resettable = self.device.type == "cuda" or _reset_cpu_peak()

    @property
    def kind(self) -> str:
        """What is measured: the CUDA allocator's peak, or resident memory (RSS) of the process."""
        if self.device.type == "cuda":
            return "cuda max_memory_allocated"
        return "process peak RSS" + ("" if self.resettable else " since start")

    def reset(self) -> None:
        """Start a new stretch: the peak becomes what is in use now."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            _reset_cpu_peak()

    def peak_gib(self) -> float:
        """The highest memory in use since `reset`, in GiB."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.device.type == "cpu":
            try:
                match = _HWM.search(_STATUS.read_text())
            except OSError:
                match = None
            if match is not None:
                return int(match.group(1)) / 2**20
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
            return peak / (2**30 if sys.platform == "darwin" else 2**20)
        return float("nan")  # other accelerators: not measured


def resident_gib() -> float:
    """This process's resident memory now, in GiB (Linux: /proc/self/statm); benchmarks sample it
    to see what a stretch of work holds beside its peak."""
    return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _reset_cpu_peak() -> bool:
    """Reset this process's VmHWM to its current RSS; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def limit_heap_retention(threshold: int = HEAP_MMAP_THRESHOLD) -> bool:
    """Make glibc map every allocation of `threshold` bytes or more on its own pages (returned to
    the kernel when freed) instead of carving it from its heap; True where that took effect.

    glibc starts at this threshold but raises it, up to 32 MiB, each time a mapped block is freed,
    so a CPU rollout's per-step temporaries (a few MiB each, a little larger at every decoding
    step) came from the heap, and small long-lived tensors made between them kept the freed
    space from being reused: at 1 and 2 of Janus-Pro-1B's layers the heap held 5-8 GiB free but
    resident after a rollout (`benchmarks/grpo_memory_probe.py`, mallinfo2), 0.02 GiB with the
    threshold fixed, at the same speed. Setting it fixes it (glibc then stops adjusting it). A
    threshold set in the environment (MALLOC_MMAP_THRESHOLD_) is kept; other C libraries are left
    alone (False).
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))


def limit_heap_retention_for(model: torch.nn.Module, device_type: str) -> bool:
    """`limit_heap_retention` where it pays: on CPU, for a model of `HEAP_LIMIT_MIN_PARAMETERS`
    or more; True where it took effect. Small models keep glibc's own behaviour (faster there)."""
    if device_type != "cpu":
        return False
    if sum(p.numel() for p in model.parameters()) < HEAP_LIMIT_MIN_PARAMETERS:
        return False
    return limit_heap_retention()
