"""The report's diagnosis: warnings when a demo's benchmark change may not come from what GRPO
optimised (`diagnose`), and the measurements it reads. `plan_sensitivity` measures how much a
model's image-token loss on world examples rises when every chain's boxes are replaced by other
examples' boxes (prompt, names and image unchanged): near 0 means the image model ignores the
plan, whatever the chains say.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import torch

from gotr1.demo.report import chain_statistics, image_statistics, read_jsonl, seen_reward_totals
from gotr1.policy.io import load_pretrained
from gotr1.train.data import BadRows, SFTExample, WorldExamples, make_sft_batch
from gotr1.train.losses import sft_losses
from gotr1.train.runlog import LOG_FILE

BOX_MARKUP = re.compile(r"<\|box_start\|>.*?<\|box_end\|>", re.DOTALL)


def swap_boxes(chains: list[str], seed: int = 0) -> list[str]:
    """Each chain with every box replaced by a random box of the other chains (or itself when
    there is no other): the same prose and names, another plan."""
    rng = random.Random(seed)
    pool = [box for chain in chains for box in BOX_MARKUP.findall(chain)]
    if not pool:
        return list(chains)
    return [BOX_MARKUP.sub(lambda _: rng.choice(pool), chain) for chain in chains]


def plan_sensitivity(
    model_dir: str | Path, examples: int = 128, seed: int = 0, batch_size: int = 32
) -> dict[str, float]:
    """Image-token cross-entropy (nats per token) of `model_dir` on `examples` world training
    examples with their true chains and with swapped boxes, and the difference."""
    model, processor = load_pretrained(str(model_dir))
    model.eval()
    size = int(model.config.vision_config.image_size)
    source = WorldExamples(seed + 7919, "train", size)
    true = [source[i] for i in range(examples)]
    swapped_chains = swap_boxes([e.chain for e in true], seed)
    swapped = [
        SFTExample(e.prompt, chain, e.load_image(), None, e.where)
        for e, chain in zip(true, swapped_chains, strict=True)
    ]

    def image_loss(rows: list[SFTExample]) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = list(enumerate(rows[start : start + batch_size]))
                batch = make_sft_batch(
                    chunk, processor.tokenizer, model.model.vqmodel, size, 0.0, 0, 10_000, BadRows()
                )
                if batch is None:
                    continue
                total += float(sft_losses(model, batch)["image_loss"]) * len(chunk)
                count += len(chunk)
        return total / max(count, 1)

    with_plan, with_other_plan = image_loss(true), image_loss(swapped)
    return {
        "image_loss": with_plan,
        "image_loss_boxes_swapped": with_other_plan,
        "plan_sensitivity": with_other_plan - with_plan,
        "examples": float(examples),
    }


CLUTTER_MARGIN = 0.5
"""GRPO images holding this many more unasked objects per image than SFT's count as clutter."""
PLAN_SENSITIVITY_FLOOR = 0.05
"""Below this rise of the image loss (nats per token) when the boxes are swapped, the SFT model's
images count as ignoring the plan (`plan_sensitivity`)."""
AT_BOX_FLOOR = 0.3
"""Below this share of planned objects drawn at their planned box (any shape, box IoU >= 0.5), the
SFT model's images count as not following the plan (`gotr1.demo.report.image_statistics`;
docs/findings.md: GRPO gains only once the images draw their plans)."""


def reward_trend(rows: list[dict[str, Any]], key: str = "reward") -> dict[str, float] | None:
    """Mean of ``key`` over the first and the last tenth (at least one step) of GRPO steps."""
    values = [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]
    if not values:
        return None
    tenth = max(1, len(values) // 10)
    first, last = values[:tenth], values[-tenth:]
    return {"first": sum(first) / len(first), "last": sum(last) / len(last), "steps": len(values)}


PLAN_NAMING_KEYS = (
    "mean_semantic",
    "coloured_objects_named",
    "held_out_pairs_named",
    "seen_pairs_named",
)
"""The chain statistics (`gotr1.demo.report.chain_statistics`) metrics.json keeps per model."""
RENAMING_MARGIN = 0.2
"""Plans naming held-out pairs this much less often than seen ones get a diagnosis note."""


def diagnose(
    delta_overall: float,
    trend: dict[str, float] | None,
    images: dict[str, dict[str, Any]],
    plan: dict[str, dict[str, float] | None] | None = None,
    seen: dict[str, Any] | None = None,
    naming: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Plain warnings when the benchmark gain may not come from what GRPO optimised: the
    optimised reward did not rise, GRPO's images hold more objects the prompt did not ask for
    (the soft score counts extra objects as one requirement only), or the SFT
    model's images ignore the planned boxes (then R_RI only rewards chance overlaps); when the
    SFT model's plans rename held-out colour–shape pairs (`naming`: `metrics["plan_naming"]`);
    and, when the held-out score did not rise, what GRPO did on seen compositions
    (`seen_compositions`)."""
    notes = []
    sft_names, grpo_names = (naming or {}).get("sft") or {}, (naming or {}).get("grpo") or {}
    unseen, familiar = sft_names.get("held_out_pairs_named"), sft_names.get("seen_pairs_named")
    if unseen is not None and familiar is not None and familiar - unseen > RENAMING_MARGIN:
        after = grpo_names.get("held_out_pairs_named")
        after_text = f", GRPO's {after:.0%}" if after is not None else ""
        notes.append(
            f"the SFT model's plans name a held-out colour-shape pair exactly for {unseen:.0%} of "
            f"them (pairs seen in training, in the same prompts: {familiar:.0%}){after_text}: the "
            "plan turns unseen compositions into seen ones before any image is drawn"
        )
    sft_plan = (plan or {}).get("sft")
    if sft_plan is not None and sft_plan["plan_sensitivity"] < PLAN_SENSITIVITY_FLOOR:
        notes.append(
            "the SFT model's images ignore the planned boxes (teacher-forced image loss "
            f"{sft_plan['image_loss']:.3f} with the true boxes, "
            f"{sft_plan['image_loss_boxes_swapped']:.3f} with other examples' boxes): R_RI "
            "can only reward chance overlaps"
        )
    at_box = images.get("sft", {}).get("planned_objects_at_box")
    if at_box is not None and at_box < AT_BOX_FLOOR:
        named = images["sft"].get("planned_objects_named_at_box")
        named_text = f"; {named:.0%} as named" if named is not None else ""
        notes.append(
            f"the SFT model draws {at_box:.0%} of its planned objects at their planned boxes "
            f"(any shape, box IoU >= 0.5{named_text}): GRPO's R_RI has little plan-following "
            "to reward"
        )
    if trend is not None and trend["last"] <= trend["first"]:
        notes.append(
            f"the reward GRPO optimised did not rise over the run ({trend['first']:.4f} in the "
            f"first tenth of steps, {trend['last']:.4f} in the last): the benchmark change is "
            "not the result of optimising it (`gotr1 grpo-signal --config <run>/grpo/config.yaml` "
            "measures whether one step's gradient holds more than sampling noise)"
        )
    if seen is not None and delta_overall <= 0:
        seen_delta = seen["delta"]["overall"]
        totals = seen_reward_totals(seen)
        reward_text = f" and its reward from {totals[0]:.3f} to {totals[1]:.3f}" if totals else ""
        improved = seen_delta > 0 or (totals is not None and totals[1] > totals[0])
        notes.append(
            f"on train-split prompts (seen compositions) GRPO changed the soft score by "
            f"{seen_delta:+.3f}{reward_text}: "
            + (
                "what it gained where it trained did not carry over to the unseen compositions "
                "of the held-out benchmark"
                if improved
                else "it did not improve where it trained either"
            )
        )
    before = images.get("sft", {}).get("mean_extra_objects")
    after = images.get("grpo", {}).get("mean_extra_objects")
    if before is not None and after is not None and after - before > CLUTTER_MARGIN:
        notes.append(
            f"GRPO's images hold more objects the prompt did not ask for ({before:.2f} -> "
            f"{after:.2f} per image): part of the soft-score change "
            f"({delta_overall:+.3f}) may be clutter, which the soft score counts as one "
            "requirement only"
        )
    return notes


def add_diagnosis(
    metrics: dict[str, Any], out: Path, samples: dict[str, list[dict[str, Any]]]
) -> None:
    """Add the GRPO reward trend, the evaluation images' object counts, both models'
    `plan_sensitivity` and `diagnose`'s warnings to `metrics` (`samples`: each evaluation's
    samples by stage name, "sft" and "grpo")."""
    trend = reward_trend(read_jsonl(out / "grpo" / LOG_FILE))
    images = {
        name: image_statistics(samples.get(name, []), out / "eval" / name)
        for name in ("sft", "grpo")
    }
    naming = {}
    for name in ("sft", "grpo"):
        stats = chain_statistics(samples.get(name, []))
        naming[name] = {key: stats[key] for key in PLAN_NAMING_KEYS}
    plan = {
        name: plan_sensitivity(out / name / "final", seed=int(metrics.get("seed", 0)))
        if (out / name / "final" / "config.json").is_file()
        else None
        for name in ("sft", "grpo")
    }
    metrics["grpo_reward_trend"] = trend
    metrics["images"] = images
    metrics["plan_sensitivity"] = plan
    metrics["plan_naming"] = naming
    metrics["diagnosis"] = diagnose(
        metrics["delta"]["overall"], trend, images, plan, metrics.get("seen_compositions"), naming
    )
