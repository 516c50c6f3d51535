"""Reading judge answers: scores and boxes from what models actually write; never a crash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gotr1.chain import format_chain, parse_chain
from gotr1.rewards import qwen_prompts as qp


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"score": 7}', 7.0),
        ('Here is my judgement:\n```json\n{"score": 8, "reason": "good"}\n```', 8.0),
        ('The layout is fine. {"Score": "6"} Thanks!', 6.0),
        ("{'score': 5}", 5.0),
        ("9", 9.0),
        ("**4**", 4.0),
        ("7/10", 7.0),
        ("Score: 6.5", 6.5),
        ("I would give it a rating of 3.", 3.0),
        ("The final score is 4/5", 8.0),  # a fraction of another scale is rescaled
        ('{"score": 14}', 10.0),  # clamped
        ('{"score": -3}', 0.0),
        ("[8]", 8.0),
        ('{"evaluation": {"score": 2}}', 2.0),  # nested: found by its label
        ("The picture has 3 circles and 2 squares.", None),  # numbers without a score label
        ("", None),
        ("   ", None),
        (None, None),
        ('{"score": "high"}', None),
        ('{"score": NaN}', None),
        ("garbage ]]{{[ 1e999", None),
        # markdown emphasis and "out of" phrasing, as chat models write them
        ("Final Score: **9**", 9.0),
        ("**Final Score:** **9**", 9.0),
        ("**Score**: 7/10", 7.0),
        ("**8**/10", 8.0),
        ("8 out of 10", 8.0),
        ("I'd rate it 8 out of 10.", 8.0),
        ("I would give this image a 7/10 because the colours match.", 7.0),
        ("The image scored 6 out of 10.", 6.0),
        ("Rating: 4 out of 5", 8.0),  # another scale, rescaled
        # ... but counts in prose are still not scores
        ("3 out of 4 objects are present.", None),
        ("I would give 3 circles more room.", None),
        ("Score from 0 to 10 as asked.", None),
    ],
)
def test_parse_score(answer, expected):
    assert qp.parse_score(answer, 0, 10) == expected


def test_parse_score_bands():
    assert qp.parse_score("0", 1, 10) == 1.0  # R_spa's band starts at 1
    assert qp.band_to_unit(1.0, "spa") == 0.0
    assert qp.band_to_unit(10.0, "spa") == 1.0
    assert qp.band_to_unit(5.0, "sem") == 0.5


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]', [[10, 20, 30, 40]]),
        (
            '```json\n[\n\t{"bbox_2d": [1, 2, 3, 4], "label": "a"},\n\t{"bbox_2d": [5, 6, 7, 8], "label": "a"}\n]\n```',
            [[1, 2, 3, 4], [5, 6, 7, 8]],
        ),
        ('The cat is at {"bbox_2d": [10.5, 20, 30, 40]}.', [[10.5, 20, 30, 40]]),
        ('{"bbox": [[10, 20], [30, 40]]}', [[10, 20, 30, 40]]),
        ("[10, 20, 30, 40]", [[10, 20, 30, 40]]),
        ("The object spans (10,20),(30,40).", [[10, 20, 30, 40]]),
        ("[]", []),
        ("```json\n[]\n```", []),
        ("There is no red circle in the image.", []),
        ("None", []),
        ('{"score": 3}', None),
        ('[{"label": "cat"}]', None),
        ('[{"bbox_2d": [1, 2, 3]}]', None),
        ("I see a cat.", None),
        ("", None),
        (None, None),
        # cut off by max_new_tokens: every complete box before the cut is kept
        (
            '```json\n[\n\t{"bbox_2d": [1, 2, 3, 4], "label": "a"},\n\t{"bbox_2d": [5, 6, 7, 8], '
            '"label": "a"},\n\t{"bbox_2d": [9, 10,',
            [[1, 2, 3, 4], [5, 6, 7, 8]],
        ),
        (
            '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "lab',
            [[1, 2, 3, 4], [5, 6, 7, 8]],
        ),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox', [[1, 2, 3, 4]]),
        ('[{"bbox_2d": [1, 2, 3', None),
    ],
)
def test_parse_boxes(answer, expected):
    assert qp.parse_boxes(answer) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parsers_never_raise(text):
    score = qp.parse_score(text, 0, 10)
    assert score is None or 0.0 <= score <= 10.0
    boxes = qp.parse_boxes(text)
    assert boxes is None or all(len(b) == 4 for b in boxes)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-5000, 5000, allow_nan=False), min_size=4, max_size=4),
    st.integers(28, 4000),
    st.integers(28, 4000),
)
def test_model_boxes_always_land_on_the_grid(box, width, height):
    for box_format, size in (("qwen2.5", (width, height)), ("grid1000", None), ("unit", None)):
        x1, y1, x2, y2 = qp.model_box_to_grid(box, box_format, size)
        assert 0 <= x1 <= x2 <= 1000 and 0 <= y1 <= y2 <= 1000


def test_questions_carry_the_rubric_and_the_plan():
    chain = parse_chain(
        "A plan. "
        + format_chain([("red circle", (10, 20, 300, 400)), ("blue square", (500, 500, 900, 900))])
    )
    semantic = qp.semantic_question("a red circle and a blue square", chain)
    assert "[red circle] (10,20),(300,400)" in semantic and "<|obj_start|>" not in semantic
    assert '{"score": <integer 0-10>}' in semantic and "8-10" in semantic
    as_text = qp.layout_question("a red circle", chain, as_text=True)
    assert "- blue square: (500,500),(900,900)" in as_text and "1-10" in as_text
    canvas = qp.layout_question("a red circle")
    assert "top-left corner" in canvas and "(500,500)" not in canvas
    assert (
        qp.ground_question("red circle")
        == "Locate the red circle, report the bbox coordinates in JSON format."
    )
    assert "5-7" in qp.image_question("x") and "0-4" in qp.image_question("x")
    assert qp.readable_plan(parse_chain("")) == "(empty plan)"
