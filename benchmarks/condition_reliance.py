"""Does a model's image follow its chain or the prompt's words? The same chains redrawn three ways.

    python benchmarks/condition_reliance.py runs/demo/sft/final            # 300 held-out prompts
    python benchmarks/condition_reliance.py MODEL --prompts 60 --json out.json

Samples a chain per prompt (and image), then draws its image three times with the same image seed:
from the prompt and the chain (as the model ran), from the chain alone (the prompt turn blanked to
pad) and from the prompt alone (the chain blanked), blanked as the unconditional row of CFG is.
Prints the world soft score per category for each; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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

CONDITIONS = ("prompt_and_chain", "chain_only", "prompt_only")
"""What an image is redrawn from: as the model ran, with the prompt turn blanked, or with the chain
blanked (blanked tokens become pad, as in the unconditional row)."""


def condition_reliance(
    model_dir: str | Path,
    prompts: list[str] | None = None,
    images_per_prompt: int = 1,
    seed: int = 0,
    cfg_weight: float = 3.0,
    max_chain_tokens: int = 160,
    prompts_per_batch: int = 100,
) -> dict[str, dict[str, float]]:
    """The world soft score (per category and overall) of images redrawn from each of
    `CONDITIONS`, for the same sampled chains and the same image-sampling seed (`prompts`: world
    prompts; None = the 300 held-out benchmark prompts)."""
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


def main() -> None:
    """Run the probe on one model folder and print (or write) the scores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained world model folder (e.g. a demo's sft/final)")
    parser.add_argument("--prompts", type=int, default=300, help="held-out benchmark prompts")
    parser.add_argument("--images-per-prompt", type=int, default=1, help="images per prompt")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--json", type=Path, default=None, help="write the scores here")
    args = parser.parse_args()
    prompts = [text for text, _ in benchmark_prompts("test", args.prompts)]
    result = condition_reliance(
        args.model, prompts, images_per_prompt=args.images_per_prompt, seed=args.seed
    )
    categories = list(result[CONDITIONS[0]])
    print(f"{'condition':<18}" + "".join(f"{c:>16}" for c in categories))
    for name, scores in result.items():
        print(f"{name:<18}" + "".join(f"{scores[c]:>16.3f}" for c in categories))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
