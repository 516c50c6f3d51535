"""The GoT chain format: prose that plans every object with a bounding box.

A chain names objects as ``<|obj_start|>yellow vase<|obj_end|>`` followed (after any prose) by
``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, coordinates on a 0–1000 grid of the image. This module
parses chains written by a model (which may be anything at all), writes them, draws the planned
layout for a judge, and measures box overlap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

OBJ_START = "<|obj_start|>"
OBJ_END = "<|obj_end|>"
BOX_START = "<|box_start|>"
BOX_END = "<|box_end|>"
GOT_MARKUP_TOKENS: tuple[str, ...] = (OBJ_START, OBJ_END, BOX_START, BOX_END)
BEGIN_OF_IMAGE = "<begin_of_image>"
END_OF_IMAGE = "<end_of_image>"

GRID = 1000
"""Coordinates live on [0, GRID]; a box spans (x1, y1) top-left to (x2, y2) bottom-right."""

Box = tuple[int, int, int, int]

_MARKER = re.compile(r"<\|(obj_start|obj_end|box_start|box_end)\|>")
# Every run of whitespace is matched by one possessive quantifier (``\s*+``: never given back),
# so a malformed box fails in time linear in its length (``\s*,?\s*`` tried every split of a
# long run of spaces).
_NUMBER = r"\s*+([-+]?\d+(?:\.\d*)?)\s*+"
_BOX_BODY = re.compile(rf"^\s*+\({_NUMBER},{_NUMBER}\)\s*+(?:,\s*+)?\({_NUMBER},{_NUMBER}\)\s*+$")
_MAX_REPORTED_TEXT = 40


@dataclass(frozen=True)
class ChainObject:
    """One planned object: its name as written and its box on the 0–1000 grid."""

    name: str
    box: Box


@dataclass
class Chain:
    """A parsed chain: the objects it plans, what could not be parsed, and the source text."""

    objects: list[ChainObject] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def names(self) -> list[str]:
        """The planned object names, in chain order."""
        return [obj.name for obj in self.objects]

    @property
    def boxes(self) -> list[Box]:
        """The planned boxes, in chain order."""
        return [obj.box for obj in self.objects]


def _snippet(text: str) -> str:
    """A short, printable excerpt of user text for an error message."""
    text = text.replace("\n", " ")
    if len(text) > _MAX_REPORTED_TEXT:
        text = text[:_MAX_REPORTED_TEXT] + "…"
    return repr(text)


def _coordinate(raw: str, errors: list[str], where: str) -> int:
    """Turn one written coordinate into an int on the grid, reporting rounding and clamping."""
    shown = raw.strip() if len(raw) <= 12 else raw.strip()[:12] + "…"
    sign = -1 if raw.startswith("-") else 1
    digits = raw.lstrip("+-")
    integer_part, _, fraction = digits.partition(".")
    if len(integer_part) > 6:  # avoids giant int conversions; anything this long is out of range
        value = sign * (GRID + 1)
    else:
        value = sign * int(integer_part or "0")
        if fraction.strip("0"):
            rounded = round(sign * float(f"{integer_part or '0'}.{fraction}"))
            errors.append(f"{where}: non-integer coordinate {shown} rounded to {rounded}")
            value = rounded
    if value < 0 or value > GRID:
        clamped = min(max(value, 0), GRID)
        errors.append(f"{where}: coordinate {shown} out of range [0,{GRID}], clamped to {clamped}")
        value = clamped
    return value


def _parse_box(body: str, errors: list[str], where: str) -> Box | None:
    """Parse the text between box markers, or report why it is not a box."""
    match = _BOX_BODY.match(body)
    if match is None:
        errors.append(f"{where}: malformed box {_snippet(body)}, expected (x1,y1),(x2,y2)")
        return None
    x1, y1, x2, y2 = (_coordinate(group, errors, where) for group in match.groups())
    if x1 > x2 or y1 > y2:
        errors.append(f"{where}: corners swapped in box {(x1, y1, x2, y2)} (kept as written)")
    elif x1 == x2 or y1 == y2:
        errors.append(f"{where}: zero-area box {(x1, y1, x2, y2)}")
    return (x1, y1, x2, y2)


def parse_chain(text: str) -> Chain:
    """Parse a GoT chain into planned objects; never raises, listing everything it skipped in `errors`."""
    if not isinstance(text, str):
        return Chain(errors=[f"chain is not text but {type(text).__name__}"], text="")
    chain = Chain(text=text)
    errors = chain.errors
    markers = [(m.group(1), m.start(), m.end()) for m in _MARKER.finditer(text)]
    pending_name: str | None = None  # an object whose box has not been seen yet
    pending_at = 0
    i = 0
    while i < len(markers):
        kind, start, end = markers[i]
        following = markers[i + 1] if i + 1 < len(markers) else None
        if kind == "obj_start":
            if pending_name is not None:
                errors.append(f"char {pending_at}: object {_snippet(pending_name)} has no box")
                pending_name = None
            if following is None or following[0] != "obj_end":
                errors.append(f"char {start}: {OBJ_START} not closed by {OBJ_END}")
                i += 1
                continue
            name = " ".join(text[end : following[1]].split())
            if not name:
                errors.append(f"char {start}: empty object name")
            else:
                pending_name, pending_at = name, start
            i += 2
        elif kind == "box_start":
            if following is None or following[0] != "box_end":
                errors.append(f"char {start}: {BOX_START} not closed by {BOX_END}")
                i += 1
                continue
            body = text[end : following[1]]
            if pending_name is None:
                errors.append(f"char {start}: box {_snippet(body)} has no object")
            else:
                box = _parse_box(body, errors, f"char {start} ({_snippet(pending_name)})")
                if box is not None:
                    chain.objects.append(ChainObject(pending_name, box))
                pending_name = None
            i += 2
        else:
            errors.append(f"char {start}: stray <|{kind}|>")
            i += 1
    if pending_name is not None:
        errors.append(f"char {pending_at}: object {_snippet(pending_name)} has no box")
    return chain


def format_object(name: str, box: Sequence[int]) -> str:
    """Write one object with its box in GoT markup."""
    clean = " ".join(str(name).split())
    if not clean or any(marker in clean for marker in GOT_MARKUP_TOKENS):
        raise ValueError(f"object name {name!r} is empty or contains GoT markup")
    x1, y1, x2, y2 = (int(v) for v in box)
    return f"{OBJ_START}{clean}{OBJ_END} {BOX_START}({x1},{y1}),({x2},{y2}){BOX_END}"


def format_chain(
    objects: Iterable[ChainObject | tuple[str, Sequence[int]]],
    sentences: Sequence[str] | None = None,
) -> str:
    """Write a chain for the given objects; each sentence template's ``{object}`` receives one object's markup."""
    pairs = [(o.name, o.box) if isinstance(o, ChainObject) else (o[0], o[1]) for o in objects]
    if sentences is None:
        sentences = ["There is a {object}."] * len(pairs)
    if len(sentences) != len(pairs):
        raise ValueError(f"{len(sentences)} sentence templates for {len(pairs)} objects")
    return " ".join(
        template.replace("{object}", format_object(name, box))
        for template, (name, box) in zip(sentences, pairs, strict=True)
    )


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; a box with swapped corners has no area."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    area_a = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
    area_b = max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
    inter_w = min(ax2, bx2) - max(ax1, bx1)
    inter_h = min(ay2, by2) - max(ay1, by1)
    inter = max(0.0, inter_w) * max(0.0, inter_h) if area_a > 0 and area_b > 0 else 0.0
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


# Well-separated colours for boxes in drawn layouts (Kelly's contrast palette, light ones left out).
LAYOUT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 140, 60),
    (0, 90, 200),
    (245, 130, 48),
    (145, 30, 180),
    (0, 150, 160),
    (180, 130, 0),
    (240, 50, 230),
    (128, 0, 0),
    (0, 0, 128),
    (110, 110, 110),
    (170, 110, 40),
)


def _font(pixels: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A scalable font of roughly the given height (Pillow's bundled one; bitmap fallback)."""
    try:
        return ImageFont.load_default(size=pixels)
    except (TypeError, OSError):  # Pillow without FreeType support
        return ImageFont.load_default()


def render_layout(
    chain: Chain | Sequence[ChainObject], size: int = 448, max_objects: int = 64
) -> Image.Image:
    """Draw the planned boxes on a blank canvas, each name at its box's top-left corner (what R_spa judges)."""
    objects = chain.objects if isinstance(chain, Chain) else list(chain)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, size // 28))
    line = max(2, size // 150)
    scale = size / GRID
    for index, obj in enumerate(objects[:max_objects]):
        colour = LAYOUT_PALETTE[index % len(LAYOUT_PALETTE)]
        x1, y1, x2, y2 = obj.box
        left, right = sorted((x1 * scale, x2 * scale))
        top, bottom = sorted((y1 * scale, y2 * scale))
        draw.rectangle((left, top, right, bottom), outline=colour, width=line)
        label_box = draw.textbbox((0, 0), obj.name, font=font)
        width, height = label_box[2] - label_box[0], label_box[3] - label_box[1]
        tx = min(max(left, 0), size - width - 4)
        ty = min(max(top, 0), size - height - 4)
        draw.rectangle((tx, ty, tx + width + 4, ty + height + 4), fill=colour)
        draw.text((tx + 2 - label_box[0], ty + 2 - label_box[1]), obj.name, fill="white", font=font)
    return canvas
