"""GenEval's scoring rules, implemented exactly as the official evaluator computes them.

Mirrors github djghosh13/geneval (MIT licence): ``evaluation/evaluate_images.py`` (detection
filtering, ``relative_position``, ``evaluate``: include/exclude clauses, colour and position
checks, the per-image result row) and ``evaluation/summary_scores.py`` (per-tag accuracy, overall =
mean of the tag means). Detections and colours come from a pluggable
:class:`gotr1.eval.evidence.EvidenceScorer` instead of Mask2Former and CLIP, so results computed
here are "GenEval rules, judged by <scorer>"; the images themselves are written in GenEval's folder
layout (:mod:`gotr1.eval.layouts`) so the official evaluator runs on them unchanged.

Where the rest lives: ``gotr1 eval geneval`` (:mod:`gotr1.eval.commands`) generates 4 images per
prompt of :func:`gotr1.eval.layouts.load_geneval_metadata` into
:func:`gotr1.eval.layouts.geneval_sample_path` (sharded and resumable through
:mod:`gotr1.eval.generation` over :func:`gotr1.eval.layouts.geneval_items`), scores each image with
:func:`evaluate_image` over a scorer of :mod:`gotr1.eval.scorers` (the Qwen2.5-VL judge or the
world detector), and writes ``results.jsonl`` and the labelled :func:`summary_record`;
``tests/test_eval_e2e.py`` runs it end to end on a world-tiny-shaped policy with the world scorer.

Official defaults (``--options``): detection threshold 0.3 (0.9 for the "counting" tag), at most 16
objects per class, no NMS (max_overlap 1.0), position threshold 0.1, ten colours.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gotr1.boxes import POSITION_THRESHOLD, relative_position
from gotr1.eval.evidence import Detection, EvidenceScorer

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "COLORS",
    "COUNTING_THRESHOLD",
    "MAX_OBJECTS",
    "NMS_THRESHOLD",
    "POSITION_THRESHOLD",
    "THRESHOLD",
    "clause_classes",
    "compute_iou",
    "evaluate",
    "evaluate_image",
    "filter_detections",
    "relative_position",
    "result_row",
    "summarize",
    "summary_markdown",
    "summary_record",
    "validate_metadata",
]

THRESHOLD = 0.3
"""Detections with score > 0.3 count (evaluate_images.py ``threshold``)."""
COUNTING_THRESHOLD = 0.9
"""... > 0.9 for prompts tagged "counting" (``counting_threshold``)."""
MAX_OBJECTS = 16
"""At most 16 detections per class (``max_objects``)."""
NMS_THRESHOLD = 1.0
"""Same-class overlap above which a detection is dropped; 1.0 = no suppression (``max_overlap``)."""
COLORS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
)
"""The colour classes of GenEval's zero-shot colour classifier."""

ColourClassifier = Callable[[Sequence[Detection], str], list[str]]
"""(found objects, class name) -> one colour name per object (a name from :data:`COLORS`)."""


def compute_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """evaluate_images.py's ``compute_iou`` (pixel-inclusive areas: ``x2 - x1 + 1``)."""

    def area(box: Sequence[float]) -> float:
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area(
        [
            max(box_a[0], box_b[0]),
            max(box_a[1], box_b[1]),
            min(box_a[2], box_b[2]),
            min(box_a[3], box_b[3]),
        ]
    )
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0


def filter_detections(
    detections: Iterable[Detection],
    tag: str,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
    nms_threshold: float = NMS_THRESHOLD,
) -> dict[str, list[Detection]]:
    """Per class, the detections GenEval keeps (evaluate_images.py ``evaluate_image``).

    Sorted by descending score, strictly above the threshold (``counting_threshold`` for the
    "counting" tag), at most ``max_objects``, then greedy same-class suppression at
    ``compute_iou >= nms_threshold`` unless it is 1. Classes with nothing left are absent.
    """
    confidence = counting_threshold if tag == "counting" else threshold
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        by_class.setdefault(det.label, []).append(det)
    kept: dict[str, list[Detection]] = {}
    for label, dets in by_class.items():
        ordering = sorted(dets, key=lambda d: -d.score)  # stable, like argsort()[::-1] up to ties
        ordering = [d for d in ordering if d.score > confidence][:max_objects]
        chosen: list[Detection] = []
        while ordering:
            best = ordering.pop(0)
            chosen.append(best)
            ordering = [
                d
                for d in ordering
                if nms_threshold == 1 or compute_iou(best.box, d.box) < nms_threshold
            ]
        if chosen:
            kept[label] = chosen
    return kept


def clause_classes(metadata: Mapping[str, Any]) -> list[str]:
    """Every class a prompt's include/exclude clauses name, in order, without repeats."""
    names = [c["class"] for c in metadata.get("include", [])]
    names += [c["class"] for c in metadata.get("exclude", [])]
    return list(dict.fromkeys(names))


def validate_metadata(metadata: Any, where: str = "metadata") -> dict[str, Any]:
    """Check one GenEval metadata record; raise ValueError naming ``where`` and the bad field."""
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(metadata).__name__}")
    for key in ("tag", "prompt"):
        if not isinstance(metadata.get(key), str):
            raise ValueError(f"{where}: field {key!r} must be a string")
    for kind in ("include", "exclude"):
        clauses = metadata.get(kind, [])
        if not isinstance(clauses, list):
            raise ValueError(f"{where}: field {kind!r} must be a list")
        for j, clause in enumerate(clauses):
            if not isinstance(clause, dict) or not isinstance(clause.get("class"), str):
                raise ValueError(f"{where}: {kind}[{j}] needs a string 'class'")
            count = clause.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError(f"{where}: {kind}[{j}].count must be a whole number >= 0")
            if "color" in clause and clause["color"] not in COLORS:
                raise ValueError(f"{where}: {kind}[{j}].color {clause['color']!r} not in {COLORS}")
            if "position" in clause:
                pos = clause["position"]
                if (
                    kind != "include"
                    or not isinstance(pos, list)
                    or len(pos) != 2
                    or pos[0] not in ("left of", "right of", "above", "below")
                    or not isinstance(pos[1], int)
                    or not 0 <= pos[1] < j
                ):
                    raise ValueError(
                        f"{where}: {kind}[{j}].position must be [relation, index of an earlier "
                        "include clause]"
                    )
    return metadata


def evaluate(
    objects: Mapping[str, Sequence[Detection]],
    metadata: Mapping[str, Any],
    classify_colours: ColourClassifier | None = None,
) -> tuple[bool, str]:
    """Is the image correct for its metadata? (evaluate_images.py ``evaluate``, line for line).

    ``objects`` = :func:`filter_detections` output (most confident first). Include clauses are
    ANDed: the class needs at least ``count`` detections; with ``color``, at least ``count`` of
    the first ``count`` detections must be classified that colour; with ``position`` [rel, k],
    every one of them must stand in ``rel`` to every object matched by include clause k (which
    must itself have matched). Exclude clauses are ORed: ``count`` or more detections of the
    class make the image wrong. Returns (correct, reason) with the official reason strings.
    """
    correct = True
    reason: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        classname = req["class"]
        matched = True
        found_objects = list(objects.get(classname, []))[: req["count"]]
        if len(found_objects) < req["count"]:
            correct = matched = False
            reason.append(f"expected {classname}>={req['count']}, found {len(found_objects)}")
        else:
            if "color" in req:
                if classify_colours is None:
                    raise ValueError("evaluate: a colour clause needs a colour classifier")
                colors = classify_colours(found_objects, classname)
                if colors.count(req["color"]) < req["count"]:
                    correct = matched = False
                    reason.append(
                        f"expected {req['color']} {classname}>={req['count']}, found "
                        + f"{colors.count(req['color'])} {req['color']}; and "
                        + ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    )
            if "position" in req and matched:
                expected_rel, target_group = req["position"]
                if matched_groups[target_group] is None:
                    correct = matched = False
                    reason.append(f"no target for {classname} to be {expected_rel}")
                else:
                    for obj in found_objects:
                        for target_obj in matched_groups[target_group] or []:
                            true_rels = relative_position(obj.box, target_obj.box)
                            if expected_rel not in true_rels:
                                correct = matched = False
                                reason.append(
                                    f"expected {classname} {expected_rel} target, found "
                                    + f"{' and '.join(true_rels)} target"
                                )
                                break
                        if not matched:
                            break
        matched_groups.append(found_objects if matched else None)
    for req in metadata.get("exclude", []):
        classname = req["class"]
        if len(objects.get(classname, [])) >= req["count"]:
            correct = False
            reason.append(
                f"expected {classname}<{req['count']}, found {len(objects.get(classname, []))}"
            )
    return correct, "\n".join(reason)


def result_row(
    filename: str,
    metadata: Mapping[str, Any],
    objects: Mapping[str, Sequence[Detection]],
    correct: bool,
    reason: str,
) -> dict[str, Any]:
    """One line of GenEval's ``results.jsonl`` (the keys and encodings evaluate_images.py writes:
    ``metadata`` and ``details`` are JSON strings; details boxes are [x1, y1, x2, y2, score])."""
    return {
        "filename": filename,
        "tag": metadata["tag"],
        "prompt": metadata["prompt"],
        "correct": bool(correct),
        "reason": reason,
        "metadata": json.dumps(metadata),
        "details": json.dumps(
            {key: [[*d.box, d.score] for d in value] for key, value in objects.items()}
        ),
    }


def evaluate_image(
    scorer: EvidenceScorer,
    image: Image.Image,
    metadata: Mapping[str, Any],
    filename: str = "",
) -> dict[str, Any]:
    """Score one generated image with GenEval's rules, evidence from ``scorer``; returns the
    results.jsonl row (:func:`result_row`)."""
    detections = scorer.detect(image, clause_classes(metadata))
    objects = filter_detections(detections, metadata["tag"])

    def classify(found: Sequence[Detection], classname: str) -> list[str]:
        if getattr(scorer, "colour_reads_object_name", False):
            return [
                scorer.colour(image, d.box, COLORS, object_name=classname)  # type: ignore[call-arg]
                for d in found
            ]
        return [scorer.colour(image, d.box, COLORS) for d in found]

    correct, reason = evaluate(objects, metadata, classify)
    return result_row(filename, metadata, objects, correct, reason)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """GenEval's summary (evaluation/summary_scores.py) of results rows.

    Tags in order of first appearance; a tag's score is its share of correct images; the overall
    score is the mean of the tag scores (not of all images). "correct prompts" counts a prompt
    (grouped by its metadata string) correct when any of its images is.
    """
    if not rows:
        return {
            "images": 0,
            "prompts": 0,
            "correct_images": 0.0,
            "correct_prompts": 0.0,
            "tags": {},
            "overall": 0.0,
        }
    by_tag: dict[str, list[bool]] = {}
    by_prompt: dict[str, bool] = {}
    for row in rows:
        ok = bool(row["correct"])
        by_tag.setdefault(str(row["tag"]), []).append(ok)
        key = str(row["metadata"])
        by_prompt[key] = by_prompt.get(key, False) or ok
    tags = {tag: float(np.mean(v)) for tag, v in by_tag.items()}
    return {
        "images": len(rows),
        "prompts": len(by_prompt),
        "correct_images": float(np.mean([bool(r["correct"]) for r in rows])),
        "correct_prompts": float(np.mean(list(by_prompt.values()))),
        "tags": tags,
        "tag_counts": {tag: [int(sum(v)), len(v)] for tag, v in by_tag.items()},
        "overall": float(np.mean(list(tags.values()))),
    }


def summary_record(
    summary: Mapping[str, Any], scorer: str, closeness: str | None = None
) -> dict[str, Any]:
    """The summary JSON of a GenEval run, labelled with the scorer that judged it; ``closeness``
    says how close its evidence is to Mask2Former + CLIP (None: not comparable)."""
    if closeness:
        note = (
            f"Detections and colours from the {scorer!r} scorer ({closeness}). Close to, not "
            "equal to, published GenEval numbers; run the official evaluator on the image "
            "folder for those."
        )
    else:
        note = (
            f"Detections and colours from the {scorer!r} scorer, not Mask2Former/CLIP; scores "
            "are not comparable with published GenEval numbers. Run the official evaluator on "
            "the image folder for those."
        )
    return {
        "benchmark": "GenEval",
        "rules": "official GenEval rules (include/exclude counts, relative position, colour)",
        "judged_by": scorer,
        "closeness": closeness or f"not comparable: evidence from {scorer!r}",
        "note": note,
        **dict(summary),
    }


def summary_markdown(record: Mapping[str, Any]) -> str:
    """A markdown table of a GenEval :func:`summary_record` (tags, then the overall score)."""
    lines = [
        f"## GenEval (rules) — judged by {record['judged_by']}",
        "",
        str(record["note"]),
        "",
        "| task | score | correct / images |",
        "| --- | --- | --- |",
    ]
    counts = dict(record.get("tag_counts") or {})
    for tag, score in dict(record.get("tags") or {}).items():
        ok, total = counts.get(tag, ["", ""])
        lines.append(f"| {tag} | {score:.4f} | {ok} / {total} |")
    lines.append(f"| **overall** (mean of tasks) | {float(record['overall']):.4f} | |")
    return "\n".join(lines) + "\n"
