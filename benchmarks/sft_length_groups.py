"""Length groups as a lever for the demo's SFT step: one batch of 32 as 1, 2, 4 or 8 forward and
backward passes over rows of similar length.

    python benchmarks/sft_length_groups.py                  # the demo's model, random weights
    python benchmarks/sft_length_groups.py --precision no   # float32, as on a CPU without bf16

A world SFT batch is left-padded to its longest prompt + chain; `SFTBatch.length_groups` orders
the rows by length and trims each group to its own longest row, and `sft_group_losses` adds the
groups' losses and gradients up to the whole batch's. This times the SFT step (forward and
backward, the demo's batch settings) over several world batches for each group count, the counts
alternated within every round so that machine noise falls on all alike, and prints the medians,
the ratio to one group, the share of computed positions that are padding, and the largest
difference of loss and gradient from one group (they must agree within float tolerance). JSON
under benchmarks/results/ names the CPU's capability, the precision and the threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from demo_inputs import demo_inputs, write_result
from gotr1.policy.attention import use_float32_cpu_attention
from gotr1.train.data import BadRows, SFTBatch, WorldExamples, make_sft_batch
from gotr1.train.losses import sft_group_losses, sft_losses
from gotr1.train.precision import choose_mixed_precision


def padding_share(batch: SFTBatch, groups: int) -> float:
    """Share of the positions (text columns + image tokens, over rows) that are padding."""
    image = batch.image_ids.shape[1]
    computed = sum(len(p) * (p.text_ids.shape[1] + image) for p in batch.length_groups(groups))
    real = int(batch.text_mask.sum()) + len(batch) * image
    return 1 - real / computed


def main() -> None:
    """Time the SFT step at each group count side by side and report medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("auto", "no", "bf16"), default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batches", type=int, default=6, help="distinct SFT batches")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds over the batches")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    use_float32_cpu_attention()
    choice = choose_mixed_precision(args.precision, "cpu")
    autocast = choice.chosen == "bf16"
    inputs = demo_inputs(None, sft_rows=2)
    model = inputs.policy.model.train()
    image_size = model.config.vision_config.image_size
    examples = WorldExamples(seed=1, image_size=image_size)
    batches = []
    for k in range(args.batches):
        batch = make_sft_batch(
            [(i, examples[i]) for i in range(32 * k, 32 * k + 32)],
            inputs.policy.tokenizer,
            model.model.vqmodel.eval(),
            image_size,
            cfg_dropout=0.1,
            seed=0,
            max_chain_tokens=600,
            bad_rows=BadRows(),
        )
        assert batch is not None
        batches.append(batch)

    def run(batch: SFTBatch, groups: int) -> tuple[float, dict[str, float]]:
        def step(part: SFTBatch, totals: tuple[float, float], last: bool) -> dict:
            with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
                losses = sft_losses(model, part, token_totals=totals)
            losses["loss"].backward()
            return losses

        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        sums = sft_group_losses(batch, groups, step)
        return time.perf_counter() - start, sums

    def gradient() -> torch.Tensor:
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    # Agreement with one group, on the first batch.
    _, reference = run(batches[0], 1)
    reference_grad = gradient()
    agreement = {}
    for groups in args.groups:
        _, sums = run(batches[0], groups)
        grad = gradient()
        agreement[groups] = {
            "loss_relative_difference": abs(sums["loss"] - reference["loss"]) / reference["loss"],
            "gradient_relative_difference": float(
                (grad - reference_grad).norm() / reference_grad.norm()
            ),
        }
    for batch in batches:  # warm-up: every shape seen once
        for groups in args.groups:
            run(batch, groups)
    seconds: dict[int, list[float]] = {g: [] for g in args.groups}
    for _ in range(args.repeats):
        for batch in batches:
            for groups in args.groups:
                seconds[groups].append(run(batch, groups)[0])
    model.zero_grad(set_to_none=True)
    base = statistics.median(seconds[args.groups[0]])
    results = {}
    for groups in args.groups:
        median = statistics.median(seconds[groups])
        results[str(groups)] = {
            "median_step_s": round(median, 4),
            "speedup_over_first": round(base / median, 3),
            "padding_share": round(statistics.mean(padding_share(b, groups) for b in batches), 3),
            **agreement[groups],
        }
        print(
            f"groups {groups}: {median:.3f} s a step ({base / median:.2f}x), padding "
            f"{results[str(groups)]['padding_share']:.0%}, loss differs by "
            f"{agreement[groups]['loss_relative_difference']:.1e}, gradient by "
            f"{agreement[groups]['gradient_relative_difference']:.1e} (relative)"
        )
    record = {
        "model": inputs.name,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "mixed_precision": choice.to_dict(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_rows": 32,
        "sft_batch_widths": [int(b.text_ids.shape[1]) for b in batches],
        "timed_steps_per_count": len(seconds[args.groups[0]]),
        "groups": results,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    write_result(args.out, f"sft-length-groups-{inputs.name}-{choice.chosen}", record)


if __name__ == "__main__":
    main()
