"""PeakMemory: the peak of a stretch of work, reset between stretches."""

from __future__ import annotations

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
