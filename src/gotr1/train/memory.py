"""Peak memory of a stretch of work: CUDA's allocator peak on a GPU, resident memory on a CPU.

Training logs it per GRPO phase (``memory/rollout_peak_gib``, ``memory/update_peak_gib``) so
that a run shows what its settings cost before it runs out of memory, and benchmarks read the same
numbers. On Linux the CPU peak is the process's VmHWM, reset at the start of each stretch through
``/proc/self/clear_refs``; where that cannot be reset, the peak since the process started.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.M)


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


def _reset_cpu_peak() -> bool:
    """Reset this process's VmHWM to its current RSS; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True
