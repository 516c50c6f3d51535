"""Does the image follow the plan? Two probes of a model's image tokens.

GoT's mechanism needs the image to be drawn where the chain planned it. `plan_sensitivity` measures
how much the model's image-token loss on world examples rises when every chain's boxes are replaced
by other examples' boxes (prompt, names and image unchanged): near 0 means the image model ignores
the plan, whatever the chains say. `condition_reliance` samples chains and redraws their images from
the chain alone and from the prompt alone: which of the two the images are drawn from.
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


CONDITIONS = ("prompt_and_chain", "chain_only", "prompt_only")
"""What an image is redrawn from in `condition_reliance`: as the model ran, with the prompt turn
blanked, or with the chain blanked (blanked tokens become pad, as in the unconditional row)."""


def condition_reliance(
    model_dir: str | Path,
    prompts: list[str] | None = None,
    images_per_prompt: int = 1,
    seed: int = 0,
    cfg_weight: float = 3.0,
    max_chain_tokens: int = 160,
    prompts_per_batch: int = 100,
) -> dict[str, dict[str, float]]:
    """Does the image follow the chain or the prompt's words? The world soft score (per category
    and overall) of images redrawn from each of `CONDITIONS`, for the same sampled chains and the
    same image-sampling seed (`prompts`: world prompts; None = the 300 held-out benchmark prompts).
    """
    import torch

    from gotr1.policy.io import load_pretrained
    from gotr1.policy.policy import Policy
    from gotr1.policy.rollout import (
        SamplingConfig,
        decode_images,
        generate_image_tokens,
        janus_parts,
        left_pad,
        unconditional_ids,
    )
    from gotr1.world import benchmark_prompts, parse_prompt, score_image, summarize

    model, processor = load_pretrained(str(model_dir))
    model.eval()
    policy = Policy(model, processor)
    texts = prompts if prompts is not None else [text for text, _ in benchmark_prompts("test")]
    specs = [parse_prompt(text) for text in texts]
    sampling = SamplingConfig(cfg_weight=cfg_weight, max_chain_tokens=max_chain_tokens)
    parts, special = janus_parts(model), policy.special
    scores: dict[str, list[float]] = {name: [] for name in CONDITIONS}
    categories: list[str] = []
    for first in range(0, len(texts), prompts_per_batch):
        chunk = texts[first : first + prompts_per_batch]
        base = seed * 1_000_003 + 2 * first  # chains and images: streams of their own
        generator = torch.Generator(device=policy.device).manual_seed(base)
        rollouts = policy.rollout(chunk, images_per_prompt, sampling, generator)
        prefixes: dict[str, list[list[int]]] = {name: [] for name in CONDITIONS}
        for row in range(len(rollouts)):
            prompt = rollouts.prompt_ids[row][rollouts.prompt_mask[row].bool()].tolist()
            chain = rollouts.chain_ids[row][rollouts.chain_mask[row].bool()].tolist()
            whole = torch.tensor([prompt + chain])
            blank = unconditional_ids(whole, torch.ones_like(whole), special.pad, special.bos)
            blank = blank[0].tolist()  # the unconditional row: BOS and <begin_of_image> kept
            prefixes["prompt_and_chain"].append(prompt + chain)
            prefixes["chain_only"].append(blank[: len(prompt)] + chain)
            prefixes["prompt_only"].append(prompt + blank[len(prompt) :])
        chunk_specs = [specs[first + row // images_per_prompt] for row in range(len(rollouts))]
        categories.extend(spec.category for spec in chunk_specs)
        for name, rows in prefixes.items():
            ids, mask = left_pad(rows, special.pad)
            image_seed = torch.Generator(device=policy.device).manual_seed(base + 1)
            codes, _ = generate_image_tokens(
                parts, ids.to(parts.device), mask.to(parts.device), sampling, special, image_seed
            )
            images = decode_images(parts, codes)
            scores[name].extend(
                score_image(spec, image).soft
                for spec, image in zip(chunk_specs, images, strict=True)
            )
    return {name: summarize(categories, values) for name, values in scores.items()}
