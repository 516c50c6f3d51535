"""The GoT chain format: parsing anything, round-trips, layouts and box overlap."""

from __future__ import annotations

import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gotr1.chain import (
    BOX_END,
    BOX_START,
    GOT_MARKUP_TOKENS,
    OBJ_END,
    OBJ_START,
    Chain,
    ChainObject,
    box_iou,
    format_chain,
    format_object,
    parse_chain,
    render_layout,
)

REAL_GOT_R1_CHAIN = (
    "The image features a serene indoor setting. On the left, a "
    "<|obj_start|>yellow vase<|obj_end|> <|box_start|>(65,488),(582,982)<|box_end|> holds fresh "
    "flowers, while a <|obj_start|>wooden table<|obj_end|> <|box_start|>(0,700),(999,999)<|box_end|> "
    "stretches below it."
)


def test_parses_the_real_got_r1_format() -> None:
    chain = parse_chain(REAL_GOT_R1_CHAIN)
    assert chain.errors == []
    assert chain.objects == [
        ChainObject("yellow vase", (65, 488, 582, 982)),
        ChainObject("wooden table", (0, 700, 999, 999)),
    ]
    assert chain.names == ["yellow vase", "wooden table"]
    assert chain.boxes[0] == (65, 488, 582, 982)


@pytest.mark.parametrize(
    ("text", "objects", "error_fragment"),
    [
        ("", 0, None),
        (f"{OBJ_START}cat{OBJ_END} {BOX_START}(1,2),(3", 0, "not closed"),
        (f"{OBJ_START}cat", 0, "not closed"),
        (f"{OBJ_START}cat{OBJ_END} sits quietly", 0, "has no box"),
        (f"{BOX_START}(1,2),(3,4){BOX_END}", 0, "has no object"),
        (f"{OBJ_START}{OBJ_START}cat{OBJ_END}{BOX_START}(1,2),(3,4){BOX_END}", 1, "not closed"),
        (f"{OBJ_START}cat{OBJ_END}{BOX_START}(a,2),(3,4){BOX_END}", 0, "malformed box"),
        (f"{OBJ_START}cat{OBJ_END}{BOX_START}(-5,2),(3000,4){BOX_END}", 1, "clamped"),
        (f"{OBJ_START}cat{OBJ_END}{BOX_START}(500,600),(100,700){BOX_END}", 1, "swapped"),
        (f"{OBJ_START}cat{OBJ_END}{BOX_START}(5,5),(5,9){BOX_END}", 1, "zero-area"),
        (f"{OBJ_START}  {OBJ_END}{BOX_START}(1,2),(3,4){BOX_END}", 0, "empty object name"),
        (f"{OBJ_END}{BOX_END}", 0, "stray"),
        (f"{OBJ_START}cat{OBJ_END}{BOX_START}(1.6,2),(3,4){BOX_END}", 1, "rounded"),
        (f"{OBJ_START}cat{OBJ_END}{BOX_START}(1{'9' * 5000},2),(3,4){BOX_END}", 1, "clamped"),
    ],
)
def test_bad_chains_are_reported_not_raised(
    text: str, objects: int, error_fragment: str | None
) -> None:
    chain = parse_chain(text)
    assert len(chain.objects) == objects
    if error_fragment is None:
        assert chain.errors == []
    else:
        assert any(error_fragment in e for e in chain.errors), chain.errors
        assert all(len(e) < 200 for e in chain.errors)


def test_out_of_range_values_are_clamped_and_swaps_kept_as_written() -> None:
    clamped = parse_chain(f"{OBJ_START}cat{OBJ_END}{BOX_START}(-5,2),(3000,4){BOX_END}")
    assert clamped.objects[0].box == (0, 2, 1000, 4)
    swapped = parse_chain(f"{OBJ_START}cat{OBJ_END}{BOX_START}(500,600),(100,700){BOX_END}")
    assert swapped.objects[0].box == (500, 600, 100, 700)


def test_ten_thousand_objects() -> None:
    text = " ".join(
        format_object(f"thing {i}", (i % 900, 0, i % 900 + 50, 60)) for i in range(10_000)
    )
    chain = parse_chain(text)
    assert len(chain.objects) == 10_000 and chain.errors == []


def test_error_messages_stay_short_whatever_the_input() -> None:
    name = "x" * 100_000
    chain = parse_chain(f"<|obj_start|>{name}<|obj_end|><|box_start|>(1,2),(3)<|box_end|>")
    assert chain.errors and all(len(error) < 300 for error in chain.errors)


def test_non_string_input_is_an_error_not_a_crash() -> None:
    chain = parse_chain(b"\x00\xff")  # type: ignore[arg-type]
    assert chain.objects == [] and chain.errors


names = st.text(alphabet=string.ascii_letters + " -'", min_size=1, max_size=20).filter(
    lambda s: s.strip() != ""
)
coordinates = st.integers(min_value=0, max_value=1000)


@st.composite
def valid_objects(draw: st.DrawFn) -> ChainObject:
    x1, x2 = sorted(draw(st.lists(coordinates, min_size=2, max_size=2, unique=True)))
    y1, y2 = sorted(draw(st.lists(coordinates, min_size=2, max_size=2, unique=True)))
    return ChainObject(" ".join(draw(names).split()), (x1, y1, x2, y2))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(valid_objects(), max_size=8),
    st.text(alphabet=string.ascii_letters + " .,", max_size=30),
)
def test_format_then_parse_round_trips(objects: list[ChainObject], prose: str) -> None:
    sentences = [prose.replace("{", "") + " {object} " + prose for _ in objects]
    chain = parse_chain(format_chain(objects, sentences))
    assert chain.objects == objects
    assert chain.errors == []


markup_soup = st.lists(
    st.one_of(
        st.sampled_from(GOT_MARKUP_TOKENS),
        st.sampled_from(["(", ")", ",", "-", "1000", "99999", "3", " ", "cat", "\x00", "\n", "."]),
        st.text(max_size=5),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), markup_soup, st.binary().map(lambda b: b.decode("latin-1"))))
def test_parse_never_raises(text: str) -> None:
    chain = parse_chain(text)
    assert isinstance(chain, Chain)
    for obj in chain.objects:
        assert obj.name and all(0 <= v <= 1000 for v in obj.box)


def test_format_object_rejects_markup_in_names() -> None:
    with pytest.raises(ValueError):
        format_object(f"a {OBJ_END} b", (0, 0, 1, 1))
    with pytest.raises(ValueError):
        format_object("   ", (0, 0, 1, 1))


def test_box_iou() -> None:
    assert box_iou((0, 0, 100, 100), (0, 0, 100, 100)) == 1.0
    assert box_iou((0, 0, 100, 100), (100, 0, 200, 100)) == 0.0
    assert box_iou((0, 0, 100, 100), (50, 0, 150, 100)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 100, 100), (25, 25, 75, 75)) == pytest.approx(0.25)
    assert box_iou((100, 0, 0, 100), (0, 0, 100, 100)) == 0.0  # swapped corners have no area
    assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0


def test_render_layout_draws_each_box_in_its_own_colour_with_its_name() -> None:
    chain = parse_chain(REAL_GOT_R1_CHAIN)
    image = render_layout(chain, 448)
    assert image.size == (448, 448)
    # the vase box's left edge, at x = 65/1000 * 448, carries the first palette colour
    first, second = {image.getpixel((29, 400))[:3]}, {image.getpixel((224, 447))[:3]}
    assert first != {(255, 255, 255)} and second != {(255, 255, 255)} and first != second
    # the name label sits at the box's top-left corner: non-white pixels just inside it
    label = image.crop((30, 220, 80, 235))
    assert len(np.unique(np.asarray(label).reshape(-1, 3), axis=0)) > 2
    assert render_layout([], 64).getcolors() == [(64 * 64, (255, 255, 255))]
