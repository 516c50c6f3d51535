"""PeakMemory: the peak of a stretch of work, reset between stretches; glibc's heap retention."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gotr1.train.memory import PeakMemory


def test_cpu_peak_sees_a_large_tensor_and_forgets_it_after_reset():
    memory = PeakMemory("cpu")
    memory.reset()
    before = memory.peak_gib()
    block = torch.ones(64 * 2**20)  # 256 MiB, written so every page is resident
    during = memory.peak_gib()
    del block
    assert during - before > 0.2
    memory.reset()
    if memory.resettable:  # Linux: the next stretch starts from what is in use now
        assert memory.peak_gib() < during - 0.2
        assert memory.kind == "process peak RSS"
    else:
        assert memory.kind == "process peak RSS since start"


_HEAP_CHECK = """
import ctypes, sys
import torch
from gotr1.train.memory import limit_heap_retention

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in "abcdefghij"]  # hblkhd e, fordblks i

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if not limit_heap_retention():
    sys.exit(3)
size = max(2**21, libc.mallinfo2().i + 2**20)  # larger than all the free heap: a new block
before = libc.mallinfo2().e
block = torch.ones(size // 4)
during = libc.mallinfo2().e
del block
after = libc.mallinfo2().e
sys.exit(0 if during - before >= size and after - before < size else 1)
"""


def test_limit_heap_retention_maps_mid_sized_blocks_on_their_own_pages():
    """After it, a new block of a few MiB (below glibc's raised threshold, so carved from the
    heap before) is a mapping of its own, and its pages go back when it is freed. A fresh
    process, so that no free heap space left by other tests can serve the block."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run([sys.executable, "-c", _HEAP_CHECK], env=env, timeout=120)
    if done.returncode == 3:
        pytest.skip("not glibc")
    assert done.returncode == 0


def test_heap_retention_is_limited_only_for_large_models_on_cpu(monkeypatch):
    """GRPO's rule: on CPU, from HEAP_LIMIT_MIN_PARAMETERS on (Janus-Pro scale); a small model
    (where the fixed threshold is slower) and any GPU run keep glibc's default."""
    from gotr1.train import memory

    calls = []
    monkeypatch.setattr(memory, "limit_heap_retention", lambda: calls.append(1) or True)
    small = torch.nn.Linear(8, 8)
    large = torch.nn.Linear(10_000, 10_000, device="meta")  # 100,010,000 parameters, no memory
    assert memory.limit_heap_retention_for(small, "cpu") is False
    assert memory.limit_heap_retention_for(large, "cuda") is False
    assert calls == []
    assert memory.limit_heap_retention_for(large, "cpu") is True
    assert calls == [1]


def test_resident_memory_counts_a_touched_tensor():
    """resident_gib reads what the process holds now: a tensor of 256 MiB, written, adds it."""
    from gotr1.train.memory import resident_gib

    before = resident_gib()
    block = torch.ones(64 * 2**20)  # 256 MiB, every page written
    assert resident_gib() - before > 0.2
    del block
