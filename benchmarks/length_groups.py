"""Passes over rows of similar length as a lever for the demo: the SFT step as 1, 2, 4 or 8 length
groups, and the GRPO update's passes in sampling order or ordered by length.

    python benchmarks/length_groups.py                                    # random weights
    python benchmarks/length_groups.py --model runs/demo/grpo/final       # a trained demo model
    python benchmarks/length_groups.py --precision no                     # float32

SFT: a world batch is left-padded to its longest prompt + chain; `SFTBatch.length_groups` orders
the rows by length and trims each group to its own longest row, and `sft_group_losses` adds the
groups' losses and gradients up to the whole batch's. GRPO: the update takes a step's rollouts in
passes of `--pass-rows`; `gotr1.train.grpo.update_passes` gives each pass rows of like chain
length, and each pass trims to its own rows (`token_logprobs`). Rollouts need a trained model
(`--model`) to have the demo's spread of chain lengths; random weights write chains of any length.

Each variant is timed (forward and backward) over the same work, the variants alternated within
every round so that machine noise falls on all alike. Prints the medians, the ratio to the first,
the share of computed positions that are padding, and the largest difference of loss and gradient
from the first (they must agree within float tolerance). JSON under benchmarks/results/ names the
CPU's capability, the precision and the threads.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from demo_inputs import (
    cpu_parser,
    cpu_precision,
    demo_inputs,
    run_record,
    world_sft_batches,
    write_result,
)
from gotr1.train.data import SFTBatch
from gotr1.train.grpo import update_passes
from gotr1.train.losses import sft_group_losses, sft_losses

Work = Callable[[], float]
"""One variant's work on one input: forward and backward, returns the loss."""


def sft_padding(batch: SFTBatch, groups: int) -> float:
    """Share of an SFT step's positions (text columns + image tokens, over rows) that are padding."""
    image = batch.image_ids.shape[1]
    computed = sum(len(p) * (p.text_ids.shape[1] + image) for p in batch.length_groups(groups))
    real = int(batch.text_mask.sum()) + len(batch) * image
    return 1 - real / computed


def update_padding(rollouts: Any, passes: list[torch.Tensor]) -> float:
    """Share of an update's text positions (prompt + chain columns after each pass's trim, over
    rows) that are padding; the image tokens, never padded, are left out."""
    prompt, chain = rollouts.prompt_mask.sum(1), rollouts.chain_mask.sum(1)
    computed = sum(len(p) * int(prompt[p].max() + chain[p].max()) for p in passes)
    return 1 - int(prompt.sum() + chain.sum()) / computed


def compare(
    model: torch.nn.Module, variants: dict[str, list[Work]], repeats: int
) -> dict[str, dict[str, float]]:
    """Time each variant's works alternated round by round; the loss and gradient of each
    variant's first work against the first variant's."""

    def gradient() -> torch.Tensor:
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        return torch.cat(grads)

    def run(work: Work) -> tuple[float, float]:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = work()
        return time.perf_counter() - start, loss

    agreement = {}
    reference_loss, reference_grad = None, None
    for name, works in variants.items():
        _, loss = run(works[0])
        grad = gradient()
        if reference_grad is None:
            reference_loss, reference_grad = loss, grad
        agreement[name] = {
            "loss_relative_difference": abs(loss - reference_loss) / abs(reference_loss),
            "gradient_relative_difference": float(
                (grad - reference_grad).norm() / reference_grad.norm()
            ),
        }
    for works in zip(*variants.values(), strict=True):  # warm-up: every shape seen once
        for work in works:
            run(work)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for works in zip(*variants.values(), strict=True):
            for name, work in zip(variants, works, strict=True):
                seconds[name].append(run(work)[0])
    model.zero_grad(set_to_none=True)
    base = statistics.median(next(iter(seconds.values())))
    return {
        name: {
            "median_s": round(statistics.median(times), 4),
            "speedup_over_first": round(base / statistics.median(times), 3),
            "timed_calls": len(times),
            **agreement[name],
        }
        for name, times in seconds.items()
    }


def report(kind: str, results: dict[str, dict[str, float]]) -> None:
    """Print one line a variant."""
    for name, found in results.items():
        print(
            f"{kind} {name}: {found['median_s']:.3f} s ({found['speedup_over_first']:.2f}x), "
            f"padding {found['padding_share']:.0%}, loss differs by "
            f"{found['loss_relative_difference']:.1e}, gradient by "
            f"{found['gradient_relative_difference']:.1e} (relative)"
        )


def main() -> None:
    """Time each variant side by side and report medians and ratios."""
    parser = cpu_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a trained demo model folder")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batches", type=int, default=6, help="distinct SFT batches of 32")
    parser.add_argument("--prompts", type=int, default=16, help="GRPO prompts (x 8 samples)")
    parser.add_argument("--pass-rows", type=int, default=32, help="rollouts a GRPO update pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    args = parser.parse_args()
    choice = cpu_precision(args.precision, args.threads)
    autocast = choice.chosen == "bf16"

    def precision() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()

    inputs = demo_inputs(
        args.model, sft_rows=2, prompts=args.prompts, num_generations=8, chain_tokens=160
    )
    policy, rollouts = inputs.policy, inputs.rollouts
    model = policy.model.train()
    batches = world_sft_batches(policy, args.batches)

    def sft_work(batch: SFTBatch, groups: int) -> Work:
        def step(part: SFTBatch, totals: tuple[float, float], last: bool) -> dict:
            with precision():
                losses = sft_losses(model, part, token_totals=totals)
            losses["loss"].backward()
            return losses

        return lambda: sft_group_losses(batch, groups, step)["loss"]

    sft = compare(
        model,
        {str(g): [sft_work(b, g) for b in batches] for g in args.groups},
        args.repeats,
    )
    for groups in args.groups:
        sft[str(groups)]["padding_share"] = round(
            statistics.mean(sft_padding(b, groups) for b in batches), 3
        )
    report("SFT step, groups", sft)

    count = -(-len(rollouts) // args.pass_rows)
    orders = {
        "sampling order": list(torch.arange(len(rollouts)).tensor_split(count)),
        "by length": update_passes(rollouts, count),
    }

    def update_work(passes: list[torch.Tensor]) -> Work:
        def work() -> float:
            total = 0.0
            for rows in passes:
                batch = rollouts.select(rows)
                with precision():
                    lp = policy.logprobs(batch, image_logprob="guided")
                    loss = -(lp.image.sum() + (lp.chain * batch.chain_mask).sum())
                (loss / len(rollouts)).backward()
                total += float(loss.detach()) / len(rollouts)
            return total

        return work

    update = compare(
        model, {name: [update_work(p)] for name, p in orders.items()}, args.repeats * 2
    )
    for name, passes in orders.items():
        update[name]["padding_share"] = round(update_padding(rollouts, passes), 3)
    report("GRPO update, passes in", update)

    record = {
        **run_record(inputs.name, choice),
        "sft": {"batch_rows": 32, "widths": [int(b.text_ids.shape[1]) for b in batches]},
        "sft_groups": sft,
        "grpo": {
            "rollouts": len(rollouts),
            "pass_rows": args.pass_rows,
            "chain_lengths": rollouts.chain_mask.sum(1).tolist(),
        },
        "grpo_update_passes": update,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    write_result(args.out, f"length-groups-{inputs.name}-{choice.chosen}", record)


if __name__ == "__main__":
    main()
