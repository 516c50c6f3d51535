"""torch.compile as a lever for the demo: an SFT step and a GRPO update pass, eager vs compiled.

    python benchmarks/compile_levers.py                  # the demo's model, random weights
    python benchmarks/compile_levers.py --precision no   # float32, as on a CPU without bf16

Compiles the language model of the ``world-demo`` policy with inductor (`torch.compile(...,
dynamic=True)`: world batches differ in width from step to step) and times, alternating eager and
compiled so that machine noise falls on both alike, (a) an SFT step (chain + image cross-entropy,
forward and backward) over several world batches of the demo's size and (b) a guided GRPO update
pass over sampled rollouts. Prints the seconds the first compiled calls took (compilation), the
medians, the ratio eager / compiled, and the largest difference of the losses (compiled results
must equal eager ones within float tolerance), and writes JSON under benchmarks/results/ naming
the CPU's capability, the precision and the threads. A compile that fails is reported, not
raised.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from demo_inputs import (
    cpu_parser,
    cpu_precision,
    demo_inputs,
    run_record,
    world_sft_batches,
    write_result,
)
from gotr1.train.losses import sft_losses


def main() -> None:
    """Time eager against compiled side by side and report medians and ratios."""
    parser = cpu_parser(__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6, help="distinct SFT batches")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds over the batches")
    args = parser.parse_args()
    choice = cpu_precision(args.precision, args.threads)
    autocast = choice.chosen == "bf16"
    inputs = demo_inputs(None, sft_rows=32, prompts=4, num_generations=8)
    policy, rollouts = inputs.policy, inputs.rollouts
    model = policy.model.train()
    batches = world_sft_batches(policy, args.batches, max_chain_tokens=256)

    def timed(loss_of: Callable[[], torch.Tensor]) -> tuple[float, float]:
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
            start = time.perf_counter()
            loss = loss_of()
        loss.backward()
        seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return seconds, float(loss.detach())

    def sft_step(batch: object) -> Callable[[], torch.Tensor]:
        return lambda: sft_losses(model, batch)["loss"]

    def grpo_update() -> torch.Tensor:
        lp = policy.logprobs(rollouts, image_logprob="guided")
        return -(lp.image.sum() + (lp.chain * rollouts.chain_mask).sum()) / len(rollouts)

    work: dict[str, list[Callable[[], torch.Tensor]]] = {
        "sft_step": [sft_step(b) for b in batches],
        "grpo_update_pass": [grpo_update],
    }
    eager_lm = model.model.language_model
    compiled_lm = torch.compile(eager_lm, dynamic=True)
    record: dict[str, object] = {
        **run_record(inputs.name, choice),
        "sft_batch_widths": [int(b.text_ids.shape[1]) for b in batches],
    }
    results: dict[str, object] = {}
    for name, steps in work.items():
        model.model.language_model = eager_lm
        for step in steps:  # warm-up: every shape seen once
            timed(step)
        model.model.language_model = compiled_lm
        start = time.perf_counter()
        try:
            for step in steps:
                timed(step)
        except Exception as error:  # noqa: BLE001 - a failed compile is the finding
            results[name] = {"compile_error": f"{type(error).__name__}: {str(error)[:300]}"}
            print(f"{name}: compile failed ({results[name]['compile_error']})")
            continue
        compile_seconds = time.perf_counter() - start
        eager, compiled, difference = [], [], 0.0
        for _ in range(args.repeats):
            for step in steps:
                model.model.language_model = eager_lm
                seconds, loss = timed(step)
                eager.append(seconds)
                model.model.language_model = compiled_lm
                seconds, compiled_loss = timed(step)
                compiled.append(seconds)
                difference = max(difference, abs(loss - compiled_loss) / max(abs(loss), 1e-6))
        found = {
            "first_compiled_calls_seconds": round(compile_seconds, 1),
            "eager_median_s": round(statistics.median(eager), 4),
            "compiled_median_s": round(statistics.median(compiled), 4),
            "eager_over_compiled": round(statistics.median(eager) / statistics.median(compiled), 3),
            "largest_relative_loss_difference": difference,
            "timed_calls": len(eager),
        }
        results[name] = found
        print(
            f"{name}: compile {found['first_compiled_calls_seconds']} s; eager "
            f"{found['eager_median_s']} s, compiled {found['compiled_median_s']} s "
            f"({found['eager_over_compiled']}x); loss differs by {difference:.2e} (relative)"
        )
    model.model.language_model = eager_lm
    record["work"] = results
    record["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    write_result(args.out, f"compile-levers-{inputs.name}-{choice.chosen}", record)


if __name__ == "__main__":
    main()
