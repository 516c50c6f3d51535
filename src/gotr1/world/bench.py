"""The world benchmark: exact scoring of an image against a prompt, splits, and the SFT corpus.

An image's requirements are read off the prompt: each object present (in the asked number), each
asked colour right, the exact count for counting prompts, the spatial relation (GenEval's rule,
holding between every pair of detections that fit the two objects) and only asked objects drawn
(the share of drawn objects that fill a prompt slot). `soft` is the fraction of requirements met;
`correct` means all are met.

The last two make clutter cost: with "any pair" relations and no count of unasked objects, one
image holding all 15 colour-shape combinations scored soft 0.90 on the 300 held-out prompts (the
demo's GRPO learned to draw 3-4 times more objects than asked). GenEval judges colour and position
on the top detections of each class and so is not fooled that way either.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from gotr1.world.chains import write_chain
from gotr1.world.detector import Detection, detect
from gotr1.world.grammar import CATEGORIES, ObjectSpec, PromptSpec, parse_prompt, sample_prompt
from gotr1.world.scene import Scene, relation_holds, render_scene, sample_scene


@dataclass(frozen=True)
class ImageScore:
    """How an image fares against its prompt: all requirements met, the fraction met, and each one."""

    correct: bool
    soft: float
    requirements: tuple[tuple[str, float], ...] = field(default=())


def _matches(detection: Detection, obj: ObjectSpec) -> bool:
    """Whether a detection is an instance of the asked object (shape, and colour when asked)."""
    return detection.shape == obj.shape and (obj.color is None or detection.color == obj.color)


def count_extra_objects(spec: PromptSpec, detections: Sequence[Detection]) -> int:
    """Detections that fill no prompt slot: each detection goes to a prompt object it matches
    (shape, and colour when the prompt gives one; coloured slots first) until the slot holds the
    asked number; the rest are extra."""
    order = sorted(range(len(spec.objects)), key=lambda k: spec.objects[k].color is None)
    room = [obj.count for obj in spec.objects]
    extra = 0
    for detection in detections:
        for k in order:
            if room[k] > 0 and _matches(detection, spec.objects[k]):
                room[k] -= 1
                break
        else:
            extra += 1
    return extra


def clean_fraction(spec: PromptSpec, detections: Sequence[Detection]) -> float:
    """asked / (asked + extra): 1 when nothing unasked is drawn, 1/2 when as many extra objects as
    asked ones are drawn (`asked` = the number of objects the prompt asks for)."""
    asked = sum(obj.count for obj in spec.objects)
    return asked / (asked + count_extra_objects(spec, detections))


def asked_share(spec: PromptSpec, detections: Sequence[Detection]) -> float:
    """The share of drawn objects that fill a prompt slot (0 for an image with nothing drawn)."""
    if not detections:
        return 0.0
    return 1.0 - count_extra_objects(spec, detections) / len(detections)


def score_detections(
    spec: PromptSpec, detections: Sequence[Detection], only_asked: bool = True
) -> ImageScore:
    """Score detections against a prompt's requirements. `only_asked` False drops the "only asked
    objects" requirement (for a question about part of an image, such as a VQA phrase)."""
    requirements: list[tuple[str, float]] = []
    for obj in spec.objects:
        same_shape = sum(d.shape == obj.shape for d in detections)
        exact = sum(_matches(d, obj) for d in detections)
        requirements.append((f"{obj.shape} present", min(same_shape, obj.count) / obj.count))
        if obj.color:
            requirements.append((f"{obj.name} colour", min(exact, obj.count) / obj.count))
        if spec.category == "counting":
            requirements.append((f"exactly {obj.count} {obj.name}", float(exact == obj.count)))
    if spec.relation is not None:
        first, second = spec.objects[0], spec.objects[1]
        pairs = [
            relation_holds(spec.relation, a.box, b.box)
            for a in detections
            if _matches(a, first)
            for b in detections
            if b is not a and _matches(b, second)
        ]
        holds = bool(pairs) and all(pairs)  # a copy on the wrong side breaks the relation
        requirements.append((f"{first.name} {spec.relation} {second.name}", float(holds)))
    if only_asked:
        requirements.append(("only asked objects", asked_share(spec, detections)))
    soft = sum(value for _, value in requirements) / len(requirements)
    correct = all(value == 1.0 for _, value in requirements)
    return ImageScore(correct, soft, tuple(requirements))


def score_image(spec: PromptSpec | str, image: Image.Image) -> ImageScore:
    """Score an image against a prompt (a spec or world prompt text) with the pixel detector."""
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    return score_detections(spec, detect(image))


def summarize(categories: Iterable[str], scores: Iterable[float]) -> dict[str, float]:
    """Per-category means plus "overall", the mean of the category means (as GenEval reports it)."""
    sums: dict[str, list[float]] = {}
    for category, score in zip(categories, scores, strict=True):
        sums.setdefault(category, []).append(float(score))
    result = {c: sum(v) / len(v) for c in CATEGORIES if (v := sums.get(c))}
    result["overall"] = sum(result.values()) / len(result) if result else 0.0
    return result


@dataclass(frozen=True)
class GoTExample:
    """One SFT example: a prompt, its spec, a scene that satisfies it, and the GoT chain for that scene."""

    prompt: str
    spec: PromptSpec
    scene: Scene
    chain: str

    def render(self, size: int = 64) -> Image.Image:
        """The example's target image."""
        return render_scene(self.scene, size)


def sample_examples(
    n: int,
    seed: int,
    split: str = "train",
    categories: Sequence[str] = CATEGORIES,
    chain_colors: str = "prompt",
) -> list[GoTExample]:
    """`n` GoT examples, categories in rotation, deterministic from the seed; their chains name
    objects as `chain_colors` says (`gotr1.world.chains.CHAIN_COLORS`), which changes no prompt
    or scene."""
    rng = random.Random(f"gotr1-examples-{split}-{seed}")
    examples = []
    for index in range(n):
        prompt, spec = sample_prompt(rng, categories[index % len(categories)], split)
        scene = sample_scene(spec, rng)
        examples.append(
            GoTExample(prompt, spec, scene, write_chain(spec, scene, rng, chain_colors))
        )
    return examples


def benchmark_prompts(
    split: str = "test", n: int = 300, seed: int = 0, categories: Sequence[str] = CATEGORIES
) -> list[tuple[str, PromptSpec]]:
    """The benchmark's prompts, balanced over categories and deterministic from the seed.

    Prompts are distinct where the category has enough distinct specs in the split; a category with
    fewer (test single objects: one per held-out colour–shape pair) repeats its specs in turn, and
    each repeat is scored on its own sample.
    """
    rng = random.Random(f"gotr1-benchmark-{split}-{seed}")
    per_category = [
        n // len(categories) + (i < n % len(categories)) for i in range(len(categories))
    ]
    prompts: list[tuple[str, PromptSpec]] = []
    for category, count in zip(categories, per_category, strict=True):
        distinct: dict[PromptSpec, str] = {}
        for _ in range(50 * count):
            if len(distinct) == count:
                break
            prompt, spec = sample_prompt(rng, category, split)
            distinct.setdefault(spec, prompt)
        pool = list(distinct.items())
        prompts.extend((pool[i % len(pool)][1], pool[i % len(pool)][0]) for i in range(count))
    return prompts
