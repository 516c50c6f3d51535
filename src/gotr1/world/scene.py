"""Scenes of coloured shapes: sampled to satisfy a prompt, rendered to pixels, related by GenEval's rule.

Boxes live on the 0–1000 grid but are snapped to a 64-cell lattice, so a render at 64 px (or any
multiple) puts every edge exactly on a pixel boundary and the detector can recover boxes exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from gotr1.boxes import relative_position
from gotr1.chain import GRID, Box
from gotr1.world.grammar import BACKGROUND, COLORS, SHAPES, PromptSpec

LATTICE = 64
"""Scene boxes are multiples of GRID/LATTICE; renders at multiples of LATTICE pixels are exact."""
MIN_SIDE_CELLS, MAX_SIDE_CELLS = 13, 20
"""Object side in lattice cells (13–20 px of a 64 px image: big enough for an 8x8-token tokenizer)."""
GAP_CELLS = 2
"""Minimum empty lattice cells between two objects' boxes."""
RELATION_MARGIN = 0.6
"""Sampled related pairs clear GenEval's 0.5 position threshold by this much, so the relation is plain."""


def _to_grid(cells: int) -> int:
    """Lattice cells to 0–1000 grid units."""
    return round(cells * GRID / LATTICE)


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its shape, its colour name and its box on the 0–1000 grid."""

    shape: str
    color: str
    box: Box

    @property
    def name(self) -> str:
        """The full noun phrase, e.g. "red circle"."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A set of objects on the plain background."""

    objects: tuple[SceneObject, ...]


RELATION_NAMES = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
"""World relation keys to the names `relative_position` returns."""


def relation_holds(relation: str, box_a: Sequence[float], box_b: Sequence[float]) -> bool:
    """Whether A stands in `relation` ("left", "right", "above", "below") to B by GenEval's rule."""
    return RELATION_NAMES[relation] in relative_position(box_a, box_b)


def _relation_strength(relation: str, box_a: Box, box_b: Box) -> float:
    """How far past zero the pair's normalised offset goes along the relation's direction."""
    ax = (box_a[0] + box_a[2]) / 2 - (box_b[0] + box_b[2]) / 2
    ay = (box_a[1] + box_a[3]) / 2 - (box_b[1] + box_b[3]) / 2
    norm = math.hypot(ax, ay) or 1.0
    direction = {"left": (-1, 0), "right": (1, 0), "above": (0, -1), "below": (0, 1)}[relation]
    return (ax * direction[0] + ay * direction[1]) / norm


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two lattice boxes are separated by at least GAP_CELLS on some axis."""
    return (
        a[2] + GAP_CELLS <= b[0]
        or b[2] + GAP_CELLS <= a[0]
        or a[3] + GAP_CELLS <= b[1]
        or b[3] + GAP_CELLS <= a[1]
    )


def _place(rng: random.Random, count: int) -> list[tuple[int, int, int, int]] | None:
    """Random non-touching square lattice boxes, or None if this attempt got crowded."""
    placed: list[tuple[int, int, int, int]] = []
    max_side = MAX_SIDE_CELLS if count <= 2 else MAX_SIDE_CELLS - 3
    for _ in range(count):
        for _attempt in range(50):
            side = rng.randint(MIN_SIDE_CELLS, max_side)
            x, y = rng.randint(0, LATTICE - side), rng.randint(0, LATTICE - side)
            box = (x, y, x + side, y + side)
            if all(_apart(box, other) for other in placed):
                placed.append(box)
                break
        else:
            return None
    return placed


def sample_scene(spec: PromptSpec, rng: random.Random) -> Scene:
    """A scene that satisfies the prompt: the right objects, colours, counts and relation."""
    wanted: list[tuple[str, str | None]] = []
    for obj in spec.objects:
        wanted.extend([(obj.shape, obj.color)] * obj.count)
    for _ in range(10_000):
        cells = _place(rng, len(wanted))
        if cells is None:
            continue
        boxes = [tuple(_to_grid(c) for c in box) for box in cells]
        if spec.relation is not None and (
            _relation_strength(spec.relation, boxes[0], boxes[1]) < RELATION_MARGIN
            or not relation_holds(spec.relation, boxes[0], boxes[1])
        ):
            continue
        objects = tuple(
            SceneObject(shape, color or rng.choice(list(COLORS)), box)  # type: ignore[arg-type]
            for (shape, color), box in zip(wanted, boxes, strict=True)
        )
        return Scene(objects)
    raise RuntimeError(f"could not place a scene for {spec}")  # pragma: no cover - not reachable


def random_scene(rng: random.Random, max_objects: int = 4) -> Scene:
    """A scene of 1..max_objects random shapes and colours (detector and tokenizer training data)."""
    count = rng.randint(1, max_objects)
    while (cells := _place(rng, count)) is None:
        pass
    return Scene(
        tuple(
            SceneObject(rng.choice(SHAPES), rng.choice(list(COLORS)), tuple(map(_to_grid, c)))  # type: ignore[arg-type]
            for c in cells
        )
    )


def render_scene(scene: Scene, size: int = 64) -> Image.Image:
    """Draw the scene at `size` x `size` pixels, each object filling its box exactly."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x1, y1, x2, y2 = (round(v * size / GRID) for v in obj.box)
        left, top, right, bottom = x1, y1, x2 - 1, y2 - 1  # PIL's coordinates are inclusive
        fill = COLORS[obj.color]
        if obj.shape == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        elif obj.shape == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(left, bottom), (right, bottom), ((left + right) / 2, top)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return image
