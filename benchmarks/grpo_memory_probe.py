"""Where the memory of one GRPO step goes: resident memory per stage, and torch's own allocations.

    python benchmarks/grpo_memory_probe.py --preset janus-pro-1b --layers 1 --threads 1
    python benchmarks/grpo_memory_probe.py --preset janus-pro-1b --layers 1 --threads 1 \
        --profile update

The step is `benchmarks/grpo_step.py`'s (random weights, LoRA r = 32, gradient checkpointing,
guided image log-probs; bf16 weights, or `--autocast` with `--float32-attention` as `gotr1 grpo`
runs on a CPU with native bf16), with the world judge left out (it holds nothing). Each stage of
the rollout and of the update (`sample_chains`, `sample_image_tokens`, `decode_images`,
`teacher_forced_hidden`, `chunked_head_logprobs`, backward, optimizer step) records its resident
memory at entry and its peak, read by a thread every 10 ms, above the memory in use before the
step. `--profile` records every torch allocation (torch.profiler, profile_memory) instead and
reports, per phase, the peak of torch's live bytes and the live allocations at that peak,
grouped by the operator (and the gotr1 / transformers frame) that made them. Prints JSON and
writes it under benchmarks/results/ with `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

import gotr1.policy.logprobs as logprobs_module
import gotr1.policy.rollout as rollout_module
from gotr1.policy.attention import use_float32_cpu_attention
from gotr1.policy.io import new_policy
from gotr1.policy.lora import apply_lora
from gotr1.policy.policy import Policy
from gotr1.policy.presets import get_preset
from gotr1.policy.rollout import SamplingConfig
from gotr1.train.grpo import grpo_loss, loss_normaliser
from gotr1.train.memory import limit_heap_retention_for, resident_gib
from gotr1.train.runtime import enable_gradient_checkpointing
from gotr1.world import benchmark_prompts

GIB = 2**30


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo2


def malloc_gib() -> dict[str, float]:
    """glibc's heap: bytes in use by malloc, bytes free but kept in its arenas, bytes mmapped."""
    info = _LIBC.mallinfo2()
    return {
        "malloc_in_use": round((info.uordblks + info.hblkhd) / GIB, 3),
        "malloc_free_kept": round(info.fordblks / GIB, 3),
        "malloc_mmapped": round(info.hblkhd / GIB, 3),
    }


class RssTracker:
    """Resident memory sampled every `interval` s; `span(name)` records entry and peak per stage."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = resident_gib()
        self.stages: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, resident_gib())

    @contextlib.contextmanager
    def span(self, name: str, base: float):
        outer = self.peak
        self.peak = entry = resident_gib()
        try:
            yield
        finally:
            peak = max(self.peak, resident_gib())
            record = self.stages.setdefault(name, {"calls": 0, "entry": 0.0, "peak": 0.0})
            record["calls"] += 1
            record["entry"] = max(record["entry"], round(entry - base, 3))
            record["peak"] = max(record["peak"], round(peak - base, 3))
            record.update(malloc_gib())
            self.peak = max(outer, peak)

    def stop(self) -> None:
        self._stop.set()


def wrap(module: Any, name: str, tracker: RssTracker, base: list[float]) -> None:
    """Replace `module.name` by a version that records its stage."""
    original = getattr(module, name)

    @functools.wraps(original)
    def recorded(*args: Any, **kwargs: Any) -> Any:
        with tracker.span(name, base[0]):
            return original(*args, **kwargs)

    setattr(module, name, recorded)


# ----------------------------------------------------------------------------------------------
# torch's allocations, from the profiler's event tree
# ----------------------------------------------------------------------------------------------


def allocation_peak(prof: Any, top: int = 25) -> dict[str, Any]:
    """Peak of torch's live CPU bytes in the profile and what was live there, by origin."""
    from torch._C._profiler import _EventType

    events = []  # (time, ptr, size, origin)

    def origin(node: Any) -> str:
        op, frame = None, None
        while node is not None:
            kind = node.typed[0]
            if op is None and kind == _EventType.TorchOp:
                shapes = [s for s in node.typed[1].inputs if isinstance(s, torch.Tensor)]
                op = node.name + str([tuple(s.shape) for s in shapes][:3])
            if frame is None and kind == _EventType.PyCall:
                name = node.name
                if ("gotr1" in name or "transformers" in name or "peft" in name) and (
                    "profiler" not in name
                ):
                    frame = name.split("site-packages/")[-1].split("src/")[-1]
            if op is not None and frame is not None:
                break
            node = node.parent
        return f"{op} @ {frame}"

    def walk(node: Any) -> None:
        stack = [node]
        while stack:
            item = stack.pop()
            if item.typed[0] == _EventType.Allocation:
                fields = item.typed[1]
                if fields.device.type == "cpu":
                    events.append((item.start_time_ns, fields.ptr, fields.alloc_size, item))
            stack.extend(item.children)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    events.sort(key=lambda e: e[0])
    live: dict[int, tuple[int, Any]] = {}
    current = peak = 0
    peak_live: dict[int, tuple[int, Any]] = {}
    for _, ptr, size, node in events:
        if size > 0:
            live[ptr] = (size, node)
        else:
            live.pop(ptr, None)
        current += size
        if current > peak:
            peak = current
            peak_live = dict(live)
    made: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for _, _, size, node in events:
        if size > 0:
            group = made[origin(node)]
            group[0] += 1
            group[1] += size / GIB
    groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for size, node in peak_live.values():
        group = groups[origin(node)]
        group[0] += 1
        group[1] += size / GIB
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "peak_live_gib": round(peak / GIB, 3),
        "live_at_peak": [
            {"origin": k, "tensors": n, "gib": round(g, 3)} for k, (n, g) in ranked if g > 1e-3
        ],
        "allocated_in_all": [
            {"origin": k, "allocations": n, "gib": round(g, 3)}
            for k, (n, g) in sorted(made.items(), key=lambda kv: -kv[1][1])[:top]
        ],
    }


# ----------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="janus-pro-1b")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-chain-tokens", type=int, default=600)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast (as gotr1 grpo)")
    parser.add_argument("--float32-weights", action="store_true", help="with --autocast")
    parser.add_argument("--float32-attention", action="store_true")
    parser.add_argument("--phases", default="rollout,update")
    parser.add_argument(
        "--profile", default="", help="phases to profile instead (rollout,update): torch's bytes"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--glibc-default", action="store_true", help="leave glibc's heap retention as it is"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.float32_attention:
        use_float32_cpu_attention()

    preset = get_preset(args.preset)
    preset = dataclasses.replace(preset, text=dict(preset.text, num_hidden_layers=args.layers))
    model, processor = new_policy(preset, vocab_size=preset.text["vocab_size"])
    if not args.glibc_default:
        limit_heap_retention_for(model, "cpu")  # as `gotr1 grpo` does, after loading its model
    if not args.float32_weights:
        model = model.to(dtype=torch.bfloat16)
    model = apply_lora(model, r=32, alpha=32)
    enable_gradient_checkpointing(model)
    policy = Policy(model, processor)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    prompts = [p for p, _ in benchmark_prompts("test", n=1, seed=0)]
    sampling = SamplingConfig(cfg_weight=5.0, max_chain_tokens=args.max_chain_tokens)

    tracker = RssTracker()
    base = [resident_gib()]
    for name in ("sample_chains", "sample_image_tokens", "unconditional_rows", "decode_images"):
        wrap(rollout_module, name, tracker, base)
    for name in ("teacher_forced_hidden", "chunked_head_logprobs"):
        wrap(logprobs_module, name, tracker, base)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if args.autocast else contextlib.nullcontext()
    )
    record: dict[str, Any] = {
        "preset": args.preset,
        "text_layers": args.layers,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "before_step_gib": round(base[0], 3),
        "phases": {},
    }
    phases = args.phases.split(",")

    def profiled(phase: str):
        if phase not in args.profile.split(","):
            return contextlib.nullcontext(None)
        return torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        )

    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    with profiled("rollout") as prof, tracker.span("rollout", base[0]):
        rollouts = policy.rollout(prompts, args.num_generations, sampling, generator)
    record["phases"]["rollout"] = {"seconds": round(time.perf_counter() - start, 1)}
    if prof is not None:
        record["phases"]["rollout"]["torch"] = allocation_peak(prof)
        del prof

    if "update" in phases:
        base[0] = resident_gib()
        record["before_update_gib"] = round(base[0], 3)
        start = time.perf_counter()
        model.train()
        with profiled("update") as prof, tracker.span("update", base[0]):
            with autocast:
                new = policy.logprobs(
                    rollouts, image_logprob="guided", micro_batch_size=args.micro_batch_size
                )
                tokens = torch.cat([new.chain, new.image], dim=1)
                weights = torch.cat(
                    [rollouts.chain_mask, torch.ones_like(rollouts.image_ids)], dim=1
                ).to(tokens)
                normaliser = loss_normaliser("grpo", weights, weights.shape[1])
                advantages = torch.linspace(-1, 1, len(rollouts))
                loss, _ = grpo_loss(tokens, tokens.detach(), None, advantages, weights, normaliser)
            with tracker.span("backward", base[0]):
                loss.backward()
            with tracker.span("optimizer_step", base[0]):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        record["phases"]["update"] = {"seconds": round(time.perf_counter() - start, 1)}
        if prof is not None:
            record["phases"]["update"]["torch"] = allocation_peak(prof)
            del prof
    tracker.stop()
    record["rss_above_before_gib"] = tracker.stages
    record["chain_tokens_mean"] = float(rollouts.chain_mask.sum(1).float().mean())
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
