"""GenEval rules against hand-computed cases (evaluation/evaluate_images.py and
evaluation/summary_scores.py), the official folder layout, and scoring drawn images."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gotr1.eval import geneval as ge
from gotr1.eval import layouts
from gotr1.eval.evidence import Detection, PixelBox
from gotr1.eval.generation import write_item

# ------------------------------------------------------------------------------ a pixel scorer

CLASS_BORDER = {"dog": (250, 0, 250), "teddy bear": (0, 250, 250), "clock": (120, 60, 0)}
FILL = {
    "red": (220, 20, 20),
    "blue": (20, 20, 220),
    "green": (20, 180, 20),
    "yellow": (240, 220, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}


def draw_scene(
    objects: Sequence[tuple[str, str, tuple[int, int, int, int]]], size: int = 128
) -> Image.Image:
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for cls, colour, box in objects:
        draw.rectangle(box, fill=FILL[colour], outline=CLASS_BORDER[cls], width=2)
    return image


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    seen = np.zeros_like(mask, dtype=bool)
    boxes = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        queue, xs, ys = deque([(y0, x0)]), [x0], [y0]
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
                    xs.append(nx)
                    ys.append(ny)
        boxes.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return boxes


class PixelScorer:
    """Finds class borders by colour (confidence by size: bigger = surer) and reads fill colour."""

    name = "pixel-test"

    def detect(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        arr = np.asarray(image.convert("RGB"))
        out = []
        for name in names:
            if name in CLASS_BORDER:
                mask = np.all(arr == CLASS_BORDER[name], axis=-1)
                for box in _components(mask):
                    side = min(box[2] - box[0], box[3] - box[1])
                    out.append(Detection(name, box, min(0.99, side / 40)))
        return out

    def colour(self, image: Image.Image, box: PixelBox, candidates: Sequence[str]) -> str:
        x1, y1, x2, y2 = (int(v) for v in box)
        inner = np.asarray(image.convert("RGB"))[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].reshape(-1, 3)
        mean = inner.mean(axis=0)
        known = [c for c in candidates if c in FILL]
        return min(known, key=lambda c: float(np.sum((np.array(FILL[c]) - mean) ** 2)))

    def yes_prob(self, image: Image.Image, question: str) -> float:
        return 0.5


def det(label: str, box: Sequence[float], score: float = 0.95) -> Detection:
    return Detection(label, tuple(box), score)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ geometry


def test_compute_iou_pixel_inclusive() -> None:
    assert ge.compute_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert ge.compute_iou((0, 0, 9, 9), (10, 0, 19, 9)) == 0.0  # adjacent pixels, no overlap
    # (0,0,9,9) vs (5,0,14,9): inter 5*10 = 50, union 150
    assert ge.compute_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(1 / 3)
    assert ge.compute_iou((0, 0, -5, -5), (0, 0, -5, -5)) == 0  # empty union -> 0


@pytest.mark.parametrize(
    ("box_a", "box_b", "want"),
    [
        # A centre (5,5), B centre (25,5): offset (-20, 0); shrink 0.1*(10+10) = 2 -> (-18, 0);
        # / |offset| 20 -> dx = -0.9 -> "left of"
        ((0, 0, 10, 10), (20, 0, 30, 10), {"left of"}),
        ((20, 0, 30, 10), (0, 0, 10, 10), {"right of"}),
        ((0, 0, 10, 10), (0, 20, 10, 30), {"above"}),
        ((0, 20, 10, 30), (0, 0, 10, 10), {"below"}),
        # diagonal: offset (-20,-20), shrunk (-18,-18), / 28.28 -> (-0.636, -0.636): both
        ((0, 0, 10, 10), (20, 20, 30, 30), {"left of", "above"}),
        # offset (-20, -10): shrunk (-18, -8) / 22.36 -> dx -0.805, dy -0.358: only "left of"
        ((0, 0, 10, 10), (20, 10, 30, 20), {"left of"}),
        # exactly 0.5 is not < -0.5: centres 5 and 9: offset -4, shrunk -2, dx = -0.5
        ((0, 0, 10, 10), (4, 0, 14, 10), set()),
        # a little further: offset -4.05, shrunk -2.05, dx = -0.506 -> "left of"
        ((0, 0, 10, 10), (4.1, 0, 14.1, 10), {"left of"}),
        # offset within the shrink on both axes -> all revised components 0 -> empty set
        ((0, 0, 10, 10), (1, 1, 11, 11), set()),
        ((0, 0, 10, 10), (0, 0, 10, 10), set()),  # same box: no division by zero
    ],
)
def test_relative_position(box_a: tuple, box_b: tuple, want: set[str]) -> None:
    assert ge.relative_position(box_a, box_b) == want


def test_relative_position_threshold_is_a_parameter_and_scores_ignored() -> None:
    # with no shrink, offset (-4, 0) -> dx = -1
    assert ge.relative_position((0, 0, 10, 10), (4, 0, 14, 10), position_threshold=0.0) == {
        "left of"
    }
    # boxes with a 5th (score) value, as the official detector rows have, use the first four
    assert ge.relative_position((0, 0, 10, 10, 0.9), (20, 0, 30, 10, 0.8)) == {"left of"}


# ------------------------------------------------------------------------------ filtering


def test_filter_detections_thresholds_order_and_cap() -> None:
    dets = [det("dog", (0, 0, 1, 1), s) for s in (0.3, 0.31, 0.95, 0.5)] + [
        det("cat", (0, 0, 1, 1), 0.2)
    ]
    kept = ge.filter_detections(dets, "two_object")
    assert [d.score for d in kept["dog"]] == [0.95, 0.5, 0.31]  # > 0.3 strictly, best first
    assert "cat" not in kept  # classes with nothing left are absent
    counting = ge.filter_detections(dets + [det("dog", (0, 0, 1, 1), 0.9)], "counting")
    assert [d.score for d in counting["dog"]] == [0.95]  # > 0.9 strictly for "counting"
    many = [det("dog", (i, 0, i + 1, 1), 0.5 + i / 100) for i in range(20)]
    assert len(ge.filter_detections(many, "single_object")["dog"]) == ge.MAX_OBJECTS
    # optional suppression: max_overlap < 1 drops same-class boxes with IoU >= it
    overlapping = [
        det("dog", (0, 0, 9, 9), 0.9),
        det("dog", (1, 0, 10, 9), 0.8),
        det("dog", (50, 0, 59, 9), 0.7),
    ]
    assert len(ge.filter_detections(overlapping, "x")["dog"]) == 3  # default: no NMS
    assert len(ge.filter_detections(overlapping, "x", nms_threshold=0.5)["dog"]) == 2


# ------------------------------------------------------------------------------ evaluate


def _no_colour(found: Sequence[Detection], classname: str) -> list[str]:
    raise AssertionError("colour classifier must not be called")


def test_evaluate_single_and_two_object() -> None:
    meta = {
        "tag": "two_object",
        "include": [{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}],
        "prompt": "p",
    }
    both = {
        "bench": [det("bench", (0, 0, 5, 5))],
        "sports ball": [det("sports ball", (9, 9, 12, 12))],
    }
    assert ge.evaluate(both, meta, _no_colour) == (True, "")
    assert ge.evaluate({"bench": both["bench"]}, meta, _no_colour) == (
        False,
        "expected sports ball>=1, found 0",
    )


def test_evaluate_counting_include_and_exclude() -> None:
    meta = {
        "tag": "counting",
        "include": [{"class": "clock", "count": 2}],
        "exclude": [{"class": "clock", "count": 3}],
        "prompt": "a photo of two clocks",
    }
    clocks = [det("clock", (10 * i, 0, 10 * i + 5, 5)) for i in range(4)]
    assert ge.evaluate({"clock": clocks[:2]}, meta) == (True, "")
    assert ge.evaluate({"clock": clocks[:1]}, meta) == (False, "expected clock>=2, found 1")
    # exclude fails at count or more: 3 clocks
    assert ge.evaluate({"clock": clocks[:3]}, meta) == (False, "expected clock<3, found 3")
    assert ge.evaluate({}, meta) == (False, "expected clock>=2, found 0")


def test_evaluate_colour_uses_the_first_count_objects() -> None:
    meta = {
        "tag": "colors",
        "include": [{"class": "dog", "count": 1, "color": "blue"}],
        "prompt": "p",
    }
    dogs = [det("dog", (0, 0, 5, 5), 0.9), det("dog", (9, 9, 15, 15), 0.8)]
    seen: list[int] = []

    def classify(found: Sequence[Detection], classname: str) -> list[str]:
        seen.append(len(found))
        return ["red" if d.score == 0.9 else "blue" for d in found]

    correct, reason = ge.evaluate({"dog": dogs}, meta, classify)
    assert seen == [1]  # only the most confident dog is classified
    assert not correct
    assert reason == "expected blue dog>=1, found 0 blue; and 1 red"
    with pytest.raises(ValueError, match="colour classifier"):
        ge.evaluate({"dog": dogs}, meta)


def test_evaluate_position() -> None:
    meta = {
        "tag": "position",
        "include": [
            {"class": "teddy bear", "count": 1},
            {"class": "dog", "count": 1, "position": ["right of", 0]},
        ],
        "prompt": "a photo of a dog right of a teddy bear",
    }
    bear = [det("teddy bear", (0, 0, 10, 10))]
    assert ge.evaluate({"teddy bear": bear, "dog": [det("dog", (20, 0, 30, 10))]}, meta) == (
        True,
        "",
    )
    correct, reason = ge.evaluate({"teddy bear": bear, "dog": [det("dog", (0, 20, 10, 30))]}, meta)
    assert not correct and reason == "expected dog right of target, found below target"
    # target group not matched -> "no target" (and the missing bear's own reason first)
    correct, reason = ge.evaluate({"dog": [det("dog", (20, 0, 30, 10))]}, meta)
    assert not correct
    assert reason == "expected teddy bear>=1, found 0\nno target for dog to be right of"


def test_validate_metadata_and_shipped_file(tmp_path: Path) -> None:
    records = layouts.load_geneval_metadata()
    assert len(records) == 553
    tags = {r["tag"] for r in records}
    assert tags == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    bad = tmp_path / "meta.jsonl"
    bad.write_text(
        json.dumps(records[0])
        + "\n"
        + '{"tag": "x", "prompt": "p", "include": [{"class": "dog"}]}\n'
    )
    with pytest.raises(ValueError, match=r"meta.jsonl:2: include\[0\].count"):
        layouts.load_geneval_metadata(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="meta.jsonl:1: not JSON"):
        layouts.load_geneval_metadata(bad)
    with pytest.raises(ValueError, match="position"):
        ge.validate_metadata(
            {
                "tag": "position",
                "prompt": "p",
                "include": [{"class": "dog", "count": 1, "position": ["left of", 0]}],
            }
        )


# ------------------------------------------------------------------------------ summary


def test_summarize_overall_is_mean_of_tag_means() -> None:
    rows = []
    # single_object: 4 images, 3 correct (0.75); counting: 2 images, 0 correct (0.0)
    for i, ok in enumerate([True, True, True, False]):
        rows.append({"tag": "single_object", "correct": ok, "metadata": f"m{i // 2}"})
    rows += [{"tag": "counting", "correct": False, "metadata": "c"} for _ in range(2)]
    summary = ge.summarize(rows)
    assert summary["tags"] == {"single_object": 0.75, "counting": 0.0}
    assert summary["overall"] == pytest.approx(0.375)  # not 3/6 = 0.5
    assert summary["correct_images"] == pytest.approx(0.5)
    assert summary["prompts"] == 3
    assert summary["correct_prompts"] == pytest.approx(2 / 3)  # m0 and m1 have a correct image
    assert list(summary["tags"]) == ["single_object", "counting"]  # order of first appearance
    assert ge.summarize([])["overall"] == 0.0
    record = ge.summary_record(summary, "world")
    assert record["judged_by"] == "world" and "not Mask2Former" in record["note"]
    table = ge.summary_markdown(record)
    assert "judged by world" in table and "| single_object | 0.7500 | 3 / 4 |" in table
    assert "| **overall** (mean of tasks) | 0.3750 | |" in table


# ------------------------------------------------------------------------------ end to end


def test_evaluate_image_with_pixel_scorer() -> None:
    scorer = PixelScorer()
    meta = {
        "tag": "position",
        "include": [
            {"class": "teddy bear", "count": 1},
            {"class": "dog", "count": 1, "position": ["right of", 0]},
        ],
        "prompt": "a photo of a dog right of a teddy bear",
    }
    good = draw_scene(
        [("teddy bear", "yellow", (5, 40, 44, 79)), ("dog", "red", (80, 40, 119, 79))]
    )
    row = ge.evaluate_image(scorer, good, meta, "OUT/00000/samples/0000.png")
    assert row["correct"] is True and row["reason"] == ""
    assert row["filename"] == "OUT/00000/samples/0000.png"
    assert json.loads(row["metadata"]) == meta
    assert json.loads(row["details"])["dog"] == [[80, 40, 120, 80, 0.99]]
    bad = draw_scene([("dog", "red", (5, 40, 44, 79)), ("teddy bear", "yellow", (80, 40, 119, 79))])
    assert (
        ge.evaluate_image(scorer, bad, meta)["reason"]
        == "expected dog right of target, found left of target"
    )

    colour_meta = {
        "tag": "color_attr",
        "include": [
            {"class": "dog", "count": 1, "color": "blue"},
            {"class": "clock", "count": 1, "color": "green"},
        ],
        "prompt": "p",
    }
    ok = draw_scene([("dog", "blue", (5, 5, 44, 44)), ("clock", "green", (60, 60, 99, 99))])
    assert ge.evaluate_image(scorer, ok, colour_meta)["correct"] is True
    swapped = draw_scene([("dog", "green", (5, 5, 44, 44)), ("clock", "blue", (60, 60, 99, 99))])
    row = ge.evaluate_image(scorer, swapped, colour_meta)
    assert row["reason"].splitlines() == [
        "expected blue dog>=1, found 0 blue; and 1 green",
        "expected green clock>=1, found 0 green; and 1 blue",
    ]
    # counting uses the 0.9 threshold: a 20-px clock has confidence 0.5 and does not count
    count_meta = {
        "tag": "counting",
        "include": [{"class": "clock", "count": 2}],
        "exclude": [{"class": "clock", "count": 3}],
        "prompt": "p",
    }
    two_big = draw_scene([("clock", "white", (5, 5, 44, 44)), ("clock", "white", (60, 60, 99, 99))])
    assert ge.evaluate_image(scorer, two_big, count_meta)["correct"] is True
    one_small = draw_scene(
        [("clock", "white", (5, 5, 44, 44)), ("clock", "white", (60, 60, 79, 79))]
    )
    assert (
        ge.evaluate_image(scorer, one_small, count_meta)["reason"] == "expected clock>=2, found 1"
    )


def test_geneval_layout_roundtrip_and_resume(tmp_path: Path) -> None:
    metas = layouts.load_geneval_metadata()[:3]
    items = layouts.geneval_items(tmp_path, metas, images_per_prompt=4)
    assert len(items) == 12
    assert items[5].image_path == tmp_path / "00001" / "samples" / "0001.png"
    assert items[5].seed == 42 + 5
    image = draw_scene([("dog", "red", (5, 5, 44, 44))], size=32)
    for item in items[:6]:
        write_item(item, image, "a chain", {"seed": item.seed})
    assert layouts.pending(items) == items[6:]
    layouts.write_geneval_grid(tmp_path, 0, [image] * 4)
    (tmp_path / "00000" / "samples" / "notes.txt").write_text("ignored by the evaluator")
    (tmp_path / "README").write_text("not a prompt folder")
    # metadata.jsonl holds exactly the prompt's metadata as one JSON object (json.load-able)
    assert json.loads((tmp_path / "00001" / "metadata.jsonl").read_text()) == metas[1]
    folder = layouts.read_geneval_folder(tmp_path)
    assert [p.prompt_index for p in folder] == [0, 1]
    assert [p.name for p in folder[0].samples] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert [p.name for p in folder[1].samples] == ["0000.png", "0001.png"]
    assert folder[1].metadata == metas[1]
    record = json.loads((tmp_path / "00001" / "chains" / "0001.json").read_text())
    assert record["seed"] == 47 and record["chain"] == "a chain"
    assert Image.open(tmp_path / "00000" / "grid.png").size == (4 * 34 + 2, 36)
    # no temporary files left anywhere
    assert not list(tmp_path.rglob("*.partial"))

    rows = [{"tag": "single_object", "correct": True, "metadata": "m"}]
    path = layouts.write_jsonl(tmp_path / "results" / "results.jsonl", rows)
    assert layouts.read_jsonl(path) == rows
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match="results.jsonl:2"):
        layouts.read_jsonl(path)
    (tmp_path / "00002").mkdir()
    with pytest.raises(ValueError, match="metadata.jsonl: missing"):
        layouts.read_geneval_folder(tmp_path)
