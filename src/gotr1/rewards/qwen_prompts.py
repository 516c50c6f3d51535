"""What the Qwen2.5-VL judges ask, how their answers are read, and where their boxes are.

Shared by the local (transformers) and the HTTP (OpenAI-compatible) judge, so both ask exactly the
same questions and read answers the same way.

- Prompts are our own words after the paper's rubrics: R_sem and R_PI on 0–10 with the bands
  8–10 / 5–7 / 0–4, R_spa on 1–10, answers as JSON ``{"score": N}``; grounding uses the paper's
  sentence "Locate the <object>, report the bbox coordinates in JSON format."
- :func:`parse_score` and :func:`parse_boxes` read what a model actually writes (JSON inside prose
  or code fences, a bare number, ``score: 7``, ``7/10``, Qwen's ``[{"bbox_2d": [...]}]``); they
  return ``None`` for an unusable answer and never raise.
- Qwen2.5-VL reports boxes in absolute pixels of the image *as its processor resized it*
  (:func:`qwen_resized_size`, the processor's ``smart_resize``: both sides multiples of
  ``patch_size * merge_size`` = 28, area within [min_pixels, max_pixels]). :func:`model_box_to_grid`
  maps such a box (or a Qwen2-VL 0–1000 box, or a 0–1 box) onto the 0–1000 grid of the original.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from gotr1.rewards.protocol import Box

GRID = 1000

SCORE_BANDS: dict[str, tuple[int, int]] = {"sem": (0, 10), "spa": (1, 10), "pi": (0, 10)}
"""Each scored question's answer range; a score s maps to (s - lo) / (hi - lo) in [0, 1]."""

BOX_FORMATS: tuple[str, ...] = ("qwen2.5", "grid1000", "unit")
"""How a judge writes boxes: absolute pixels of the resized image (Qwen2.5-VL), a 0–1000 grid of
the image (Qwen2-VL), or fractions 0–1 of the image."""

# Qwen2.5-VL-7B-Instruct's preprocessor_config.json.
QWEN_MIN_PIXELS = 3136
QWEN_MAX_PIXELS = 12845056
QWEN_PATCH_SIZE = 14
QWEN_MERGE_SIZE = 2

_MAX_PLAN_CHARS = 4000
_SCORE_FORMAT = 'Answer with JSON only: {{"score": <integer {lo}-{hi}>}}'
SCORE_RETRY_SUFFIX = (
    "\n\nYour previous answer could not be read. Reply with exactly one JSON object such as "
    '{{"score": {example}}} and nothing else.'
)
GROUND_RETRY_SUFFIX = (
    "\n\nReply with JSON only, for example "
    '[{{"bbox_2d": [x1, y1, x2, y2], "label": "{name}"}}], or [] if it is not in the image.'
)

_OBJ_MARKUP = re.compile(r"<\|obj_start\|>(.*?)<\|obj_end\|>", re.S)
_BOX_MARKUP = re.compile(r"<\|box_start\|>(.*?)<\|box_end\|>", re.S)
_OTHER_MARKUP = re.compile(r"<\|[a-z_]+\|>|<begin_of_image>|<end_of_image>")


def readable_plan(chain: Any) -> str:
    """The chain's text for a judge to read: markup turned into ``[name] (x1,y1),(x2,y2)``."""
    text = getattr(chain, "text", None)
    if text is None:
        text = chain if isinstance(chain, str) else ""
    if not text.strip():
        objects = getattr(chain, "objects", [])
        text = " ".join(
            f"[{o.name}] ({o.box[0]},{o.box[1]}),({o.box[2]},{o.box[3]})" for o in objects
        )
    text = _OBJ_MARKUP.sub(lambda m: f"[{' '.join(m.group(1).split())}]", text)
    text = _BOX_MARKUP.sub(lambda m: " ".join(m.group(1).split()), text)
    text = _OTHER_MARKUP.sub("", text)
    text = " ".join(text.split())
    if len(text) > _MAX_PLAN_CHARS:
        text = text[:_MAX_PLAN_CHARS] + " …"
    return text or "(empty plan)"


def layout_as_text(chain: Any) -> str:
    """The planned boxes as coordinate text, one object a line (R_spa's text-coordinates ablation)."""
    objects = list(getattr(chain, "objects", []))
    if not objects:
        return "(no objects planned)"
    return "\n".join(
        f"- {o.name}: ({o.box[0]},{o.box[1]}),({o.box[2]},{o.box[3]})" for o in objects[:64]
    )


def semantic_question(prompt: str, chain: Any) -> str:
    """R_sem: does the plan capture every object and attribute of the caption (0–10)."""
    lo, hi = SCORE_BANDS["sem"]
    return (
        "Before drawing an image for a caption, a text-to-image model wrote a plan that names every "
        "object it will draw, each in [brackets] with its box (x1,y1),(x2,y2) on a 0-1000 grid.\n\n"
        f'Caption: "{prompt}"\n'
        f"Plan: {readable_plan(chain)}\n\n"
        "Judge whether the plan captures the caption:\n"
        "- completeness: every object of the caption is planned, with its attributes "
        "(colour, shape, texture) and its number;\n"
        "- faithfulness: nothing in the plan contradicts the caption (no wrong attribute, no "
        "wrong number, no object that replaces one of the caption's);\n"
        "- consistency: the planned objects agree with each other and with the prose;\n"
        "- clarity: the plan is clear and unambiguous.\n"
        f"Score from {lo} to {hi}: 8-10 every object and attribute captured with no contradiction; "
        "5-7 a minor omission or inaccuracy; 0-4 missing objects, wrong attributes or "
        "contradictions.\n" + _SCORE_FORMAT.format(lo=lo, hi=hi)
    )


def layout_question(prompt: str, chain: Any | None = None, as_text: bool = False) -> str:
    """R_spa: does the layout (drawn canvas, or coordinates as text) satisfy the caption (1–10)."""
    lo, hi = SCORE_BANDS["spa"]
    if as_text:
        head = (
            f'Here is the layout planned for the caption "{prompt}": each object with its box '
            "(x1,y1),(x2,y2) on a 0-1000 grid, where x grows to the right and y grows downward.\n"
            f"{layout_as_text(chain)}\n\n"
        )
    else:
        head = (
            f'The image is the layout planned for the caption "{prompt}": each rectangle marks '
            "where an object will be drawn, with the object's name written at the rectangle's "
            "top-left corner. The top of the image is up and its left side is left.\n\n"
        )
    return (
        head + "Judge whether the layout satisfies the spatial relations of the caption (left of, "
        "right of, above, below, on top of, next to, ...) and places every object it names.\n"
        f"Score from {lo} to {hi}: 8-10 every relation is satisfied; 4-7 the relations are "
        "partly satisfied or ambiguous; 1-3 a relation is violated or an object is missing.\n"
        + _SCORE_FORMAT.format(lo=lo, hi=hi)
    )


def ground_question(name: str) -> str:
    """The paper's grounding prompt for one planned object."""
    return f"Locate the {name}, report the bbox coordinates in JSON format."


def image_question(prompt: str) -> str:
    """R_PI: does the image match the caption (0–10)."""
    lo, hi = SCORE_BANDS["pi"]
    return (
        f'Does this image match the caption "{prompt}"? Check every object, its attributes '
        "(colour, shape, texture), the number of each object and their spatial relations.\n"
        f"Score from {lo} to {hi}: 8-10 the image matches the caption perfectly; 5-7 a minor "
        "mismatch; 0-4 a major mismatch (missing objects, wrong attributes, wrong relations).\n"
        + _SCORE_FORMAT.format(lo=lo, hi=hi)
    )


def score_retry_suffix(question: str) -> str:
    """What to add to a scoring question after an unusable answer."""
    lo, hi = SCORE_BANDS[question]
    return SCORE_RETRY_SUFFIX.format(example=(lo + hi + 1) // 2)


def ground_retry_suffix(name: str) -> str:
    """What to add to a grounding question after an unusable answer."""
    return GROUND_RETRY_SUFFIX.format(name=name.replace('"', "'"))


def band_to_unit(value: float, question: str) -> float:
    """Map a raw score in its question's band (already clamped) to [0, 1]."""
    lo, hi = SCORE_BANDS[question]
    return (min(max(value, lo), hi) - lo) / (hi - lo)


# --------------------------------------------------------------------------- answer parsing

MAX_ANSWER_CHARS = 64 * 1024
"""The longest judge answer the parsers read, in characters. The answers asked for are a few
hundred characters (``score_max_new_tokens``, ``ground_max_new_tokens``); a longer one is
unusable (the parsers return None), a counted judge failure like any other unusable answer."""
MAX_JSON_ATTEMPTS = 256
"""Failed JSON decodes (an opening bracket where no value starts) tried per answer segment before
the rest is left to the prose patterns."""

# The patterns below match every run of whitespace (or markdown emphasis) with one possessive
# quantifier (``*+``: never given back), so no two quantifiers can share a run and a failing
# match costs time linear in the text (``\s*,?\s*`` tried every split of a long run).
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*+\s*+(.*?)```", re.S)
_SCORE_KEYS = ("score", "rating", "overall_score", "final_score", "overall", "grade")
_NUMBER = r"([-+]?\d+(?:\.\d+)?)"
_EMPHASIS = r"[\s*_]*+"  # spaces and markdown bold / italics: **Score:** **9**
_OUT_OF = rf"(?:{_EMPHASIS}(?:/|\bout\s++of\b){_EMPHASIS}(\d+(?:\.\d+)?))"
_SCORE_KEY_PATTERN = re.compile(
    rf"\b(?:final\s++|overall\s++)?(?:score|rating|grade)\b"
    rf"(?:[\s*_\"']*+(?:is|of)\b)?[\s*_:=\"']*+{_NUMBER}{_OUT_OF}?",
    re.I,
)
# "I'd rate it 8 out of 10", "I would give this image a 7/10": a rating verb, a few words without
# digits, then a number out of another. A number after a verb without the "out of" part is not
# taken for a score ("give 3 circles").
_RATED_PATTERN = re.compile(
    r"\b(?:rate|rated|rating|give|gave|giving|award|awarded|assign|assigned|scored)\b"
    rf"[^\d\n.]{{0,24}}?{_NUMBER}{_OUT_OF}",
    re.I,
)
_BARE_NUMBER = re.compile(rf"^{_EMPHASIS}{_NUMBER}{_OUT_OF}?{_EMPHASIS}(?:\.\s*+)?$", re.I)
_NOT_FOUND = re.compile(
    r"^\s*+(?:none|null|no|n/a|not found|nothing)\s*+(?:\.\s*+)?$|"
    r"\b(?:not (?:present|visible|found|shown|in the image)|there is no|there are no|"
    r"cannot (?:find|locate|see)|can't (?:find|locate|see)|unable to (?:find|locate)|"
    r"does not (?:appear|exist|contain))\b",
    re.I,
)
_COORDINATE = r"\s*+([-+]?\d+(?:\.\d+)?)\s*+"
_PAIR_BOX = re.compile(
    rf"\({_COORDINATE},{_COORDINATE}\)\s*+(?:,\s*+)?(?:(?:to|-)\s*+)?\({_COORDINATE},{_COORDINATE}\)"
)
_BOX_KEYS = ("bbox_2d", "bbox", "box", "bbox_2D", "box_2d", "bounding_box", "coordinates")


def _segments(text: str) -> list[str]:
    """Code-fence contents first (models often wrap JSON in them), then the whole answer."""
    return [m.group(1) for m in _FENCE.finditer(text)] + [text]


class _NextFinder:
    """``text.find(char, start)`` for starts that never decrease: each character's next position
    is searched for again only once the start has passed it (linear over a whole scan)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.found: dict[str, int] = {}

    def __call__(self, char: str, start: int) -> int:
        at = self.found.get(char)
        if at is None or 0 <= at < start:
            at = self.text.find(char, start)
            self.found[char] = at
        return at


def _json_values(text: str) -> list[Any]:
    """Every JSON object or array that can be decoded starting somewhere in the text, in order
    (after `MAX_JSON_ATTEMPTS` failed starts the rest of the text is not tried)."""
    decoder = json.JSONDecoder()
    find = _NextFinder(text)
    values: list[Any] = []
    index = 0
    failures = 0
    limit = len(text)
    while index < limit and failures < MAX_JSON_ATTEMPTS:
        start = min((p for p in (find("{", index), find("[", index)) if p >= 0), default=-1)
        if start < 0:
            break
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            # Try a Python-ish dict with single quotes before giving up on this brace.
            value, end = None, start + 1
            closing = find("}" if text[start] == "{" else "]", start)
            if closing > start:
                try:
                    value = json.loads(text[start : closing + 1].replace("'", '"'))
                    end = closing + 1
                except (ValueError, RecursionError):
                    value = None
            if value is None:
                failures += 1
        if value is not None:
            values.append(value)
        index = max(end, start + 1)
    return values


def _finite(value: Any) -> float | None:
    """A finite float from a JSON number or numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = _BARE_NUMBER.match(value)
        if not match:
            return None
        number = float(match.group(1))
    else:
        return None
    return number if math.isfinite(number) else None


def _score_from_json(value: Any) -> float | None:
    """The score held by a decoded JSON value ({"score": 7}, [7], 7), or None."""
    if isinstance(value, dict):
        lowered = {str(k).lower(): v for k, v in value.items()}
        for key in _SCORE_KEYS:
            if key in lowered:
                found = _finite(lowered[key])
                if found is not None:
                    return found
                if isinstance(lowered[key], dict | list):
                    return _score_from_json(lowered[key])
        return None
    if isinstance(value, list) and len(value) == 1:
        return _score_from_json(value[0])
    return _finite(value)


def parse_score(text: str | None, lo: float, hi: float) -> float | None:
    """Read a score from a judge's answer and clamp it to [lo, hi]; None when there is none.

    Accepted, in order: a JSON object with a ``score`` (or ``rating``…) key anywhere in the answer
    or inside a code fence; ``score: 7`` / ``Score is 7/10`` / ``**Final Score:** **9**`` in
    prose; a rating verb with a fraction (``I'd rate it 8 out of 10``); an answer that is only a
    number (``7``, ``7/10``, ``**7**``, ``8 out of 10``). A fraction ``a/b`` (or ``a out of b``)
    with b ≠ hi is rescaled to the band. Anything else (prose without a score, several unlabeled
    numbers, "3 out of 4 objects", garbage) is unusable, and so is an answer longer than
    `MAX_ANSWER_CHARS`.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    if len(text) > MAX_ANSWER_CHARS:
        return None
    value: float | None = None
    for segment in _segments(text):
        for decoded in _json_values(segment):
            value = _score_from_json(decoded)
            if value is not None:
                break
        if value is not None:
            break
        stripped = segment.strip()
        try:
            decoded = json.loads(stripped)
        except (ValueError, RecursionError):
            decoded = None
        if isinstance(decoded, int | float) and not isinstance(decoded, bool):
            value = _finite(decoded)
            if value is not None:
                break
    if value is None:
        for pattern in (_SCORE_KEY_PATTERN, _RATED_PATTERN, _BARE_NUMBER):
            match = pattern.match(text) if pattern is _BARE_NUMBER else pattern.search(text)
            if match:
                number = float(match.group(1))
                if match.group(2):
                    denominator = float(match.group(2))
                    if denominator > 0 and denominator != hi:
                        number = lo + number / denominator * (hi - lo)
                value = number if math.isfinite(number) else None
                break
    if value is None:
        return None
    return float(min(max(value, lo), hi))


def _box_from(value: Any) -> list[float] | None:
    """Four finite numbers from a JSON list, or None."""
    if isinstance(value, list | tuple) and len(value) == 4:
        numbers = [_finite(v) for v in value]
        if all(n is not None for n in numbers):
            return numbers  # type: ignore[return-value]
    pairs = isinstance(value, list | tuple) and len(value) == 2  # [[x1, y1], [x2, y2]]
    if pairs and all(isinstance(p, list | tuple) and len(p) == 2 for p in value):
        return _box_from([value[0][0], value[0][1], value[1][0], value[1][1]])
    return None


def _boxes_from_json(value: Any) -> list[list[float]] | None:
    """Boxes held by a decoded JSON value; [] for an explicit empty answer; None if it has none."""
    if isinstance(value, dict):
        lowered = {str(k).lower(): v for k, v in value.items()}
        for key in _BOX_KEYS:
            if key.lower() in lowered:
                box = _box_from(lowered[key.lower()])
                if box is not None:
                    return [box]
                inner = _boxes_from_json(lowered[key.lower()])
                if inner is not None:
                    return inner
        for key in ("objects", "results", "detections", "boxes"):
            if key in lowered:
                return _boxes_from_json(lowered[key])
        return None
    if isinstance(value, list):
        if not value:
            return []
        single = _box_from(value)
        if single is not None:
            return [single]
        boxes: list[list[float]] = []
        for item in value:
            found = _boxes_from_json(item)
            if found:
                boxes.extend(found)
        return boxes or None
    return None


def parse_boxes(text: str | None) -> list[list[float]] | None:
    """Read the boxes of a grounding answer, in the model's own coordinates.

    Returns a list of ``[x1, y1, x2, y2]`` (possibly empty when the answer says the object is not
    there: ``[]``, "none", "there is no …"), or None for an unusable answer. Accepted: Qwen's
    ``[{"bbox_2d": [...], "label": ...}]`` (bare, in prose or a code fence), a dict with a box key,
    a bare ``[x1, y1, x2, y2]``, and ``(x1,y1),(x2,y2)`` pairs. An answer cut off by the token
    limit (its outer list never closes) keeps every complete box before the cut. An answer
    longer than `MAX_ANSWER_CHARS` is unusable.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    if len(text) > MAX_ANSWER_CHARS:
        return None
    for segment in _segments(text):
        found: list[list[float]] | None = None
        for decoded in _json_values(segment):  # several when a truncated list did not decode
            boxes = _boxes_from_json(decoded)
            if boxes is not None:
                found = (found or []) + boxes
        if found is not None:
            return found
    pairs = [[float(v) for v in m.groups()] for m in _PAIR_BOX.finditer(text)]
    if pairs:
        return pairs
    if _NOT_FOUND.search(text):
        return []
    return None


# --------------------------------------------------------------------------- box coordinates


def qwen_resized_size(
    width: int,
    height: int,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
    patch_size: int = QWEN_PATCH_SIZE,
    merge_size: int = QWEN_MERGE_SIZE,
) -> tuple[int, int]:
    """(width, height) of an image after Qwen2-VL/2.5-VL's processor resized it (``smart_resize``).

    Both sides become multiples of ``patch_size * merge_size``, the aspect ratio is kept as well as
    it can be, and the area ends within [min_pixels, max_pixels].
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    factor = patch_size * merge_size
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of a {width}x{height} image is over 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return int(w_bar), int(h_bar)


def model_box_to_grid(
    box: Sequence[float], box_format: str, model_size: tuple[int, int] | None = None
) -> Box:
    """Map a box as the judge wrote it onto the 0–1000 grid of the original image.

    ``model_size`` is (width, height) of the image as the model saw it (needed for ``qwen2.5``,
    whose boxes are absolute pixels of that resized image). The resize keeps the image's content
    edge to edge, so a fraction of the resized image is the same fraction of the original. Corners
    are put in order and clamped to the grid.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if box_format == "qwen2.5":
        if model_size is None or model_size[0] <= 0 or model_size[1] <= 0:
            raise ValueError("qwen2.5 boxes need the size of the image the model saw")
        sx, sy = GRID / model_size[0], GRID / model_size[1]
    elif box_format == "grid1000":
        sx = sy = 1.0
    elif box_format == "unit":
        sx = sy = float(GRID)
    else:
        raise ValueError(f"unknown box format {box_format!r}; expected one of {BOX_FORMATS}")
    xs = sorted((x1 * sx, x2 * sx))
    ys = sorted((y1 * sy, y2 * sy))

    def clamp(v: float) -> int:
        return int(min(max(round(v), 0), GRID))

    return (clamp(xs[0]), clamp(ys[0]), clamp(xs[1]), clamp(ys[1]))
