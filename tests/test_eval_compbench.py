"""T2I-CompBench rules against hand-computed cases, official edge cases, layouts and writers.

Expected values are computed by hand in the comments from the official formulas
(UniDet_eval/2D_spatial_eval.py, UniDet_eval/numeracy_eval.py, BLIPvqa_eval/BLIP_vqa.py,
3_in_1_eval/3_in_1.py). The end-to-end cases score real images with a small pixel scorer: each
object is a rectangle whose 2-px border colour encodes its class and whose fill is its colour.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gotr1.eval import compbench as cb
from gotr1.eval import layouts
from gotr1.eval.evidence import Detection, EvidenceScorer, PixelBox
from gotr1.eval.generation import write_item

# ------------------------------------------------------------------------------ a pixel scorer

CLASS_BORDER = {
    "dog": (250, 0, 250),
    "cat": (0, 250, 250),
    "person": (120, 60, 0),
    "bench": (0, 120, 60),
}
FILL = {
    "red": (220, 20, 20),
    "blue": (20, 20, 220),
    "green": (20, 180, 20),
    "yellow": (240, 220, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
BACKGROUND = (128, 128, 128)


def draw_scene(
    objects: Sequence[tuple[str, str, tuple[int, int, int, int]]], size: int = 384
) -> Image.Image:
    """(class, fill colour, (x1, y1, x2, y2) inclusive) rectangles on grey."""
    image = Image.new("RGB", (size, size), BACKGROUND)
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
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        xs, ys = [x0], [y0]
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
    """A real (if simple) evidence scorer for drawn scenes: finds class borders by colour."""

    name = "pixel-test"

    def __init__(self, confidence: float = 0.9) -> None:
        self.confidence = confidence
        self.questions: list[str] = []

    def detect(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        arr = np.asarray(image.convert("RGB"))
        out = []
        for name in names:
            if name not in CLASS_BORDER:
                continue
            mask = np.all(arr == CLASS_BORDER[name], axis=-1)
            out += [Detection(name, box, self.confidence) for box in _components(mask)]
        return out

    def colour(self, image: Image.Image, box: PixelBox, candidates: Sequence[str]) -> str:
        x1, y1, x2, y2 = (int(v) for v in box)
        inner = np.asarray(image.convert("RGB"))[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].reshape(-1, 3)
        mean = inner.mean(axis=0)
        known = [c for c in candidates if c in FILL]
        return min(known, key=lambda c: float(np.sum((np.array(FILL[c]) - mean) ** 2)))

    def yes_prob(self, image: Image.Image, question: str) -> float:
        """0.8 when an object of the question's class (and colour, if named) is drawn, else 0.2."""
        self.questions.append(question)
        words = question.lower().rstrip("?").replace(".", " ").split()
        names = [w for w in words if w in CLASS_BORDER]
        if not names:
            return 0.5
        colours = [w for w in words if w in FILL]
        found = self.detect(image, names[:1])
        if colours:
            found = [d for d in found if self.colour(image, d.box, list(FILL)) == colours[0]]
        return 0.8 if found else 0.2


def test_pixel_scorer_follows_protocol() -> None:
    assert isinstance(PixelScorer(), EvidenceScorer)
    image = draw_scene([("dog", "red", (10, 10, 49, 49)), ("dog", "blue", (100, 10, 139, 49))])
    dets = PixelScorer().detect(image, ["dog", "cat"])
    assert sorted(d.box for d in dets) == [(10, 10, 50, 50), (100, 10, 140, 50)]


# ------------------------------------------------------------------------------ geometry


def test_unidet_input_size_matches_torchvision_resize() -> None:
    assert cb.unidet_input_size(384, 384) == (479, 479)
    assert cb.unidet_input_size(512, 512) == (479, 479)
    # 512x256: short 256 -> 479, long int(479*2) = 958 > 480 -> (int(480*479/958), 480) = (240, 480)
    assert cb.unidet_input_size(512, 256) == (480, 240)
    assert cb.unidet_input_size(256, 512) == (240, 480)
    # 400x300: long int(479*400/300) = 638 > 480 -> short int(480*479/638) = 360
    assert cb.unidet_input_size(400, 300) == (480, 360)
    with pytest.raises(ValueError, match="positive"):
        cb.unidet_input_size(0, 10)
    assert cb.to_unidet_pixels((0, 0, 384, 192), 384, 384) == pytest.approx((0, 0, 479, 239.5))


def test_spatial_iou() -> None:
    assert cb.spatial_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert cb.spatial_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert cb.spatial_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching: no overlap
    assert cb.spatial_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # official: ZeroDivisionError


def _box(cx: float, cy: float, half: float = 10) -> tuple[float, float, float, float]:
    return (cx - half, cy - half, cx + half, cy + half)


@pytest.mark.parametrize(
    ("relation", "c1", "c2", "want"),
    [
        # next to / near / on side of: 1 if |dx| < 150 or |dy| < 150, else 150 / max(|dx|, |dy|)
        ("next to", (0, 0), (149.9, 400), 1.0),
        ("near", (0, 0), (400, 149.9), 1.0),
        ("on side of", (0, 0), (150, 150), 1.0),  # not < 150 -> 150/150, also 1
        ("next to", (0, 0), (200, 300), 0.5),  # 150 / 300
        ("near", (0, 0), (-600, 200), 0.25),  # 150 / 600
        # left: dx = c2 - c1 > 0 and |dx| > |dy|, no overlap -> 1
        ("on the left of", (0, 0), (100, 50), 1.0),
        ("on the left of", (0, 0), (-100, 50), 0.0),  # wrong side
        ("on the left of", (0, 0), (100, 100), 0.0),  # |dx| == |dy|: strict > fails
        ("on the left of", (0, 0), (100, 101), 0.0),
        ("on the right of", (0, 0), (-100, 50), 1.0),
        ("on the right of", (0, 0), (100, 50), 0.0),
        ("on the right of", (0, 0), (0, 0), 0.0),  # dx == 0
        # top: dy > 0 (box2 lower in the image) and |dy| > |dx|
        ("on the top of", (0, 0), (50, 100), 1.0),
        ("on the top of", (0, 0), (50, -100), 0.0),
        ("on the bottom of", (0, 0), (50, -100), 1.0),
        ("on the bottom of", (0, 0), (100, -100), 0.0),
        # not handled by the official determine_position
        ("on top of", (0, 0), (0, 100), 0.0),
        (None, (0, 0), (100, 0), 0.0),
        ("behind", (0, 0), (100, 0), 0.0),
    ],
)
def test_determine_position(relation: str | None, c1: tuple, c2: tuple, want: float) -> None:
    assert cb.determine_position(relation, _box(*c1), _box(*c2)) == pytest.approx(want)


def test_determine_position_iou_rule() -> None:
    # box1 (0,0,20,20), box2 (10,0,30,20): dx = 10 > 0, dy = 0; IoU = 200/600 = 1/3 >= 0.1
    # -> 0.1 / (1/3) = 0.3
    assert cb.determine_position(
        "on the left of", (0, 0, 20, 20), (10, 0, 30, 20)
    ) == pytest.approx(0.3)
    # box2 (18,0,38,20): IoU = 40/760 = 0.0526 < 0.1 -> 1
    assert cb.determine_position("on the left of", (0, 0, 20, 20), (18, 0, 38, 20)) == 1.0
    # IoU exactly 0.1 takes the ">=" branch: 0.1/0.1 = 1 (same value, both sides of the boundary)
    # box2 (x, 0, x+20, 20) with overlap w: IoU = 20w / (800 - 20w) = 0.1 -> w = 40/11
    w = 40 / 11
    iou = cb.spatial_iou((0, 0, 20, 20), (20 - w, 0, 40 - w, 20))
    assert iou == pytest.approx(0.1)
    assert cb.determine_position(
        "on the left of", (0, 0, 20, 20), (20 - w, 0, 40 - w, 20)
    ) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ spatial score


def test_spatial_score_both_found() -> None:
    left, right = (0, 0, 20, 20), (100, 0, 120, 20)
    # 0.25*0.9 + 0.25*0.8 + 1/2 = 0.925
    assert cb.spatial_score("on the left of", left, right, 0.9, 0.8) == pytest.approx(0.925)
    # wrong relation: 0.225 + 0.2 = 0.425 < 0.5 -> 0
    assert cb.spatial_score("on the right of", left, right, 0.9, 0.8) == 0.0


def test_spatial_score_cutoff_boundary() -> None:
    # next to, centres 1000 px apart on both axes: 150/1000 = 0.15 -> position half 0.075
    far = (0, 0, 10, 10), (1000, 1000, 1010, 1010)
    # 0.25*1 + 0.25*1 + 0.075 = 0.575 >= 0.5: kept
    assert cb.spatial_score("next to", *far, 1.0, 1.0) == pytest.approx(0.575)
    # exactly 0.5 is kept (the cutoff is "< 0.5"): 0.125 + 0.125 + (150/300)/2
    assert cb.spatial_score("near", (0, 0, 10, 10), (300, 300, 310, 310), 0.5, 0.5) == 0.5
    # just below: 150/300.3 < 0.5 -> 0.4998 -> 0
    assert cb.spatial_score("near", (0, 0, 10, 10), (300.3, 300.3, 310.3, 310.3), 0.5, 0.5) == 0.0
    # "on top of" (no official branch) scores 0.5 only when both confidences are exactly 1
    stacked = (0, 0, 10, 10), (0, 300, 10, 310)
    assert cb.spatial_score("on top of", *stacked, 1.0, 1.0) == 0.5
    assert cb.spatial_score("on top of", *stacked, 1.0, 0.99) == 0.0
    assert cb.spatial_score("on the top of", *stacked, 1.0, 0.99) == pytest.approx(0.9975)


def test_spatial_score_missing_objects() -> None:
    box = (0, 0, 10, 10)
    # one found: 0.25 * conf <= 0.25 < 0.5 -> 0, whichever object it is
    assert cb.spatial_score("next to", box, None, 1.0, None) == 0.0
    assert cb.spatial_score("next to", None, box, None, 1.0) == 0.0
    assert cb.spatial_score("next to", None, None, None, None) == 0.0
    with pytest.raises(ValueError, match="confidence"):
        cb.spatial_score("next to", box, box, None, 1.0)


def test_first_detection_threshold_and_order() -> None:
    dets = [
        Detection("dog", (0, 0, 1, 1), 0.6),
        Detection("dog", (5, 5, 6, 6), 0.95),
        Detection("cat", (0, 0, 1, 1), 0.5),  # exactly 0.5: UniDet drops it (score > 0.5)
    ]
    best = cb.first_detection(dets, "dog")
    assert best is not None and best.score == 0.95
    assert cb.first_detection(dets, "cat") is None
    assert cb.first_detection(dets, None) is None


def test_spatial_image_score_person_mapping_and_scaling() -> None:
    # "a girl next to a dog": the official code looks for "person"; 384-px image, boxes rescaled
    # by 479/384: centres 100 px and 300 px apart in x -> 124.7 and 374.2 px: dy = 0 < 150 -> 1.
    dets = [Detection("person", _box(100, 100), 0.8), Detection("dog", _box(300, 100), 0.8)]
    assert cb.spatial_image_score("girl", "next to", "dog", dets, (384, 384)) == pytest.approx(0.9)
    # labelled "girl" instead of "person": not found -> one object -> 0
    dets2 = [Detection("girl", _box(100, 100), 0.8), Detection("dog", _box(300, 100), 0.8)]
    assert cb.spatial_image_score("girl", "next to", "dog", dets2, (384, 384)) == 0.0
    # distance scaling: 160 px apart in a 384 image = 199.6 px in UniDet's 479: both > 150
    dets3 = [Detection("cat", _box(100, 100), 1.0), Detection("dog", _box(260, 260), 1.0)]
    want = 0.5 + (150 / (160 * 479 / 384)) / 2
    assert cb.spatial_image_score("cat", "near", "dog", dets3, (384, 384)) == pytest.approx(want)


# ------------------------------------------------------------------------------ numeracy


def test_numeracy_duplicate_rule() -> None:
    assert cb.numeracy_duplicate((0, 0, 9, 9), (0, 0, 9, 9))
    # small box inside a big one: intersection / small area = 1 > 0.9
    assert cb.numeracy_duplicate((0, 0, 99, 99), (10, 10, 19, 19))
    # half overlap: IoU = 50/150, coverage 0.5 -> distinct
    assert not cb.numeracy_duplicate((0, 0, 9, 9), (5, 0, 14, 9))
    # +1 convention: (0,0,9,9) vs (1,0,10,9): inter 9*10 = 90 of area 100 = 0.9, not > 0.9
    assert not cb.numeracy_duplicate((0, 0, 9, 9), (1, 0, 10, 9))
    assert cb.numeracy_duplicate((0, 0, 9, 9), (0.5, 0, 9.5, 9))  # 95/100 > 0.9


def test_numeracy_score_hand_cases() -> None:
    dogs = [Detection("dog", _box(50 * i, 0), 0.9) for i in range(1, 3)]
    cat = [Detection("cat", _box(300, 300), 0.9)]
    objects = [("dog", 2), ("cat", 1)]
    # each object 1/2: dog found (+0.25) exact (+0.25); cat found (+0.25) exact (+0.25)
    assert cb.numeracy_score(objects, dogs + cat) == pytest.approx(1.0)
    three_dogs = [*dogs, Detection("dog", _box(200, 0), 0.9)]
    assert cb.numeracy_score(objects, three_dogs + cat) == pytest.approx(0.75)
    assert cb.numeracy_score(objects, dogs) == pytest.approx(0.5)  # cat missing
    assert cb.numeracy_score(objects, []) == 0.0
    # duplicates of one dog count once: 2 detections on top of each other -> 1 dog, count 2 fails
    dup = [Detection("dog", _box(50, 0), 0.9), Detection("dog", _box(50.5, 0), 0.8)]
    assert cb.numeracy_score([("dog", 2)], dup) == pytest.approx(0.5)
    assert cb.numeracy_score([("dog", 1)], dup) == pytest.approx(1.0)
    # detections at the 0.5 threshold do not exist
    assert cb.numeracy_score([("dog", 1)], [Detection("dog", _box(0, 0), 0.5)]) == 0.0
    assert cb.numeracy_score([], dogs) == 0.0  # official: ZeroDivisionError


def test_numeracy_aliases_and_substring_rename() -> None:
    people = [Detection("person", _box(100 * i, 0), 0.9) for i in range(1, 4)]
    assert cb.numeracy_score([("woman", 3)], people) == pytest.approx(1.0)
    assert cb.numeracy_score([("goldfish", 1)], [Detection("fish", _box(0, 0), 0.9)]) == 1.0
    # "television" is not mapped (the official table spells it "telivision")
    assert cb.numeracy_score([("television", 1)], [Detection("tv", _box(0, 0), 0.9)]) == 0.0
    # a prompt object missing from the labels takes over labels containing it
    assert cb.numeracy_score([("dog", 1)], [Detection("hot dog", _box(0, 0), 0.9)]) == 1.0
    with pytest.raises(ValueError, match="whole number"):
        cb.numeracy_score([("dog", 1.5)], [])  # type: ignore[list-item]


# ------------------------------------------------------------------------------ BLIP-VQA


def test_yes_ratio() -> None:
    assert cb.yes_ratio(0.3, 0.1) == pytest.approx(0.75)
    assert cb.yes_ratio(0.0, 0.2) == 0.0
    with pytest.raises(ValueError, match="no yes/no mass"):
        cb.yes_ratio(0.0, 0.0)
    with pytest.raises(ValueError):
        cb.yes_ratio(-0.1, 0.5)


def test_blip_answer_rounding_product_and_missing_phrases() -> None:
    # per-answer rounding to 4 decimals, then the product: 0.9123 * 0.5 = 0.45615 -> "0.4561"
    assert cb.blip_answer([0.91234, 0.5]) == "0.4561"
    # rounding happens before the product: 0.99995 -> 1.0000 and 0.00004 -> 0.0000
    assert cb.blip_answer([0.99995, 0.8]) == "0.8000"
    assert cb.blip_answer([0.00004, 0.9]) == "0.0000"
    # a missing phrase counts 1; a prompt with no noun phrase scores 1
    assert cb.blip_answer([0.8, None]) == "0.8000"
    assert cb.blip_answer([]) == "1.0000"
    # only the first 8 phrases count
    assert cb.blip_answer([1.0] * 8 + [0.0]) == "1.0000"
    assert cb.blip_vqa_score([0.5, 0.5, 0.5]) == 0.125


# ------------------------------------------------------------------------------ 3-in-1


def test_complex_kind_on_shipped_splits() -> None:
    spatial, action = layouts.load_complex_splits()
    prompts = layouts.load_compbench_prompts("complex")
    kinds = [cb.complex_kind(p, spatial, action) for p in prompts]
    # Each complex prompt is listed in exactly one of the official split files, which says its kind.
    folder = Path(layouts.__file__).resolve().parents[1] / "data" / "t2i-compbench"
    listed = {
        kind: set((folder / f"complex_val_{kind}.txt").read_text(encoding="utf-8").splitlines())
        for kind in ("spatial", "action", "spatialaction")
    }
    expected = [next(k for k, lines in listed.items() if p.strip() in lines) for p in prompts]
    assert kinds == expected
    assert {k: kinds.count(k) for k in listed} == {k: len(v) for k, v in listed.items()}
    # matched on the text before the first "." in lower case
    assert (
        cb.complex_kind("THE RED HAT WAS ON TOP OF THE BROWN COAT RACK", spatial, action)
        == "spatial"
    )


def test_three_in_one() -> None:
    assert cb.three_in_one(0.6, 0.8, 0.3, "spatial") == pytest.approx(0.7)
    assert cb.three_in_one(0.6, 0.8, 0.3, "action") == pytest.approx(0.45)
    assert cb.three_in_one(0.6, 0.8, 0.3, "spatialaction") == pytest.approx(1.7 / 3)
    with pytest.raises(ValueError, match="kind"):
        cb.three_in_one(0.6, 0.8, 0.3, "other")


def test_category_mean_and_vqa_result() -> None:
    assert cb.category_mean(["0.5000", 0.25, 1]) == pytest.approx(0.5833333333)
    assert cb.category_mean([]) == 0.0
    assert cb.vqa_result([0.5, "0.2500"]) == [
        {"question_id": 0, "answer": 0.5},
        {"question_id": 1, "answer": "0.2500"},
    ]


# ------------------------------------------------------------------------------ with a scorer


def test_score_image_spatial_with_pixel_scorer() -> None:
    image = draw_scene([("dog", "red", (20, 150, 99, 229)), ("cat", "blue", (250, 150, 329, 229))])
    scorer = PixelScorer(confidence=0.9)
    # dog left of cat, no overlap -> 0.225 + 0.225 + 0.5
    result = cb.score_image(scorer, "spatial", image, "a dog on the left of a cat")
    assert result.score == pytest.approx(0.95)
    assert cb.score_image(scorer, "spatial", image, "a cat on the left of a dog").score == 0.0
    assert cb.score_image(scorer, "spatial", image, "a dog on the top of a bench").score == 0.0


def test_score_image_numeracy_with_pixel_scorer() -> None:
    two_dogs_one_cat = draw_scene(
        [
            ("dog", "red", (10, 10, 60, 60)),
            ("dog", "red", (100, 10, 150, 60)),
            ("cat", "blue", (200, 200, 250, 250)),
        ]
    )
    scorer = PixelScorer()
    assert cb.score_image(scorer, "numeracy", two_dogs_one_cat, "two dogs and one cat").score == 1.0
    assert (
        cb.score_image(scorer, "numeracy", two_dogs_one_cat, "three dogs and a cat").score == 0.75
    )
    assert cb.score_image(scorer, "numeracy", two_dogs_one_cat, "two benches").score == 0.0


def test_score_image_attribute_and_complex_with_pixel_scorer() -> None:
    image = draw_scene([("dog", "red", (20, 150, 99, 229)), ("cat", "blue", (150, 150, 229, 229))])
    scorer = PixelScorer()
    good = cb.score_image(scorer, "color", image, "a red dog and a blue cat")
    assert good.answer == "0.6400" and good.score == pytest.approx(0.64)  # 0.8 * 0.8
    assert scorer.questions[-2:] == ["a red dog?", "a blue cat?"]
    swapped = cb.score_image(scorer, "color", image, "a blue dog and a red cat")
    assert swapped.answer == "0.0400"
    nonspatial = cb.score_image(scorer, "non_spatial", image, "A dog is sleeping.")
    assert nonspatial.score == pytest.approx(0.8)
    assert scorer.questions[-1] == "A dog is sleeping?"
    # complex "spatial" kind: (spatial + attribute) / 2; spatial: next to, centres 130 px apart
    # -> 162 px in UniDet pixels but dy = 0 < 150 -> 1: 0.225 + 0.225 + 0.5 = 0.95
    prompt = "The red dog was next to the blue cat."
    result = cb.score_image(scorer, "complex", image, prompt, kind="spatial")
    assert result.parts["attribute"] == pytest.approx(0.64)
    assert result.parts["spatial"] == pytest.approx(0.95)
    assert result.score == pytest.approx((0.95 + 0.64) * 0.5)
    with pytest.raises(ValueError, match="kind"):
        cb.score_image(scorer, "complex", image, prompt)
    with pytest.raises(ValueError, match="unknown T2I-CompBench category"):
        cb.score_image(scorer, "colour", image, prompt)


# ------------------------------------------------------------------------------ layouts


def test_shipped_prompts_and_licence() -> None:
    for category in cb.CATEGORIES:
        prompts = layouts.load_compbench_prompts(category)
        assert len(prompts) == 300, category
        for prompt in prompts:
            layouts.compbench_image_name(prompt, 2999)  # every shipped prompt is a valid name
    assert layouts.load_compbench_prompts("spatial")[0] == "a giraffe next to a lamp"
    from importlib import resources

    data = resources.files("gotr1").joinpath("data")
    assert "MIT License" in data.joinpath("t2i-compbench", "LICENSE").read_text()
    assert "T2I-CompBench" in data.joinpath("SOURCES.md").read_text()
    with pytest.raises(ValueError, match="unknown T2I-CompBench category"):
        layouts.load_compbench_prompts("colour")


def test_compbench_image_names() -> None:
    assert layouts.compbench_image_name("a cat", 7) == "a cat_000007.png"
    assert layouts.compbench_image_name("a cat", 1234567) == "a cat_1234567.png"
    with pytest.raises(ValueError, match="'_'"):
        layouts.compbench_image_name("a_cat", 0)
    with pytest.raises(ValueError, match="'/'"):
        layouts.compbench_image_name("a cat/dog", 0)
    with pytest.raises(ValueError, match="too long"):
        layouts.compbench_image_name("x" * 300, 0)


def test_compbench_generation_layout_resume_and_readback(tmp_path: Path) -> None:
    prompts = ["a dog next to a cat", "two dogs"]
    items = layouts.compbench_items(tmp_path, "spatial", prompts, images_per_prompt=3)
    assert [i.index for i in items] == list(range(6))
    assert items[4].prompt == "two dogs" and items[4].sample_index == 1 and items[4].seed == 46
    assert items[4].image_path == tmp_path / "spatial" / "samples" / "two dogs_000004.png"
    assert layouts.shard(items, 1, 2) == items[1::2]
    with pytest.raises(ValueError, match="rank"):
        layouts.shard(items, 2, 2)

    todo = layouts.pending(items)
    assert todo == items
    image = draw_scene([("dog", "red", (10, 10, 50, 50))], size=64)
    for item in todo[:4]:
        write_item(item, image, f"chain for {item.index}", {"seed": item.seed})
    assert layouts.pending(items) == items[4:]  # resume skips finished images
    samples_dir = tmp_path / "spatial" / "samples"
    assert sorted(p.name for p in samples_dir.iterdir()) == [
        "a dog next to a cat_000000.png",
        "a dog next to a cat_000001.png",
        "a dog next to a cat_000002.png",
        "two dogs_000003.png",
    ]  # only PNGs: no chains or temporary files where the official evaluators look
    record = json.loads(items[3].chain_path.with_suffix(".json").read_text())
    assert (
        record["seed"] == 45 and record["prompt"] == "two dogs" and record["chain"] == "chain for 3"
    )
    assert items[3].chain_path.read_text() == "chain for 3"
    assert Image.open(items[3].image_path).size == (64, 64)

    read = layouts.read_compbench_samples(tmp_path, "spatial")
    assert [(s.question_id, s.prompt) for s in read] == [
        (0, "a dog next to a cat"),
        (1, "a dog next to a cat"),
        (2, "a dog next to a cat"),
        (3, "two dogs"),
    ]
    (samples_dir / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a T2I-CompBench sample name"):
        layouts.read_compbench_samples(tmp_path, "spatial")


def test_write_compbench_results_official_files(tmp_path: Path) -> None:
    result_dir = layouts.compbench_result_dir(tmp_path, "spatial", "Qwen2.5-VL 7B / local")
    assert result_dir == tmp_path / "spatial" / "judged-by-Qwen2.5-VL-7B-local"
    path = layouts.write_compbench_results(
        result_dir,
        "spatial",
        [0.0, 0.95],
        question_ids=[0, 1],
        image_names=["a_000000.png", "a_000001.png"],
    )
    assert path == result_dir / "labels" / "annotation_obj_detection_2d" / "vqa_result.json"
    assert json.loads(path.read_text()) == [
        {"question_id": 0, "answer": 0.0},
        {"question_id": 1, "answer": 0.95},
    ]
    assert (path.parent / "avg_score.txt").read_text() == "score avg:0.475"
    assert json.loads((path.parent / "mapping.json").read_text())[1] == {
        "image": "a_000001.png",
        "question_id": 1,
    }
    blip = layouts.write_compbench_results(result_dir, "blip", ["0.6400", "0.0400"])
    assert json.loads(blip.read_text())[0] == {"question_id": 0, "answer": "0.6400"}
    assert (blip.parent / "blip_vqa_score.txt").read_text() == "BLIP-VQA score:0.34"
    num = layouts.write_compbench_results(result_dir, "numeracy", [1.0, 0.5])
    assert num.parent.name == "annotation_num"
    assert (num.parent / "score.txt").read_text() == "total:1.5 num:2 avg:0.75"
    three = layouts.write_compbench_results(result_dir, "3_in_1", [0.5])
    assert (three.parent / "vqa_score.txt").read_text() == "score avg:0.5"
    with pytest.raises(ValueError, match="unknown metric"):
        layouts.write_compbench_results(result_dir, "fid", [0.5])
    with pytest.raises(ValueError, match="question ids"):
        layouts.write_compbench_results(result_dir, "clip", [0.5], question_ids=[0, 1])


def test_summary_is_labelled_with_the_scorer(tmp_path: Path) -> None:
    record = cb.summary_record({"color": 0.5, "spatial": 0.25}, "qwen2.5-vl-7b", {"color": 3000})
    assert record["judged_by"] == "qwen2.5-vl-7b"
    assert "not the official" in str(record["note"])
    assert record["metric_keys"] == {"color": "blip", "spatial": "spatial"}
    markdown = cb.summary_markdown(record)
    assert "judged by qwen2.5-vl-7b" in markdown
    assert f"| color | {cb.METRIC_LABELS['blip']} | 0.5000 | 3000 |" in markdown
    json_path, md_path = layouts.write_summary(tmp_path, record, markdown, "compbench_summary")
    assert json.loads(json_path.read_text())["scores"] == {"color": 0.5, "spatial": 0.25}
    assert md_path.read_text() == markdown


def test_the_non_spatial_metric_is_labelled_as_a_yes_probability_stand_in() -> None:
    # The key stays "clip" (official metric and result-folder name); every summary says what it is.
    assert cb.CATEGORY_METRIC["non_spatial"] == "clip"
    record = cb.summary_record({"non_spatial": 0.7, "complex": 0.4}, "qwen2.5-vl-7b")
    assert record["metric_keys"] == {"non_spatial": "clip", "complex": "3_in_1"}
    assert record["metrics"]["non_spatial"] == "clip stand-in: yes-probability (scorer)"
    assert "clip stand-in: yes-probability (scorer)" in str(record["metrics"]["complex"])
    markdown = cb.summary_markdown(record)
    assert "| non_spatial | clip stand-in: yes-probability (scorer) | 0.7000 |  |" in markdown
    assert "| non_spatial | clip |" not in markdown
    assert set(cb.METRIC_LABELS) == set(cb.CATEGORY_METRIC.values())


def test_evidence_boxes_and_grid_conversion() -> None:
    from gotr1.eval.evidence import grid_to_pixels, pixels_to_grid

    assert grid_to_pixels((0, 250, 500, 1000), 384, 200) == (0.0, 50.0, 192.0, 200.0)
    assert pixels_to_grid((0.0, 50.0, 192.0, 200.0), 384, 200) == (0, 250, 500, 1000)
    assert pixels_to_grid((-5, 0, 999, 10), 384, 384) == (0, 0, 1000, 26)  # clamped
    d = Detection("dog", (1, 2, 3, 4), 1)
    assert d.box == (1.0, 2.0, 3.0, 4.0) and isinstance(d.score, float)
    with pytest.raises(ValueError, match="x1, y1, x2, y2"):
        Detection("dog", (1, 2, 3), 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        Detection("dog", (1, 2, 3, float("nan")), 0.5)
