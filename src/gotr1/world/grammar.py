"""The world's prompt grammar: categories mirroring T2I-CompBench and GenEval, sampled and parsed back.

Every prompt the sampler writes parses back to the `PromptSpec` it was written from. The held-out
("unseen") compositions — some colour–shape pairs and some shape–relation–shape triples — never
occur in the training split and every test-split prompt contains at least one, like T2I-CompBench's
unseen split.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 40, 180),
}
BACKGROUND: tuple[int, int, int] = (240, 240, 240)
CATEGORIES: tuple[str, ...] = (
    "single_object",
    "two_objects",
    "color_binding",
    "counting",
    "spatial",
    "complex",
)
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "on the left of", "left of"),
    "right": ("to the right of", "on the right of", "right of"),
    "above": ("above", "on top of", "over"),
    "below": ("below", "under", "beneath"),
}
NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
SPLITS: tuple[str, ...] = ("train", "test", "sft")
"""train: no held-out composition; test: at least one; sft: train without RL-only compositions."""

HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("green", "circle"), ("blue", "square"), ("purple", "circle")}
)
"""Colour–shape pairs that appear only in test prompts."""
HELD_OUT_RELATIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("triangle", "left", "circle"),
        ("circle", "above", "square"),
        ("square", "below", "triangle"),
        ("square", "right", "circle"),
    }
)
"""(first shape, relation, second shape) triples that appear only in test prompts (their mirror
images too: "a circle right of a triangle" is "a triangle left of a circle")."""
RL_ONLY_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("yellow", "square"), ("purple", "triangle")}
)
"""Colour–shape pairs of the train split that the sft split leaves out: compositions an SFT corpus
drawn from the sft split never shows, which GRPO's train-split prompts do (as the paper's RL
prompts hold compositions its SFT data may lack). Every colour and shape still occurs in sft."""
RL_ONLY_RELATIONS: frozenset[tuple[str, str, str]] = frozenset(
    {("square", "left", "triangle"), ("circle", "above", "triangle")}
)
"""Shape–relation–shape triples (and mirrors) of the train split that the sft split leaves out."""
MIRROR_RELATION: dict[str, str] = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
}


@dataclass(frozen=True)
class ObjectSpec:
    """An object a prompt asks for: a shape, optionally a colour, and how many."""

    shape: str
    color: str | None = None
    count: int = 1

    @property
    def name(self) -> str:
        """The singular noun phrase: "red circle" or "circle"."""
        return f"{self.color} {self.shape}" if self.color else self.shape


@dataclass(frozen=True)
class PromptSpec:
    """The structure of a world prompt; `relation` says objects[0] RELATION objects[1]."""

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    @property
    def is_unseen(self) -> bool:
        """Whether the prompt contains a held-out composition (so it belongs to the test split)."""
        return self._holds(HELD_OUT_PAIRS, HELD_OUT_RELATIONS)

    @property
    def is_rl_only(self) -> bool:
        """Whether the prompt contains a composition the sft split leaves out (RL_ONLY_PAIRS,
        RL_ONLY_RELATIONS)."""
        return self._holds(RL_ONLY_PAIRS, RL_ONLY_RELATIONS)

    def _holds(
        self, pairs: frozenset[tuple[str, str]], triples: frozenset[tuple[str, str, str]]
    ) -> bool:
        """Whether an object is one of the colour–shape pairs or the relation one of the triples
        (either way round)."""
        if any((o.color, o.shape) in pairs for o in self.objects if o.color):
            return True
        if self.relation is not None:
            first, second = self.objects[0].shape, self.objects[1].shape
            mirrored = (second, MIRROR_RELATION[self.relation], first)
            return (first, self.relation, second) in triples or mirrored in triples
        return False


def _object_phrase(obj: ObjectSpec, with_number: bool) -> str:
    """Write one object as a noun phrase ("a red circle", "three squares")."""
    if not with_number:
        return f"a {obj.name}"
    word = NUMBER_WORDS[obj.count - 1]
    return f"{word} {obj.name}{'s' if obj.count > 1 else ''}"


def format_prompt(spec: PromptSpec, rng: random.Random | None = None) -> str:
    """Write a prompt for a spec; `rng` picks among the relation phrasings (the first one without it)."""
    if spec.category == "counting":
        return _object_phrase(spec.objects[0], with_number=True)
    phrases = [_object_phrase(o, with_number=False) for o in spec.objects]
    if spec.relation is None:
        return " and ".join(phrases)
    choices = RELATION_PHRASES[spec.relation]
    phrase = rng.choice(choices) if rng is not None else choices[0]
    text = f"{phrases[0]} {phrase} {phrases[1]}"
    if len(phrases) == 3:
        text += f", and {phrases[2]}"
    return text


_SHAPE = "|".join(SHAPES)
_COLOR = "|".join(COLORS)
_OBJECT = rf"a (?:({_COLOR}) )?({_SHAPE})"
_PHRASE_TO_RELATION = {p: r for r, ps in RELATION_PHRASES.items() for p in ps}
_RELATION = "|".join(sorted(map(re.escape, _PHRASE_TO_RELATION), key=len, reverse=True))
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("counting", re.compile(rf"^({'|'.join(NUMBER_WORDS)}) (?:({_COLOR}) )?({_SHAPE})(s?)$")),
    ("complex", re.compile(rf"^{_OBJECT} ({_RELATION}) {_OBJECT}, and {_OBJECT}$")),
    ("spatial", re.compile(rf"^{_OBJECT} ({_RELATION}) {_OBJECT}$")),
    ("pair", re.compile(rf"^{_OBJECT} and {_OBJECT}$")),
    ("single_object", re.compile(rf"^{_OBJECT}$")),
)


def parse_prompt(text: str) -> PromptSpec:
    """Recover the spec of a world prompt; raises ValueError for text outside the grammar."""
    normalised = " ".join(str(text).lower().strip().rstrip(".").split())
    for kind, pattern in _PATTERNS:
        match = pattern.match(normalised)
        if match is None:
            continue
        groups = match.groups()
        if kind == "counting":
            count = NUMBER_WORDS.index(groups[0]) + 1
            if (count > 1) != (groups[3] == "s"):
                break
            return PromptSpec("counting", (ObjectSpec(groups[2], groups[1], count),))
        if kind in ("complex", "spatial"):
            first = ObjectSpec(groups[1], groups[0])
            relation = _PHRASE_TO_RELATION[groups[2]]
            objects = [first, ObjectSpec(groups[4], groups[3])]
            if kind == "complex":
                objects.append(ObjectSpec(groups[6], groups[5]))
            return PromptSpec(kind, tuple(objects), relation)
        if kind == "pair":
            objects = (ObjectSpec(groups[1], groups[0]), ObjectSpec(groups[3], groups[2]))
            category = "color_binding" if all(o.color for o in objects) else "two_objects"
            return PromptSpec(category, objects)
        return PromptSpec("single_object", (ObjectSpec(groups[1], groups[0]),))
    raise ValueError(f"not a world prompt: {text!r}")


def _random_object(rng: random.Random, color_probability: float) -> ObjectSpec:
    """An object with a random shape and, with the given probability, a random colour."""
    color = rng.choice(list(COLORS)) if rng.random() < color_probability else None
    return ObjectSpec(rng.choice(SHAPES), color)


def _distinct(objects: list[ObjectSpec]) -> bool:
    """Whether no object's name could also describe another (needed to tell them apart)."""
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            if a.shape == b.shape and (a.color is None or b.color is None or a.color == b.color):
                return False
    return True


def _draw_spec(rng: random.Random, category: str) -> PromptSpec:
    """Draw one spec of a category, before any split filtering."""
    if category == "single_object":
        return PromptSpec(category, (_random_object(rng, 0.7),))
    if category == "counting":
        obj = _random_object(rng, 0.5)
        return PromptSpec(category, (ObjectSpec(obj.shape, obj.color, rng.randint(1, 4)),))
    count = 3 if category == "complex" else 2
    color_probability = {"two_objects": 0.3, "spatial": 0.7}.get(category, 1.0)
    while True:
        objects = [_random_object(rng, color_probability) for _ in range(count)]
        if _distinct(objects):
            break
    relation = rng.choice(RELATIONS) if category in ("spatial", "complex") else None
    if category == "two_objects" and all(o.color for o in objects):
        category = "color_binding"  # the grammar reads two coloured objects as colour binding
    return PromptSpec(category, tuple(objects), relation)


def sample_prompt(
    rng: random.Random, category: str, split: str = "train"
) -> tuple[str, PromptSpec]:
    """Sample a prompt of a category from a split: train never holds unseen compositions, test
    always does, sft is train without the RL-only compositions."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; choose from {', '.join(CATEGORIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    while True:
        spec = _draw_spec(rng, category)
        if spec.category != category or spec.is_unseen != (split == "test"):
            continue
        if split == "sft" and spec.is_rl_only:
            continue
        return format_prompt(spec, rng), spec
