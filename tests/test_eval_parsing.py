"""Rule-based prompt parsing: unit cases and measured agreement on the shipped benchmark prompts.

Agreement is measured against expectations built independently of the parser:

- spatial (all 300 val prompts): every prompt has the form "a/an X <relation> a/an Y"; the
  expectation splits the prompt text at the relation phrase found between the two noun phrases
  (obj1 = X, obj2 = Y, relation = the text in between), without using the parser's lexicon.
- numeracy: 170 of the 300 prompts labelled by hand below, in three disjoint sets: 50 drawn at
  random (seed 7), 20 sentence-style prompts, and 100 more drawn at random (seed 8) from the
  rest; plus a structural check over all 300 (every number word is counted once).
- attributes: the "a/an A N and a/an A N" prompts of the colour, shape and texture files must give
  exactly those two noun phrases (the BLIP-VQA questions).

Measured when this file was written: spatial 300/300 objects and relations; numeracy 50/50 random
+ 20/20 sentence + 100/100 second random sample exact (170/170 hand-labelled prompts), 300/300
number words; attribute templates 229/229 colour, 88/88 shape, 163/163 texture; complex prompts:
58/58 spatial-split prompts give two objects, 30/30 hand-labelled spatial+action prompts exact.
docs/benchmarks.md reports these figures.
"""

from __future__ import annotations

import random
import re

import pytest

from gotr1.eval.layouts import load_compbench_prompts
from gotr1.eval.prompt_parsing import (
    SPATIAL_VOCAB,
    blip_questions,
    find_spatial_relation,
    is_adjective,
    noun_chunks,
    parse_complex_spatial,
    parse_numeracy,
    parse_spatial,
    singularize,
    tokenize,
)

# ----------------------------------------------------------------------------------- spatial


def _expected_spatial(prompt: str) -> tuple[str, str, str]:
    """Independent expectation: 'a X <rel> a Y' split by text, not by the parser."""
    match = re.fullmatch(r"an? (\w+) (.+?) an? (\w+)", prompt)
    assert match, f"unexpected spatial prompt shape: {prompt!r}"
    return match[1], match[2], match[3]


def test_spatial_agreement_on_all_shipped_prompts() -> None:
    prompts = load_compbench_prompts("spatial")
    assert len(prompts) == 300
    agree = 0
    disagreements = []
    for prompt in prompts:
        obj1, relation, obj2 = _expected_spatial(prompt)
        assert relation in SPATIAL_VOCAB  # the data's relation always belongs to the vocabulary
        parsed = parse_spatial(prompt)
        got = (parsed.obj1, parsed.relation, parsed.obj2) if parsed else None
        if got == (obj1, relation, obj2):
            agree += 1
        else:
            disagreements.append((prompt, got))
    rate = agree / len(prompts)
    assert rate >= 0.95, f"spatial agreement {agree}/300; first misses: {disagreements[:5]}"
    # Measured: 300/300. A drop below means a regression in the parser.
    assert agree == 300, disagreements[:5]


def test_relation_search_follows_official_vocabulary_order() -> None:
    # Plain substring search in vocab order, as 2D_spatial_eval.py: "near" is tested before
    # "on the left of", and "on the top of" before "on top of".
    assert find_spatial_relation("a cat on the left of a nearby dog") == "near"
    assert find_spatial_relation("a cup on the top of a desk") == "on the top of"
    assert find_spatial_relation("a cup on top of a desk") == "on top of"
    assert find_spatial_relation("a cat next to a dog near a tree") == "next to"
    assert find_spatial_relation("A cat Next to a dog") is None  # case-sensitive like the official
    assert find_spatial_relation("a cat and a dog") is None


def test_parse_spatial_objects_and_person_words() -> None:
    parsed = parse_spatial("a woman on the right of a teddy bear")
    assert parsed is not None
    assert (parsed.obj1, parsed.relation, parsed.obj2) == ("woman", "on the right of", "teddy bear")
    assert parse_spatial("") is None
    plural = parse_spatial("two dogs near three cats")
    assert plural is not None and (plural.obj1, plural.obj2) == ("dog", "cat")


# ----------------------------------------------------------------------------------- numeracy

# Hand-labelled: random.Random(7).sample(range(300), 50) of numeracy_val.txt.
NUMERACY_RANDOM_50: dict[int, list[tuple[str, int]]] = {
    19: [("dog", 2)],
    23: [("bread", 6)],
    24: [("knife", 5)],
    25: [("knife", 1)],
    29: [("boy", 4)],
    30: [("goldfish", 4)],
    31: [("truck", 6)],
    32: [("table", 5)],
    35: [("balloon", 7)],
    37: [("television", 6)],
    44: [("lemon", 1)],
    46: [("microwave", 3)],
    48: [("train", 2)],
    49: [("refrigerator", 4)],
    52: [("vase", 6)],
    60: [("horse", 6)],
    63: [("peach", 8)],
    68: [("sheep", 6)],
    73: [("apple", 3)],
    77: [("hamburger", 5)],
    92: [("lamp", 3), ("train", 2)],
    96: [("painting", 3), ("knife", 1)],
    109: [("guitar", 1), ("candle", 4)],
    113: [("chicken", 4), ("bee", 2)],
    114: [("cup", 4), ("ship", 3)],
    123: [("dog", 1), ("sofa", 2)],
    148: [("stool", 1), ("book", 3)],
    157: [("table", 3), ("bird", 2)],
    165: [("helicopter", 3), ("pillow", 2)],
    187: [("book", 2), ("train", 2), ("man", 4), ("bear", 3), ("hamburger", 4)],
    190: [("tent", 4), ("boat", 2), ("pig", 1)],
    202: [("pen", 1), ("table", 1), ("truck", 1)],
    203: [("chicken", 3), ("kite", 4), ("candle", 3), ("bird", 4), ("shrimp", 4)],
    214: [("stool", 1), ("balloon", 4), ("banana", 3)],
    217: [("guitar", 1), ("horse", 2), ("cake", 4), ("kite", 3)],
    222: [("candle", 2), ("fish", 1), ("bicycle", 1)],
    259: [("key", 2), ("phone", 3), ("bird", 4)],
    274: [("airplane", 3), ("cup", 2), ("chair", 1), ("lemon", 2), ("bowl", 4)],
    276: [("backpack", 1), ("apple", 3), ("strawberry", 2), ("bowl", 1)],
    280: [("flag", 2), ("camera", 2), ("tomato", 2), ("couch", 1), ("man", 3)],
    282: [("sink", 4), ("rabbit", 2), ("stool", 1)],
    285: [("pig", 2), ("shrimp", 4), ("cake", 1)],
    286: [("helicopter", 1), ("dog", 2), ("lemon", 2)],
    288: [("chicken", 1), ("bird", 4), ("microphone", 4)],
    289: [("clock", 3), ("cat", 4), ("desk", 3), ("book", 1)],
    292: [("backpack", 4), ("peach", 2), ("train", 3)],
    295: [("microphone", 1), ("bread", 3), ("camel", 2)],
    297: [("bee", 2), ("desk", 2), ("bird", 4), ("kite", 2)],
    298: [("strawberry", 1), ("banana", 2), ("tent", 4), ("peach", 2)],
    299: [("cup", 2), ("painting", 3), ("lamp", 4), ("banana", 4)],
}

# Hand-labelled sentence-style prompts (verbs, objects after the verb, "a ..." in the predicate).
NUMERACY_SENTENCES: dict[str, list[tuple[str, int]]] = {
    "four apples were picked from the tree": [("apple", 4)],
    "four ducks quacked by the pond": [("duck", 4)],
    "six people gathered for a picnic": [("person", 6)],
    "three butterflies danced in the garden": [("butterfly", 3)],
    "two drums added rhythm to the music": [("drum", 2)],
    "seven strawberries were ripe for picking": [("strawberry", 7)],
    "five sheep grazed in the pasture": [("sheep", 5)],
    "two tables and three lamps illuminated the room": [("table", 2), ("lamp", 3)],
    "two men and one pig played in the yard": [("man", 2), ("pig", 1)],
    "one kite flew alongside three strawberries": [("kite", 1), ("strawberry", 3)],
    "three camels shared a burger": [("camel", 3)],
    "three desks were covered with two butterflies": [("desk", 3), ("butterfly", 2)],
    "two balloons floated with four mice": [("balloon", 2), ("mouse", 4)],
    "three lemons and one banana were used for a recipe": [("lemon", 3), ("banana", 1)],
    "four trains carried four people": [("train", 4), ("person", 4)],
    "one frog jumped near three suitcases": [("frog", 1), ("suitcase", 3)],
    "two guitars, a helicopter, and a balloon entertained the crowd": [
        ("guitar", 2),
        ("helicopter", 1),
        ("balloon", 1),
    ],
    "three bananas, two bees, an egg, a painting, and a goldfish adorned the room": [
        ("banana", 3),
        ("bee", 2),
        ("egg", 1),
        ("painting", 1),
        ("goldfish", 1),
    ],
    "four phones, a butterfly, and a bottle adorned the coffee table": [
        ("phone", 4),
        ("butterfly", 1),
        ("bottle", 1),
    ],
    "two sheep, four dogs, three candles, and three bees created a warm atmosphere": [
        ("sheep", 2),
        ("dog", 4),
        ("candle", 3),
        ("bee", 3),
    ],
}


# Hand-labelled by reading each prompt (not from the parser's output): a second sample, 100 prompts
# drawn with random.Random(8) from the 230 numeracy_val.txt prompts that are in neither
# NUMERACY_RANDOM_50 nor NUMERACY_SENTENCES (see _second_sample).
NUMERACY_RANDOM_100: dict[int, list[tuple[str, int]]] = {
    3: [("turtle", 1)],
    5: [("car", 8)],
    7: [("girl", 6)],
    8: [("vase", 1)],
    9: [("bottle", 8)],
    11: [("fish", 3)],
    14: [("drum", 1)],
    16: [("drum", 7)],
    18: [("shrimp", 7)],
    22: [("pig", 1)],
    26: [("refrigerator", 1)],
    28: [("television", 5)],
    36: [("pillow", 3)],
    39: [("cup", 7)],
    42: [("candle", 5)],
    45: [("candle", 4)],
    47: [("train", 7)],
    50: [("frog", 4)],
    51: [("backpack", 1)],
    53: [("pig", 4)],
    55: [("boy", 3)],
    66: [("balloon", 5)],
    67: [("bottle", 3)],
    71: [("book", 5)],
    80: [("train", 5)],
    83: [("fish", 6)],
    86: [("cat", 8)],
    87: [("balloon", 4)],
    89: [("car", 2)],
    90: [("camera", 4), ("horse", 3)],
    94: [("deer", 3), ("bowl", 4)],
    97: [("bee", 2), ("lamp", 2)],
    101: [("stool", 1), ("sink", 4)],
    102: [("plate", 2), ("mouse", 3)],
    104: [("chicken", 4), ("horse", 4)],
    108: [("chicken", 4), ("key", 3)],
    110: [("swan", 4), ("suitcase", 2)],
    118: [("printer", 2), ("computer", 1)],
    119: [("guitar", 3), ("pillow", 2)],
    120: [("drum", 3), ("man", 4)],
    124: [("boy", 4), ("phone", 3)],
    127: [("deer", 2), ("man", 4)],
    129: [("refrigerator", 3), ("rabbit", 2)],
    130: [("swan", 2), ("bottle", 1)],
    131: [("cat", 1), ("book", 1)],
    132: [("tent", 1), ("fish", 3)],
    135: [("pillow", 2), ("lemon", 1)],
    136: [("paddle", 1), ("goldfish", 3)],
    137: [("boat", 1), ("fish", 4)],
    142: [("bag", 4), ("book", 3)],
    146: [("bowl", 3), ("couch", 3)],
    150: [("printer", 4), ("chicken", 4)],
    151: [("man", 2), ("deer", 4)],
    155: [("lamp", 4), ("dog", 4)],
    159: [("train", 1), ("bicycle", 3)],
    160: [("rabbit", 3), ("bicycle", 3)],
    161: [("stool", 3), ("bear", 3)],
    163: [("ship", 4), ("horse", 4)],
    166: [("chair", 4), ("giraffe", 1)],
    169: [("clock", 3), ("microwave", 2)],
    170: [("helmet", 1), ("airplane", 2)],
    173: [("ship", 3), ("swan", 1)],
    175: [("helicopter", 3), ("microwave", 1)],
    180: [("couch", 3), ("key", 2), ("woman", 2), ("rabbit", 4), ("bowl", 1)],
    181: [("bread", 1), ("fish", 4), ("computer", 1), ("bag", 2), ("bicycle", 1)],
    183: [("chicken", 3), ("pen", 3), ("lemon", 1), ("tent", 2), ("bird", 2)],
    184: [("shrimp", 4), ("microwave", 3), ("helicopter", 4), ("bee", 1)],
    188: [("drum", 4), ("cake", 3), ("dog", 3), ("helmet", 2)],
    193: [("candle", 2), ("person", 2), ("dog", 2)],
    195: [("sink", 4), ("backpack", 3), ("cup", 2), ("pear", 2)],
    196: [("bottle", 1), ("girl", 1), ("desk", 1), ("banana", 2)],
    198: [("candle", 3), ("cup", 1), ("goldfish", 1), ("camera", 2)],
    200: [("couch", 4), ("shrimp", 4), ("cup", 1), ("candle", 1)],
    204: [("vase", 1), ("woman", 1), ("goldfish", 4)],
    207: [("banana", 1), ("bicycle", 2), ("strawberry", 4), ("sofa", 1)],
    208: [("desk", 4), ("mouse", 1), ("chicken", 4), ("camel", 2)],
    213: [("girl", 2), ("horse", 4), ("chair", 2)],
    216: [("duck", 3), ("clock", 2), ("desk", 2), ("cow", 3), ("kite", 4)],
    220: [("television", 1), ("camel", 3), ("chicken", 4)],
    221: [("turtle", 3), ("balloon", 2), ("fish", 1), ("kite", 4), ("bee", 2)],
    226: [("chair", 1), ("woman", 3), ("tomato", 2), ("pig", 3), ("pen", 3)],
    228: [("apple", 2), ("bag", 1), ("dog", 2), ("clock", 4), ("microwave", 3)],
    231: [("woman", 4), ("guitar", 3), ("cow", 4)],
    232: [("frog", 1), ("fish", 2), ("tent", 2), ("phone", 4), ("turtle", 3)],
    237: [("peach", 4), ("car", 3), ("person", 3)],
    241: [("ship", 4), ("tent", 2), ("fish", 2)],
    242: [("apple", 4), ("book", 2), ("bee", 2)],
    244: [("flag", 2), ("butterfly", 3), ("banana", 4), ("apple", 2)],
    246: [("printer", 2), ("cat", 2), ("frog", 3), ("bird", 2), ("bee", 3)],
    251: [("candle", 1), ("helmet", 1), ("desk", 3)],
    257: [("pillow", 3), ("helicopter", 2), ("book", 4)],
    260: [("hamburger", 3), ("tomato", 3), ("deer", 4), ("banana", 1), ("bowl", 2)],
    262: [("desk", 2), ("fish", 4), ("frog", 4), ("horse", 3), ("train", 4)],
    264: [("plate", 3), ("clock", 2), ("person", 1)],
    265: [("egg", 2), ("lemon", 1), ("plate", 3), ("bowl", 3)],
    270: [("camel", 2), ("balloon", 3), ("boy", 2), ("strawberry", 3)],
    271: [("swan", 1), ("truck", 2), ("tent", 3), ("balloon", 2), ("giraffe", 1)],
    272: [("duck", 1), ("cup", 3), ("deer", 2), ("boat", 2)],
    284: [("banana", 4), ("horse", 4), ("cup", 3)],
    293: [("computer", 1), ("microphone", 1), ("flag", 2)],
}


def _items(prompt: str) -> list[tuple[str, int]]:
    return [(item.noun, item.count) for item in parse_numeracy(prompt)]


def test_numeracy_agreement_random_sample() -> None:
    prompts = load_compbench_prompts("numeracy")
    sample = sorted(random.Random(7).sample(range(len(prompts)), 50))
    assert sample == sorted(NUMERACY_RANDOM_50)  # the hand labels cover exactly this sample
    misses = [
        (prompts[i], _items(prompts[i]))
        for i in sample
        if _items(prompts[i]) != NUMERACY_RANDOM_50[i]
    ]
    agree = 50 - len(misses)
    assert agree / 50 >= 0.95, misses
    assert agree == 50, misses  # measured 50/50


def _second_sample(prompts: list[str]) -> list[int]:
    first = set(random.Random(7).sample(range(len(prompts)), 50))
    sentences = {prompts.index(p) for p in NUMERACY_SENTENCES}
    rest = sorted(set(range(len(prompts))) - first - sentences)
    return sorted(random.Random(8).sample(rest, 100))


def test_numeracy_agreement_second_random_sample() -> None:
    prompts = load_compbench_prompts("numeracy")
    sample = _second_sample(prompts)
    assert sample == sorted(NUMERACY_RANDOM_100)  # the hand labels cover exactly this sample
    assert not set(sample) & set(NUMERACY_RANDOM_50)
    misses = [
        (prompts[i], _items(prompts[i]))
        for i in sample
        if _items(prompts[i]) != NUMERACY_RANDOM_100[i]
    ]
    agree = 100 - len(misses)
    assert agree / 100 >= 0.95, misses
    assert agree == 100, misses  # measured 100/100


def test_numeracy_hand_labels_cover_170_distinct_prompts() -> None:
    prompts = load_compbench_prompts("numeracy")
    labelled = (
        {prompts[i] for i in NUMERACY_RANDOM_50}
        | {prompts[i] for i in NUMERACY_RANDOM_100}
        | set(NUMERACY_SENTENCES)
    )
    assert len(labelled) == 170  # of 300: the three hand-labelled sets do not overlap


def test_numeracy_agreement_sentence_prompts() -> None:
    prompts = set(load_compbench_prompts("numeracy"))
    assert set(NUMERACY_SENTENCES) <= prompts  # real shipped prompts
    misses = [(p, _items(p)) for p, want in NUMERACY_SENTENCES.items() if _items(p) != want]
    assert len(misses) == 0, misses  # measured 20/20


def test_numeracy_every_number_word_is_counted_once() -> None:
    numbers = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    prompts = load_compbench_prompts("numeracy")
    good = 0
    for prompt in prompts:
        words = re.findall(r"[a-z]+", prompt.lower())
        want = sorted(numbers.index(w) + 1 for w in words if w in numbers)
        got = sorted(
            item.count
            for item in parse_numeracy(prompt)
            if item.phrase.split()[0].lower() in numbers
        )
        good += want == got
    assert good / len(prompts) >= 0.95
    assert good == len(prompts)  # measured 300/300


# ----------------------------------------------------------------------------------- attributes


@pytest.mark.parametrize(
    ("category", "measured"), [("color", 229), ("shape", 88), ("texture", 163)]
)
def test_attribute_template_prompts_give_their_two_phrases(category: str, measured: int) -> None:
    template = re.compile(r"(an? \w+ \w+) and (an? \w+ \w+)")
    prompts = [p for p in load_compbench_prompts(category) if template.fullmatch(p)]
    assert len(prompts) == measured  # how many prompts of the category have this exact shape
    good = 0
    for prompt in prompts:
        match = template.fullmatch(prompt)
        assert match is not None
        good += [c.text for c in noun_chunks(prompt)] == list(match.groups())
    assert good / len(prompts) >= 0.95
    assert good == len(prompts)  # measured: all of them


def test_blip_questions_match_noun_chunk_style() -> None:
    assert blip_questions("a green bench and a blue bowl") == ["a green bench?", "a blue bowl?"]
    assert blip_questions("rubber sole shoes and fluffy clouds") == [
        "rubber sole shoes?",
        "fluffy clouds?",
    ]
    assert blip_questions("The striped black and white cat lay next to the soft grey blanket.") == [
        "The striped black and white cat?",
        "the soft grey blanket?",
    ]
    assert blip_questions("The smooth, white marble columns supported the grand entrance.") == [
        "The smooth, white marble columns?",
        "the grand entrance?",
    ]
    # Relation nouns inside relation phrases are not asked about.
    assert blip_questions("a girl on the top of a frog") == ["a girl?", "a frog?"]
    assert blip_questions("The red hat was on top of the brown coat rack.") == [
        "The red hat?",
        "the brown coat rack?",
    ]
    # At most 8 phrases (BLIP_vqa.py's np_num).
    many = ", ".join(f"a {c} cube" for c in ["red", "blue", "green", "pink", "black"] * 2)
    assert len(blip_questions(many)) == 8


def test_noun_chunk_structure() -> None:
    (lamp,) = noun_chunks("a metallic desk lamp")
    assert lamp.adjectives == ("metallic",)
    assert lamp.noun == "desk lamp"
    assert lamp.count == 1 and lamp.determiner == "a"
    (bears,) = noun_chunks("two fluffy teddy bears")
    assert bears.count == 2 and bears.singular == "teddy bear"
    chunks = noun_chunks("four ducks quacked by the pond")
    assert [c.text for c in chunks] == ["four ducks", "the pond"]
    assert chunks[1].count is None
    assert [c.text for c in noun_chunks("a cylindrical can of soup")] == [
        "a cylindrical can",
        "soup",
    ]


def test_complex_spatial_objects() -> None:
    cases = {
        "The fluffy cat is on the left of the soft pillow.": ("cat", "on the left of", "pillow"),
        "The red hat was on top of the brown coat rack.": ("hat", "on top of", "coat rack"),
        "The bright yellow sunflower stood tall next to the soft green grass.": (
            "sunflower",
            "next to",
            "grass",
        ),
        "The black headphones were next to the green phone.": ("headphone", "next to", "phone"),
    }
    for prompt, want in cases.items():
        got = parse_complex_spatial(prompt)
        assert (got.obj1, got.relation, got.obj2) == want, prompt
    # Two relation phrases -> four objects -> none (the official "len(objects) == 2" rule).
    two = parse_complex_spatial("The cup is next to the plate and near the fork.")
    assert (two.obj1, two.obj2) == (None, None)
    none = parse_complex_spatial("The cat sleeps.")
    assert (none.obj1, none.relation, none.obj2) == (None, None, None)


def test_complex_spatial_agreement_on_shipped_spatial_complex_prompts() -> None:
    # Every complex_val_spatial prompt has "The ... was/is <rel> the ...": two objects found.
    from gotr1.eval.layouts import load_complex_splits

    spatial, _ = load_complex_splits()
    found = sum(
        parse_complex_spatial(p).obj1 is not None and parse_complex_spatial(p).obj2 is not None
        for p in spatial
    )
    assert found / len(spatial) >= 0.95  # measured 58/58
    assert found == len(spatial)


# Hand-labelled: every prompt of complex_val_spatialaction.txt, in file order (None = no object
# pair: the prompt has no phrase of the official preposition list).
SPATIALACTION_OBJECTS: list[tuple[str, str] | None] = [
    ("river", "tree"),
    ("pumpkin", "apple"),
    ("cat", "blanket"),
    ("vase", "candlestick"),
    ("lettuce", "tomato"),
    ("balloon", "hot air balloon"),
    ("hot air balloon", "storm cloud"),
    ("lipstick", "compact mirror"),
    ("cat", "blanket"),
    ("cat", "pillow"),
    ("watch", "wallet"),
    ("parrot", "cage"),
    ("tomato", "pepper"),
    ("strawberry", "apple"),
    ("balloon", "airplane"),
    ("duckling", "swan"),
    ("sunflower", "grass"),
    ("cat", "pillow"),
    ("zebra", "tree"),
    ("sunflower", "vase"),
    ("sack", "ribbon"),
    ("jacket", "boot"),
    ("butterfly", "flower"),
    ("cone", "pyramid"),
    ("sphere", "cube"),
    ("apple", "peach"),
    ("grape", "cherry"),
    ("parallelogram", "hexagon"),
    ("sphere", "star"),
    None,
]


def test_complex_spatialaction_objects_hand_labelled() -> None:
    from importlib import resources

    text = (
        resources.files("gotr1")
        .joinpath("data", "t2i-compbench", "complex_val_spatialaction.txt")
        .read_text()
    )
    prompts = text.splitlines()
    assert len(prompts) == len(SPATIALACTION_OBJECTS) == 30
    misses = []
    for prompt, want in zip(prompts, SPATIALACTION_OBJECTS, strict=True):
        got = parse_complex_spatial(prompt)
        pair = (got.obj1, got.obj2) if got.obj1 is not None else None
        if pair != want:
            misses.append((prompt, pair, want))
    assert len(misses) <= 1, misses  # >= 95%; measured 30/30
    assert not misses, misses


# ----------------------------------------------------------------------------------- lexicon


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("boys", "boy"),
        ("women", "woman"),
        ("people", "person"),
        ("mice", "mouse"),
        ("knives", "knife"),
        ("strawberries", "strawberry"),
        ("peaches", "peach"),
        ("couches", "couch"),
        ("tomatoes", "tomato"),
        ("glasses", "glass"),
        ("horses", "horse"),
        ("sheep", "sheep"),
        ("fish", "fish"),
        ("bus", "bus"),
        ("cookies", "cookie"),
        ("shoes", "shoe"),
        ("deer", "deer"),
    ],
)
def test_singularize(plural: str, singular: str) -> None:
    assert singularize(plural) == singular


def test_tokenize_and_adjectives() -> None:
    assert [t.text for t in tokenize("The dancer's heart-shaped box, red.")] == [
        "The",
        "dancer's",
        "heart-shaped",
        "box",
        ",",
        "red",
        ".",
    ]
    assert is_adjective("green") and is_adjective("heart-shaped") and is_adjective("wooden")
    assert not is_adjective("table") and not is_adjective("goldfish") and not is_adjective("bench")
