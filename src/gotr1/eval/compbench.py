"""T2I-CompBench's scoring rules, implemented exactly as the official scripts compute them.

Every rule here mirrors a named file of the official repository (github Karine-Huang/T2I-CompBench,
MIT licence): the same thresholds, the same strict/non-strict comparisons, the same edge cases,
the same rounding. The *evidence* (boxes, confidences, yes-probabilities) comes from a pluggable
:class:`gotr1.eval.evidence.EvidenceScorer` instead of UniDet / BLIP-VQA / CLIP, so a score
computed here is "T2I-CompBench rules, judged by <scorer>", never the official number; every
summary this module writes says which scorer judged it.

Category -> metric (:data:`CATEGORY_METRIC`): colour/shape/texture use the BLIP-VQA product rule,
spatial the UniDet 2D rule, numeracy the UniDet counting rule, non-spatial the CLIP similarity
(a scorer that provides ``clip_score``, :mod:`gotr1.eval.hf_scorers`, computes it as
CLIP_similarity.py does; any other scorer's yes-probability for the whole prompt stands in, *not*
on CLIP's scale, labelled "clip stand-in: yes-probability (scorer)" in summaries,
:data:`METRIC_LABELS`), complex the 3-in-1 average of the three. 3D-spatial (depth-based) is not
implemented.

Where the rest lives:

- ``gotr1 eval compbench`` (:mod:`gotr1.eval.commands`) generates ``--images-per-prompt`` images
  per prompt with the policy into the official layout (:func:`gotr1.eval.layouts.compbench_items`,
  sharded and resumable through :mod:`gotr1.eval.generation`, seeds and chains recorded), then
  scores each category with :func:`score_image` into
  :func:`gotr1.eval.layouts.compbench_result_dir` (complex: metrics "blip", "spatial",
  "spatial_3_in_1", "clip" and "3_in_1", as the official scripts write them) and writes the
  labelled :func:`summary_record` / :func:`summary_markdown`.
- The evidence scorers are in :mod:`gotr1.eval.scorers`: ``QwenEvidenceScorer`` (Qwen2.5-VL
  grounding -> ``detect``, yes/no token probabilities -> ``yes_prob``, a colour question ->
  ``colour``; local or over an OpenAI-compatible server) and ``WorldEvidenceScorer`` (the
  world's exact detector, adapted to the same protocol).
- ``tests/test_eval_e2e.py`` runs both protocols end to end on a world-tiny-shaped policy with
  the world scorer; ``docs/benchmarks.md`` describes the commands, layouts and the measured
  prompt-parsing agreement.

Official quirks kept on purpose (each has a test):

- The relation is the first phrase of ``vocab_spatial`` found as a substring, and the official
  ``determine_position`` has no branch for "on top of" (only "on the top of"): complex prompts
  with "on top of" score position 0, hence at most 0.25*c1 + 0.25*c2 <= 0.5, hence 0 after the
  ``score < 0.5`` cutoff unless both confidences are exactly 1.
- One object found gives 0.25*conf < 0.5, so the cutoff always zeroes it.
- BLIP-VQA answers are rounded to 4 decimals per question, multiplied in float32, and the
  image's answer is written as a 4-decimal *string*; a prompt with no noun phrase scores 1.
- Numeracy: a prompt with no parsed object would divide by zero in the official script; here it
  scores 0.0 (and :func:`numeracy_score` reports it through ``ValueError`` only on bad input).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gotr1.eval.evidence import Detection, EvidenceScorer, PixelBox, capabilities
from gotr1.eval.prompt_parsing import (
    blip_questions,
    clip_text_without_adjectives,
    find_spatial_relation,
    parse_complex_spatial,
    parse_numeracy,
    parse_spatial,
)

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "BLIP_MAX_PHRASES",
    "CATEGORIES",
    "CATEGORY_METRIC",
    "DISTANCE_THRESHOLD",
    "IMAGES_PER_PROMPT",
    "IOU_THRESHOLD",
    "METRIC_LABELS",
    "NUMERACY_ALIASES",
    "SPATIAL_CUTOFF",
    "SPATIAL_PERSON_WORDS",
    "UNIDET_SCORE_THRESHOLD",
    "ImageScore",
    "blip_answer",
    "blip_vqa_score",
    "category_mean",
    "complex_kind",
    "missing_capabilities",
    "determine_position",
    "first_detection",
    "numeracy_duplicate",
    "numeracy_dedup",
    "numeracy_score",
    "score_attribute",
    "score_complex",
    "score_image",
    "score_nonspatial",
    "score_numeracy",
    "score_spatial",
    "spatial_image_score",
    "spatial_iou",
    "spatial_label",
    "spatial_score",
    "summary_markdown",
    "summary_record",
    "three_in_one",
    "to_unidet_pixels",
    "unidet_input_size",
    "vqa_result",
    "yes_ratio",
]

CATEGORIES: tuple[str, ...] = (
    "color",
    "shape",
    "texture",
    "spatial",
    "non_spatial",
    "complex",
    "numeracy",
)
"""The T2I-CompBench categories gotr1 scores (val prompt files ``<category>_val.txt``)."""

CATEGORY_METRIC: dict[str, str] = {
    "color": "blip",
    "shape": "blip",
    "texture": "blip",
    "spatial": "spatial",
    "non_spatial": "clip",
    "complex": "3_in_1",
    "numeracy": "numeracy",
}
"""Which official metric scores each category: stable keys, named after the official metrics and
result folders (``annotation_clip`` ...). "clip" here is *not* a CLIP score (see
:data:`METRIC_LABELS`)."""

METRIC_LABELS: dict[str, str] = {
    "blip": "blip: BLIP-VQA product rule over yes-probabilities (scorer)",
    "spatial": "spatial: UniDet 2D rule over boxes (scorer)",
    "numeracy": "numeracy: UniDet counting rule over boxes (scorer)",
    "clip": "clip stand-in: yes-probability (scorer)",
    "3_in_1": "3_in_1: blip + spatial + clip stand-in: yes-probability (scorer)",
}
CLIP_METRIC_LABELS: dict[str, str] = {
    "clip": "clip: CLIP image-text cosine (CLIP_similarity.py)",
    "3_in_1": "3_in_1: blip + spatial + clip: CLIP image-text cosine (3_in_1.py)",
}
"""The labels of the metrics that change when the scorer provides ``clip_score``."""

CATEGORY_NEEDS: dict[str, frozenset[str]] = {
    "color": frozenset({"yes_prob"}),
    "shape": frozenset({"yes_prob"}),
    "texture": frozenset({"yes_prob"}),
    "spatial": frozenset({"detect"}),
    "numeracy": frozenset({"detect"}),
    "non_spatial": frozenset({"clip_score"}),
    "complex": frozenset({"yes_prob", "detect", "clip_score"}),
}
"""The evidence each category's rule asks for; a scorer without ``clip_score`` but with
``yes_prob`` answers the CLIP part with the stand-in."""
"""What each metric key means in gotr1's summaries. The non-spatial metric and the "action" part of
the 3-in-1 are the scorer's yes-probability that the image shows the prompt, standing in for the
official CLIP similarity and not on its scale."""

IMAGES_PER_PROMPT = 10
"""Images per prompt in the official protocol (``--n_iter 10``; 3_in_1.py hard-codes ``num=10``)."""
DISTANCE_THRESHOLD = 150.0
"""Pixels (of the ~480 px UniDet input) under which "next to / near / on side of" scores 1."""
IOU_THRESHOLD = 0.1
"""IoU under which a left/right/top/bottom relation scores 1 (else 0.1 / IoU)."""
SPATIAL_CUTOFF = 0.5
"""2D-spatial image scores strictly below this become 0."""
UNIDET_SCORE_THRESHOLD = 0.5
"""UniDet keeps detections with score > 0.5 (``--confidence-threshold 0.5``; detectron2 filters
``scores > thresh``). Detections at or below it do not exist for the spatial/numeracy rules."""
UNIDET_SHORT_SIDE = 479
UNIDET_MAX_SIZE = 480
"""UniDet's input transform: ``Resize(size=479, max_size=480)``; boxes live in that image."""
BLIP_MAX_PHRASES = 8
"""BLIP_vqa.py's default ``--np_num``: questions for at most the first 8 noun phrases."""

SPATIAL_PERSON_WORDS: tuple[str, ...] = ("girl", "boy", "man", "woman")
"""2D_spatial_eval.py maps these objects to UniDet's "person"."""
NUMERACY_ALIASES: dict[str, str] = {
    "boy": "person",
    "girl": "person",
    "man": "person",
    "woman": "person",
    "ship": "boat",
    "telivision": "tv",  # sic: the official script's spelling, so "television" is *not* mapped
    "goldfish": "fish",
    "painting": "picture",
}
"""numeracy_eval.py's renaming of prompt objects into UniDet's label space."""


# --------------------------------------------------------------------------- geometry (UniDet)


def unidet_input_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the image UniDet sees: torchvision ``Resize(479, max_size=480)``.

    A square image becomes 479 x 479; boxes and the 150-px distance threshold live there.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = UNIDET_SHORT_SIDE, int(UNIDET_SHORT_SIDE * long / short)
    if new_long > UNIDET_MAX_SIZE:
        new_short, new_long = int(UNIDET_MAX_SIZE * new_short / new_long), UNIDET_MAX_SIZE
    return (new_short, new_long) if width <= height else (new_long, new_short)


def to_unidet_pixels(box: Sequence[float], width: int, height: int) -> PixelBox:
    """Rescale a pixel box of a ``width`` x ``height`` image to UniDet's resized input."""
    new_w, new_h = unidet_input_size(width, height)
    sx, sy = new_w / width, new_h / height
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def spatial_iou(box1: Sequence[float], box2: Sequence[float]) -> float:
    """IoU as 2D_spatial_eval.py's ``determine_position`` computes it (continuous, no +1).

    The official code divides by zero when both boxes are empty; that case returns 0.0 here.
    """
    x_overlap = max(0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    y_overlap = max(0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    intersection = x_overlap * y_overlap
    area1 = (box1[2] - box1[0]) * (box1[3] - box1[1])
    area2 = (box2[2] - box2[0]) * (box2[3] - box2[1])
    union = area1 + area2 - intersection
    if union <= 0:
        return 0.0
    return intersection / union


def determine_position(
    relation: str | None,
    box1: Sequence[float],
    box2: Sequence[float],
    iou_threshold: float = IOU_THRESHOLD,
    distance_threshold: float = DISTANCE_THRESHOLD,
) -> float:
    """The official soft position score of ``box1 relation box2`` (UniDet_eval/2D_spatial_eval.py).

    dx, dy = centre of box2 - centre of box1 (pixels, y down).

    - "next to" / "on side of" / "near": 1 if |dx| < 150 or |dy| < 150, else 150 / max(|dx|, |dy|).
    - "on the left of": needs dx > 0 and |dx| > |dy|; then 1 if IoU < 0.1 else 0.1 / IoU; else 0.
    - "on the right of": the same with dx < 0.
    - "on the top of": needs dy > 0 and |dy| > |dx|; "on the bottom of": dy < 0. Same IoU rule.
    - any other relation (including "on top of" and None): 0.
    """
    c1x, c1y = (box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2
    c2x, c2y = (box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2
    dx, dy = c2x - c1x, c2y - c1y
    iou = spatial_iou(box1, box2)
    if relation in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    # (along the relation's axis, across it): x for left/right, y for top/bottom; the sign of
    # `along` must point from box1 to box2 the right way.
    wanted = {
        "on the left of": (dx, dy, dx > 0),
        "on the right of": (dx, dy, dx < 0),
        "on the top of": (dy, dx, dy > 0),
        "on the bottom of": (dy, dx, dy < 0),
    }.get(relation or "")
    along, across = (wanted[0], wanted[1]) if wanted and wanted[2] else (None, 0.0)
    if along is None or not abs(along) > abs(across):
        return 0.0
    if iou < iou_threshold:
        return 1.0
    return iou_threshold / iou


def spatial_score(
    relation: str | None,
    box1: Sequence[float] | None,
    box2: Sequence[float] | None,
    conf1: float | None,
    conf2: float | None,
) -> float:
    """A 2D-spatial image's score from its two objects (2D_spatial_eval.py, main loop).

    ``box1``/``box2`` are the UniDet-pixel boxes of obj1/obj2, or None when that object was not
    detected; ``conf1``/``conf2`` their detection confidences.

    - both found: 0.25*conf1 + 0.25*conf2 + determine_position(relation, box1, box2) / 2
    - one found: 0.25*conf of that one
    - none found: 0
    - then any score < 0.5 becomes 0 (a score of exactly 0.5 stays).
    """
    if box1 is not None and box2 is not None:
        if conf1 is None or conf2 is None:
            raise ValueError("spatial_score: a found object needs its confidence")
        score = 0.25 * conf1 + 0.25 * conf2
        score += determine_position(relation, box1, box2) / 2
    elif box1 is not None:
        if conf1 is None:
            raise ValueError("spatial_score: a found object needs its confidence")
        score = 0.25 * conf1
    elif box2 is not None:
        if conf2 is None:
            raise ValueError("spatial_score: a found object needs its confidence")
        score = 0.25 * conf2
    else:
        score = 0
    if score < SPATIAL_CUTOFF:
        score = 0
    return float(score)


def spatial_label(noun: str | None) -> str | None:
    """The label 2D_spatial_eval.py looks for: girl/boy/man/woman -> "person", else the noun."""
    if noun in SPATIAL_PERSON_WORDS:
        return "person"
    return noun


def first_detection(
    detections: Sequence[Detection],
    label: str | None,
    threshold: float = UNIDET_SCORE_THRESHOLD,
) -> Detection | None:
    """The detection the official code uses for ``label``: the most confident one above threshold.

    (``obj.index(name)`` over UniDet's output, which detectron2 sorts by descending score after
    dropping scores <= 0.5.) Ties keep the order given.
    """
    if label is None:
        return None
    candidates = [d for d in detections if d.label == label and d.score > threshold]
    if not candidates:
        return None
    return sorted(candidates, key=lambda d: -d.score)[0]


def spatial_image_score(
    obj1: str | None,
    relation: str | None,
    obj2: str | None,
    detections: Sequence[Detection],
    image_size: tuple[int, int],
) -> float:
    """Score one image for ``obj1 relation obj2`` from detections in that image's pixels.

    Applies the official person mapping (:func:`spatial_label`), keeps detections above
    :data:`UNIDET_SCORE_THRESHOLD`, rescales boxes to UniDet's ~480 px input and calls
    :func:`spatial_score`. Detections must be labelled with the mapped names (ask the scorer
    for :func:`spatial_label` of each object).
    """
    width, height = image_size
    det1 = first_detection(detections, spatial_label(obj1))
    det2 = first_detection(detections, spatial_label(obj2))
    box1 = to_unidet_pixels(det1.box, width, height) if det1 else None
    box2 = to_unidet_pixels(det2.box, width, height) if det2 else None
    return spatial_score(
        relation, box1, box2, det1.score if det1 else None, det2.score if det2 else None
    )


# --------------------------------------------------------------------------- numeracy


def numeracy_duplicate(bbox1: Sequence[float], bbox2: Sequence[float]) -> bool:
    """numeracy_eval.py's ``calculate_iou``: two same-label boxes are one object when IoU > 0.9 or
    the intersection covers > 90% of either box (pixel-inclusive areas, the ``+ 1`` convention)."""
    x1_1, y1_1, x2_1, y2_1 = bbox1
    x1_2, y1_2, x2_2, y2_2 = bbox2
    inter = max(0, min(x2_1, x2_2) - max(x1_1, x1_2) + 1) * max(
        0, min(y2_1, y2_2) - max(y1_1, y1_2) + 1
    )
    area1 = (x2_1 - x1_1 + 1) * (y2_1 - y1_1 + 1)
    area2 = (x2_2 - x1_2 + 1) * (y2_2 - y1_2 + 1)
    union = float(area1 + area2 - inter)
    if union <= 0 or area1 <= 0 or area2 <= 0:
        return False
    iou = inter / union
    return iou > 0.9 or inter / float(area1) > 0.9 or inter / float(area2) > 0.9


def numeracy_dedup(detections: Sequence[Detection]) -> list[Detection]:
    """Drop duplicate detections in order, as numeracy_eval.py does before counting.

    A detection is dropped when an already kept detection has the same label and
    :func:`numeracy_duplicate` says they overlap.
    """
    kept: list[Detection] = []
    for det in detections:
        if not any(k.label == det.label and numeracy_duplicate(det.box, k.box) for k in kept):
            kept.append(det)
    return kept


def numeracy_score(
    objects: Sequence[tuple[str, int]],
    detections: Sequence[Detection],
    threshold: float = UNIDET_SCORE_THRESHOLD,
) -> float:
    """A numeracy image's score (UniDet_eval/numeracy_eval.py).

    ``objects`` = the prompt's (singular noun, count) pairs; ``detections`` = what was detected
    (labels compared as strings, in the order given; call on UniDet-pixel boxes for the exact
    duplicate test). With n objects, each object adds 0.5/n when its (aliased, see
    :data:`NUMERACY_ALIASES`) label is detected and 0.5/n more when the number of its
    de-duplicated detections equals the count exactly. As officially, a prompt object missing
    from the labels takes over any detected label that contains it as a substring.
    No parsed object -> 0.0 (the official script would divide by zero).
    """
    if not objects:
        return 0.0
    kept = numeracy_dedup([d for d in detections if d.score > threshold])
    labels = [d.label for d in kept]
    weight = 1.0 / len(objects)
    score = 0.0
    for noun, count in objects:
        if int(count) != count or count < 0:
            raise ValueError(f"numeracy_score: count of {noun!r} must be a whole number >= 0")
        name = NUMERACY_ALIASES.get(noun, noun)
        if name not in labels:
            for j, label in enumerate(labels):
                if name in label:
                    labels[j] = name
        if name in labels:
            score += 0.5 * weight
            if labels.count(name) == count:
                score += 0.5 * weight
    return score


# --------------------------------------------------------------------------- BLIP-VQA


def yes_ratio(p_yes: float, p_no: float) -> float:
    """BLIP-VQA's answer probability: P(yes) / (P(yes) + P(no)) (models/blip_vqa.py, vqa_prob)."""
    if p_yes < 0 or p_no < 0 or not math.isfinite(p_yes) or not math.isfinite(p_no):
        raise ValueError(f"yes_ratio needs finite non-negative probabilities, got {p_yes}, {p_no}")
    total = p_yes + p_no
    if total <= 0:
        raise ValueError("yes_ratio: P(yes) + P(no) is 0; the scorer gave no yes/no mass")
    return p_yes / total


def _round4(value: float) -> float:
    return float(f"{value:.4f}")


def blip_answer(
    question_answers: Sequence[float | None], max_phrases: int = BLIP_MAX_PHRASES
) -> str:
    """The official BLIP-VQA answer string of one image (BLIPvqa_eval/BLIP_vqa.py).

    ``question_answers[i]`` is the yes-ratio for noun phrase i, or None when the prompt has no
    phrase i. Each answer is rounded to 4 decimals (as BLIP writes it), a missing phrase counts 1,
    the first ``max_phrases`` are multiplied in float32, and the product is formatted "%.4f".
    """
    values = list(question_answers[:max_phrases])
    values += [None] * (max_phrases - len(values))
    product = np.float32(1.0)
    for i, value in enumerate(values):
        factor = np.float32(1.0 if value is None else _round4(float(value)))
        product = factor if i == 0 else np.float32(product * factor)
    return f"{float(product):.4f}"


def blip_vqa_score(question_answers: Sequence[float | None]) -> float:
    """The BLIP-VQA score of one image as a float (the value of :func:`blip_answer`)."""
    return float(blip_answer(question_answers))


# --------------------------------------------------------------------------- complex (3-in-1)


def complex_kind(prompt: str, spatial_prompts: Sequence[str], action_prompts: Sequence[str]) -> str:
    """Which sub-scores a complex prompt averages (3_in_1_eval/3_in_1.py).

    Prompts are compared by ``text.split('.')[0].lower()``: in complex_val_spatial -> "spatial"
    (attribute + spatial), else in complex_val_action -> "action" (attribute + action), else
    "spatialaction" (all three).
    """

    def key(text: str) -> str:
        return text.strip("\n").split(".")[0].lower()

    k = key(prompt)
    if k in {key(p) for p in spatial_prompts}:
        return "spatial"
    if k in {key(p) for p in action_prompts}:
        return "action"
    return "spatialaction"


def three_in_one(attribute: float, spatial: float, action: float, kind: str) -> float:
    """The complex score of one image (3_in_1.py): (spatial + attribute) * 0.5 for "spatial",
    (action + attribute) * 0.5 for "action", (attribute + spatial + action) / 3 otherwise."""
    if kind == "spatial":
        return (spatial + attribute) * 0.5
    if kind == "action":
        return (action + attribute) * 0.5
    if kind == "spatialaction":
        return (attribute + spatial + action) / 3
    raise ValueError(f"three_in_one: kind must be spatial, action or spatialaction, got {kind!r}")


# --------------------------------------------------------------------------- results


def missing_capabilities(category: str, provides: frozenset[str]) -> list[str]:
    """What a scorer that answers ``provides`` lacks for ``category``'s rule (empty: it can score
    it). ``clip_score`` is not missing where ``yes_prob`` stands in for it."""
    needs = set(CATEGORY_NEEDS[category])
    if "clip_score" in needs and "clip_score" not in provides and "yes_prob" in provides:
        needs.discard("clip_score")
    return sorted(needs - provides)


def category_mean(answers: Sequence[float | str]) -> float:
    """A category's score: the mean of its images' answers (string answers are read as floats,
    as the official scripts do); 0.0 for no images."""
    if not answers:
        return 0.0
    total = 0.0
    for answer in answers:
        total += float(answer)
    return total / len(answers)


def vqa_result(answers: Sequence[float | str], first_id: int = 0) -> list[dict[str, object]]:
    """The official ``vqa_result.json`` records: ``[{"question_id": i, "answer": score}, ...]``."""
    return [{"question_id": first_id + i, "answer": a} for i, a in enumerate(answers)]


def summary_record(
    category_scores: Mapping[str, float],
    scorer: str,
    image_counts: Mapping[str, int] | None = None,
    clip: bool = False,
    closeness: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """The summary JSON of a CompBench run, labelled with the scorer that judged it.

    ``metrics`` says in words what scored each category (:data:`METRIC_LABELS`; with ``clip``,
    the scorer computed the CLIP cosine itself, :data:`CLIP_METRIC_LABELS`, else the non-spatial
    "clip" is a yes-probability stand-in); ``metric_keys`` holds the stable keys of
    :data:`CATEGORY_METRIC` (the official metric and result-folder names). ``closeness`` says
    per category how close the evidence is to the official models ("exact", "near: ...");
    without it every category is "not comparable"."""
    labels = {**METRIC_LABELS, **(CLIP_METRIC_LABELS if clip else {})}
    close = {
        c: (closeness or {}).get(c, f"not comparable: evidence from {scorer!r}")
        for c in category_scores
    }
    if closeness:
        exact = [c for c in category_scores if close[c] == "exact"]
        note = (
            f"Evidence from the {scorer!r} scorer (transformers ports of the benchmark's models). "
            f"Exact (same model, same rule): {', '.join(exact) or 'none'}; the others are near "
            "(see closeness) and are not the published metric."
        )
    else:
        note = (
            f"Evidence from the {scorer!r} scorer, not the official BLIP/UniDet/CLIP models; "
            "scores are not comparable with published T2I-CompBench numbers."
        )
    return {
        "benchmark": "T2I-CompBench",
        "rules": "official T2I-CompBench scoring rules (BLIP-VQA product, UniDet 2D spatial, "
        "UniDet numeracy, 3-in-1)",
        "judged_by": scorer,
        "note": note,
        "metrics": {c: labels.get(CATEGORY_METRIC.get(c, ""), "?") for c in category_scores},
        "metric_keys": {c: CATEGORY_METRIC.get(c, "?") for c in category_scores},
        "closeness": close,
        "scores": {c: float(s) for c, s in category_scores.items()},
        "images": dict(image_counts or {}),
    }


def summary_markdown(record: Mapping[str, object]) -> str:
    """A markdown table of a :func:`summary_record`, with the scorer named in the heading."""
    scores = dict(record["scores"])  # type: ignore[arg-type]
    images = dict(record.get("images") or {})  # type: ignore[arg-type]
    lines = [
        f"## T2I-CompBench (rules) — judged by {record['judged_by']}",
        "",
        str(record["note"]),
        "",
        "| category | metric | score | images | closeness to the official metric |",
        "| --- | --- | --- | --- | --- |",
    ]
    metrics = dict(record.get("metrics") or {})  # type: ignore[arg-type]
    close = dict(record.get("closeness") or {})  # type: ignore[arg-type]
    for category, score in scores.items():
        count = images.get(category, "")
        lines.append(
            f"| {category} | {metrics.get(category, '')} | {score:.4f} | {count} | "
            f"{close.get(category, '')} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- scoring with a scorer


@dataclass(frozen=True)
class ImageScore:
    """One image's category score and the parts it was computed from."""

    score: float
    parts: dict[str, float] = field(default_factory=dict)
    """Sub-scores (complex: attribute / spatial / action)."""
    answer: float | str | None = None
    """What goes into ``vqa_result.json`` (the BLIP rule writes a 4-decimal string)."""


def score_attribute(scorer: EvidenceScorer, image: Image.Image, prompt: str) -> str:
    """BLIP-VQA rule for a colour/shape/texture prompt: one yes-question per noun phrase
    ("a green bench?"), answers multiplied. Returns the official answer string."""
    answers = [scorer.yes_prob(image, q) for q in blip_questions(prompt, BLIP_MAX_PHRASES)]
    return blip_answer(answers)


def score_spatial(
    scorer: EvidenceScorer, image: Image.Image, prompt: str, complex_prompt: bool = False
) -> float:
    """UniDet 2D rule: parse obj1/obj2/relation (simple or complex structure), detect both, score."""
    if complex_prompt:
        parsed = parse_complex_spatial(prompt)
        obj1, relation, obj2 = parsed.obj1, parsed.relation, parsed.obj2
    else:
        simple = parse_spatial(prompt)
        obj1 = simple.obj1 if simple else None
        obj2 = simple.obj2 if simple else None
        relation = find_spatial_relation(prompt)
    names = [n for n in dict.fromkeys((spatial_label(obj1), spatial_label(obj2))) if n]
    detections = scorer.detect(image, names) if names else []
    return spatial_image_score(obj1, relation, obj2, detections, image.size)


def score_numeracy(scorer: EvidenceScorer, image: Image.Image, prompt: str) -> float:
    """UniDet numeracy rule: parse (noun, count) pairs, detect the nouns, count and score."""
    items = parse_numeracy(prompt)
    objects = [(item.noun, item.count) for item in items]
    names = list(dict.fromkeys(NUMERACY_ALIASES.get(n, n) for n, _ in objects))
    detections = scorer.detect(image, names) if names else []
    width, height = image.size
    scaled = [
        Detection(d.label, to_unidet_pixels(d.box, width, height), d.score) for d in detections
    ]
    ordered = sorted(scaled, key=lambda d: -d.score)
    return numeracy_score(objects, ordered)


def score_nonspatial(
    scorer: EvidenceScorer, image: Image.Image, prompt: str, complex_prompt: bool = False
) -> float:
    """CLIP image-text similarity (CLIP_similarity.py) when the scorer provides ``clip_score``:
    the prompt as is, or for a complex prompt without its adjectives
    (:func:`gotr1.eval.prompt_parsing.clip_text_without_adjectives`, the official ``--complex``).
    Otherwise a stand-in: the scorer's yes-probability that the image shows the prompt, not on
    CLIP's scale (CLIP cosines sit near 0.3)."""
    if "clip_score" in capabilities(scorer):
        text = clip_text_without_adjectives(prompt) if complex_prompt else prompt
        return float(scorer.clip_score(image, text))  # type: ignore[attr-defined]
    question = prompt.rstrip(". ") + "?"
    return float(scorer.yes_prob(image, question))


def score_complex(scorer: EvidenceScorer, image: Image.Image, prompt: str, kind: str) -> ImageScore:
    """3-in-1 rule for a complex prompt: BLIP attribute score, complex-structure spatial score,
    action (CLIP stand-in) score, averaged as :func:`three_in_one` says for ``kind``."""
    attribute = float(score_attribute(scorer, image, prompt))
    # All three are computed for every image, as the official scripts write all three result files.
    spatial = score_spatial(scorer, image, prompt, complex_prompt=True)
    action = score_nonspatial(scorer, image, prompt, complex_prompt=True)
    total = three_in_one(attribute, spatial, action, kind)
    return ImageScore(
        score=total,
        parts={"attribute": attribute, "spatial": spatial, "action": action},
        answer=total,
    )


def score_image(
    scorer: EvidenceScorer,
    category: str,
    image: Image.Image,
    prompt: str,
    kind: str | None = None,
) -> ImageScore:
    """Score one generated image of a T2I-CompBench category with the official rule.

    ``kind`` (complex only) comes from :func:`complex_kind`.
    """
    metric = CATEGORY_METRIC.get(category)
    if metric is None:
        raise ValueError(
            f"unknown T2I-CompBench category {category!r}; expected one of {', '.join(CATEGORIES)}"
        )
    if metric == "blip":
        answer = score_attribute(scorer, image, prompt)
        return ImageScore(score=float(answer), answer=answer)
    if metric == "spatial":
        value = score_spatial(scorer, image, prompt)
        return ImageScore(score=value, answer=value)
    if metric == "numeracy":
        value = score_numeracy(scorer, image, prompt)
        return ImageScore(score=value, answer=value)
    if metric == "clip":
        value = score_nonspatial(scorer, image, prompt)
        return ImageScore(score=value, answer=value)
    if kind is None:
        raise ValueError("score_image: complex prompts need kind (see complex_kind)")
    return score_complex(scorer, image, prompt, kind)
