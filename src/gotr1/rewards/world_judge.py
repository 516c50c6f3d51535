"""The exact, programmatic judge of the embedded world: the same four questions, answered by rule.

It reads prompts with the world grammar (:func:`gotr1.world.parse_prompt`) and images with the
world's pixel detector, so every judgement is exact and checkable. Each score is a fraction of
requirements met:

- ``semantic`` (R_sem): for every prompt object, is its shape planned in the asked number, with the
  asked colour, and (counting prompts) exactly that many; every planned object that fills no
  prompt slot (a wrong-colour or extra object, or a name that is no world object) is a
  contradiction and adds one unmet requirement. Score = met / (requirements + contradictions).
- ``layout`` (R_spa): what the drawn canvas shows — for every prompt object, is it placed (a planned
  box of non-zero area under a matching name), in the asked number; do no two planned boxes
  collide (IoU ≥ 0.5, which would make the drawing ambiguous); and does the prompt's relation hold
  between the planned boxes of its two objects (GenEval's rule, as :func:`gotr1.world.relation_holds`).
  Score = mean of these requirements. The canvas itself is not read: its names and boxes are the
  chain's, so judging them directly judges exactly what the canvas shows.
- ``ground``: like a grounding model asked for "the red circle", it answers without seeing the
  plan: of the detections whose shape (and colour, when the name gives one) match the name, the
  most confident (then largest) ones, as many as the chain plans objects of that name. R_RI then
  matches planned boxes to those answers one to one (:func:`gotr1.rewards.protocol.match_boxes`).
  Offering every matching detection instead let clutter pay: the more copies drawn, the likelier
  one lands on the planned box (the demo's GRPO drew 2-4 times more objects than asked).
- ``image`` (R_PI): the world benchmark's soft score, :func:`gotr1.world.score_image` (the same
  detections scored by :func:`gotr1.world.score_detections`).

A prompt outside the world grammar cannot be judged: its sample is a counted failure.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

import gotr1.world as world
from gotr1.chain import box_iou
from gotr1.rewards.protocol import Box, GroundResult, JudgeScores

COLLISION_IOU = 0.5
"""Two planned boxes overlapping at least this much are drawn on top of each other."""


def _world() -> Any:
    return world


@lru_cache(maxsize=4096)
def _spec(prompt: str) -> Any:
    return _world().parse_prompt(prompt)


def parse_object_name(name: str) -> tuple[str | None, str | None]:
    """(colour, shape) named by a chain object ("red circle", "Red Circles" -> ("red", "circle"))."""
    world = _world()
    words = re.findall(r"[a-z]+", str(name).lower())
    shapes = [w[:-1] if w.endswith("s") and w[:-1] in world.SHAPES else w for w in words]
    shape = next((w for w in shapes if w in world.SHAPES), None)
    colours = [w for w in words if w in world.COLORS]
    colour = colours[0] if len(set(colours)) == 1 else None
    if len(set(colours)) > 1:
        return None, None  # "red blue circle" names no single world object
    return colour, shape


def detection_fits_name(detection: Any, colour: str | None, shape: str | None) -> bool:
    """Whether a detection can be the object a chain names as (colour, shape) — from
    `parse_object_name`: the same shape, and the same colour when the name gives one."""
    return shape is not None and detection.shape == shape and colour in (None, detection.color)


def _matches(colour: str | None, shape: str | None, obj: Any) -> bool:
    """Whether a named object can be an instance of a prompt object (shape, colour when asked)."""
    return shape == obj.shape and (obj.color is None or colour == obj.color)


def _assign(
    spec: Any, parsed: Sequence[tuple[str | None, str | None]]
) -> tuple[list[list[int]], int]:
    """Give each chain object to a prompt slot it matches; returns slot members and the leftovers."""
    slots: list[list[int]] = [[] for _ in spec.objects]
    leftovers = 0
    # Coloured prompt objects first: the more specific ones claim their matches before the others.
    order = sorted(range(len(spec.objects)), key=lambda k: spec.objects[k].color is None)
    for index, (colour, shape) in enumerate(parsed):
        for k in order:
            obj = spec.objects[k]
            if _matches(colour, shape, obj) and len(slots[k]) < obj.count:
                slots[k].append(index)
                break
        else:
            leftovers += 1
    return slots, leftovers


def _has_area(box: Sequence[int]) -> bool:
    return box[2] > box[0] and box[3] > box[1]


def semantic_score(spec: Any, names: Sequence[str]) -> float:
    """R_sem of one chain's object names against a prompt spec (see the module docstring)."""
    parsed = [parse_object_name(n) for n in names]
    met = 0.0
    total = 0
    for obj in spec.objects:
        same_shape = sum(shape == obj.shape for _, shape in parsed)
        exact = sum(_matches(colour, shape, obj) for colour, shape in parsed)
        met += min(same_shape, obj.count) / obj.count
        total += 1
        if obj.color:
            met += min(exact, obj.count) / obj.count
            total += 1
        if spec.category == "counting":
            met += float(exact == obj.count)
            total += 1
    _, contradictions = _assign(spec, parsed)
    return met / (total + contradictions)


def layout_score(spec: Any, names: Sequence[str], boxes: Sequence[Box]) -> float:
    """R_spa of one chain's planned layout against a prompt spec (see the module docstring)."""
    world = _world()

    drawn = [i for i, box in enumerate(boxes) if _has_area(box)]
    parsed = [parse_object_name(names[i]) for i in drawn]
    drawn_boxes = [boxes[i] for i in drawn]
    slots, _ = _assign(spec, parsed)
    requirements = [
        len(members) / obj.count for obj, members in zip(spec.objects, slots, strict=True)
    ]
    pairs = [(a, b) for a in range(len(drawn_boxes)) for b in range(a + 1, len(drawn_boxes))]
    if pairs:
        collisions = sum(box_iou(drawn_boxes[a], drawn_boxes[b]) >= COLLISION_IOU for a, b in pairs)
        requirements.append(1.0 - collisions / len(pairs))
    if spec.relation is not None:
        first, second = spec.objects[0], spec.objects[1]
        holds = any(
            world.relation_holds(spec.relation, drawn_boxes[a], drawn_boxes[b])
            for a, (ca, sa) in enumerate(parsed)
            if _matches(ca, sa, first)
            for b, (cb, sb) in enumerate(parsed)
            if b != a and _matches(cb, sb, second)
        )
        requirements.append(float(holds))
    return float(np.mean(requirements))


class WorldJudge:
    """Exact judge for world prompts: grammar for prompts, pixel detector for images."""

    reads_layout_images = False
    """R_spa is judged from the chain's boxes, which are what the drawn layout shows."""

    def __init__(self, cache_size: int = 4096) -> None:
        """A judge with a small cache of detections (ground and image see the same pictures)."""
        self.stats: dict[str, float] = {"requests": 0, "failures": 0}
        self._cache: OrderedDict[bytes, list[Any]] = OrderedDict()
        self._cache_size = cache_size

    def detect(self, image: Any) -> list[Any]:
        """The world detector's detections, cached by the image's pixels."""
        rgb = image if getattr(image, "mode", None) == "RGB" else image.convert("RGB")
        key = hashlib.blake2b(rgb.tobytes(), digest_size=16, person=b"gotr1-world").digest()
        key += f"{rgb.width}x{rgb.height}".encode()
        found = self._cache.get(key)
        if found is None:
            found = _world().detect(rgb)
            self._cache[key] = found
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return found

    def __repr__(self) -> str:
        return "WorldJudge()"

    def _per_prompt(self, prompts: Sequence[str], score: Any) -> JudgeScores:
        values: list[float | None] = []
        reasons: list[str | None] = []
        for index, prompt in enumerate(prompts):
            try:
                spec = _spec(str(prompt))
            except ValueError as error:
                values.append(None)
                reasons.append(str(error))
                continue
            values.append(float(score(index, spec)))
            reasons.append(None)
        result = JudgeScores.from_lists(values, reasons)
        self.stats["requests"] += len(prompts)
        self.stats["failures"] += result.num_failed
        return result

    def semantic(self, prompts: Sequence[str], chains: Sequence[Any]) -> JudgeScores:
        """R_sem: the prompt's objects, colours and counts captured by the chain's names."""
        _check(prompts, chains)
        return self._per_prompt(prompts, lambda i, spec: semantic_score(spec, _names(chains[i])))

    def layout(
        self, prompts: Sequence[str], chains: Sequence[Any], layout_images: Sequence[Any] | None
    ) -> JudgeScores:
        """R_spa: objects placed, no collisions, and the prompt's relation held by the planned boxes."""
        _check(prompts, chains)
        return self._per_prompt(
            prompts, lambda i, spec: layout_score(spec, _names(chains[i]), _boxes(chains[i]))
        )

    def ground(self, images: Sequence[Any], names: Sequence[Sequence[str]]) -> GroundResult:
        """Boxes for each planned name, chosen without looking at the plan: the most confident
        (then largest) matching detections (shape, and colour when named), as many as the chain
        plans objects of that name."""
        _check(images, names)
        candidates: list[list[list[Box]]] = []
        for image, image_names in zip(images, names, strict=True):
            detections = self.detect(image) if image_names else []
            per_name = []
            for name in image_names:
                colour, shape = parse_object_name(name)
                matching = [d for d in detections if detection_fits_name(d, colour, shape)]
                matching.sort(key=lambda d: (-d.confidence, -_area(d.box)))
                per_name.append([d.box for d in matching[: image_names.count(name)]])
            candidates.append(per_name)
        self.stats["requests"] += len(images)
        return GroundResult(candidates, np.zeros(len(images), dtype=bool))

    def image(self, prompts: Sequence[str], images: Sequence[Any]) -> JudgeScores:
        """R_PI: the world benchmark's soft score of the image against the prompt."""
        _check(prompts, images)
        world = _world()
        return self._per_prompt(
            prompts, lambda i, spec: world.score_detections(spec, self.detect(images[i])).soft
        )


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _names(chain: Any) -> list[str]:
    return [o.name for o in getattr(chain, "objects", [])]


def _boxes(chain: Any) -> list[Box]:
    return [tuple(o.box) for o in getattr(chain, "objects", [])]  # type: ignore[misc]


def _check(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"batch lengths differ: {len(a)} vs {len(b)}")
