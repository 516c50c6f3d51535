"""Does the image follow the plan? `plan_sensitivity` measures how much a model's image-token loss
on world examples rises when every chain's boxes are replaced by other examples' boxes (prompt,
names and image unchanged): near 0 means the image model ignores the plan, whatever the chains say.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

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
    import torch

    from gotr1.policy.io import load_pretrained
    from gotr1.train.data import BadRows, SFTExample, WorldExamples, make_sft_batch
    from gotr1.train.losses import sft_losses

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
