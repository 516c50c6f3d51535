"""GoT chains for world scenes: the reasoning text an SFT model learns to write before it draws.

Each chain names every object with its true box in one of several prose phrasings, states where it
sits in words, and restates the prompt's spatial relation, like the GoT dataset's chains.
"""

from __future__ import annotations

import random

from gotr1.chain import GRID, format_object
from gotr1.world.grammar import NUMBER_WORDS, RELATION_PHRASES, PromptSpec
from gotr1.world.scene import Scene

_OPENINGS = (
    "The image shows {count} on a plain light background.",
    "A simple picture with {count} on a pale canvas.",
    "We see {count} drawn on an empty light background.",
    "The scene contains {count}.",
)
_OBJECT_SENTENCES = (
    "A {object} sits in the {region}.",
    "There is a {object} in the {region}.",
    "In the {region} we place a {object}.",
    "The {region} holds a {object}.",
)
_RELATION_SENTENCES = (
    "The {a} is {phrase} the {b}.",
    "So the {a} appears {phrase} the {b}.",
)
_CLOSINGS = ("", "Nothing else is in the picture.", "The shapes do not overlap.")

CHAIN_COLORS = ("prompt", "drawn")
"""How a chain names its objects: as the prompt names them ("a circle" stays `circle`), or each
with the colour it is drawn in (the plan picks a colour the prompt left open: `purple circle`)."""


def region_words(box: tuple[int, int, int, int]) -> str:
    """Describe where a box's centre lies on the canvas ("upper left part", "centre", ...)."""
    cx, cy = (box[0] + box[2]) / 2 / GRID, (box[1] + box[3]) / 2 / GRID
    vertical = "upper" if cy < 0.4 else "lower" if cy > 0.6 else ""
    horizontal = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
    if not vertical and not horizontal:
        return "centre"
    return f"{' '.join(w for w in (vertical, horizontal) if w)} part"


def _count_words(n: int) -> str:
    """'one shape', 'three shapes'."""
    word = NUMBER_WORDS[n - 1] if 1 <= n <= len(NUMBER_WORDS) else str(n)
    return f"{word} shape{'s' if n != 1 else ''}"


def write_chain(spec: PromptSpec, scene: Scene, rng: random.Random, colors: str = "prompt") -> str:
    """A GoT chain for a scene that satisfies `spec`: every object with its true box, named as
    the prompt names it or with its drawn colour (`colors`, one of `CHAIN_COLORS`)."""
    if colors not in CHAIN_COLORS:
        raise ValueError(f"colors must be one of {CHAIN_COLORS}, got {colors!r}")
    names: list[str] = []
    for obj in spec.objects:
        names.extend([obj.name] * obj.count)
    if len(names) != len(scene.objects):
        raise ValueError(
            f"scene has {len(scene.objects)} objects but the prompt asks for {len(names)}"
        )
    if colors == "drawn":
        names = [obj.name for obj in scene.objects]
    sentences = [rng.choice(_OPENINGS).format(count=_count_words(len(names)))]
    object_template = rng.choice(_OBJECT_SENTENCES)
    for name, obj in zip(names, scene.objects, strict=True):
        sentences.append(
            object_template.format(
                object=format_object(name, obj.box), region=region_words(obj.box)
            )
        )
    if spec.relation is not None:
        sentences.append(
            rng.choice(_RELATION_SENTENCES).format(
                a=names[0], b=names[1], phrase=rng.choice(RELATION_PHRASES[spec.relation])
            )
        )
    closing = rng.choice(_CLOSINGS)
    if closing:
        sentences.append(closing)
    return " ".join(sentences)
