"""Rule-based prompt parsing for the benchmark rules: noun phrases, objects, relations, counts.

The official T2I-CompBench scripts parse prompts with spaCy's ``en_core_web_sm`` (noun chunks for
the BLIP-VQA questions, NOUN tags for the 2D-spatial objects, number words for numeracy). gotr1
ships no third-party language model, so this module parses with a small lexicon and a handful of
rules instead:

- tokens are words (hyphens and apostrophes kept inside) and single punctuation marks;
- closed classes (determiners, number words, conjunctions, prepositions, pronouns, auxiliaries, a
  list of common verbs, adverbs) end a noun phrase; every other word is *content*;
- a noun phrase (:class:`NounChunk`) is an optional run of determiners / number words followed by
  content words; its last word is the head noun; leading attribute words (colours, shapes,
  materials, textures, sizes and words with adjective suffixes) are its adjectives, the rest is
  the (possibly compound) noun ("a metallic desk lamp" -> adjectives ("metallic",), noun
  "desk lamp");
- a word ending in -ed/-ing is a verb when it follows a noun ("four ducks quacked"), an adjective
  when it opens or continues a phrase before its noun ("the striped rug");
- a comma or "and" stays inside a phrase only between two attribute words ("the smooth, white
  marble columns", "the striped black and white cat");
- relation nouns inside relation phrases ("on the top of", "on side of", "in front of") are not
  objects.

Relation phrases are found exactly as the official code does it: plain substring search over the
prompt in the official vocabulary order (:data:`SPATIAL_VOCAB`), so relation agreement with the
official scripts is exact by construction. ``tests/test_eval_parsing.py`` measures the object and
count agreement on the shipped spatial and numeracy prompts against hand-checked expectations.

Known differences from the spaCy-based official parsing (documented, deliberate):

- objects are the phrase's full noun ("coat rack", "teddy bear"), where spaCy's token-level NOUN
  search takes one token ("coat"), which the official detector then cannot match;
- a relation noun inside a relation phrase ("top" in "on top of") never becomes a BLIP question,
  where spaCy's noun chunks sometimes ask "top?".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "COMPLEX_PREPOSITIONS",
    "NUMBER_WORDS",
    "SPATIAL_VOCAB",
    "ComplexSpatialParse",
    "NounChunk",
    "NumeracyItem",
    "SpatialParse",
    "Token",
    "blip_questions",
    "clip_text_without_adjectives",
    "find_spatial_relation",
    "is_adjective",
    "noun_chunks",
    "parse_complex_spatial",
    "parse_numeracy",
    "parse_spatial",
    "singularize",
    "tokenize",
]

SPATIAL_VOCAB: tuple[str, ...] = (
    "on side of",
    "next to",
    "near",
    "on the left of",
    "on the right of",
    "on the bottom of",
    "on the top of",
    "on top of",
)
"""T2I-CompBench's 2D-spatial relation vocabulary, in the official search order
(UniDet_eval/2D_spatial_eval.py, ``vocab_spatial``): the first phrase that occurs anywhere in the
prompt as a substring is the relation."""

COMPLEX_PREPOSITIONS: tuple[str, ...] = (
    "on top of",
    "on bottom of",
    "on the left",
    "on the right",
    "next to",
    "on side of",
    "near",
)
"""The official list used to find the two objects of a *complex* prompt (UniDet_eval/
2D_spatial_eval.py, ``--complex`` branch): the noun before and the noun after the phrase."""

NUMBER_WORDS: dict[str, int] = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
}
"""Number words a numeracy prompt may use ("a"/"an" count as one in a leading enumeration)."""


def _words(text: str) -> frozenset[str]:
    """A lexicon from whitespace-separated words."""
    return frozenset(text.split())


_DETERMINERS = _words(
    "a an the this these those some his her its their my our your each every another several "
    "many few both all any no"
)
_CONJUNCTIONS = _words("and or but nor while as then")
_PREPOSITIONS = _words(
    "on in of at to by for from with without into onto over under above below beneath beside "
    "besides between behind near next through across along alongside around against among amid "
    "past toward towards inside outside upon within off up down out like after before during "
    "underneath atop via throughout beyond than"
)
_PRONOUNS = _words(
    "it they them he she him we us i you me itself themselves himself herself something someone "
    "everything everyone nothing that which who whom whose what where when there here"
)
_AUXILIARIES = _words(
    "is are was were be been being am has have had do does did can could will would should may "
    "might must shall not"
)
_VERBS = _words(
    "sat sit sits sitting lay lie lies lying stood stand stands hung hang hangs flew swam swim "
    "swims ran run runs rose shone shine shines ate eat eats made make makes held hold holds "
    "took take takes gave give gives went go goes came come comes sang sing sings drank drink "
    "drinks grew grow grows fell falls rode ride rides wrote write writes slept sleep sleeps "
    "kept keep keeps felt feel feels sought seek seeks brought bring brings caught catch "
    "catches taught chose choose chooses spun spin spins swept sweep sweeps wove weave weaves "
    "wore wear wears tore shook shake shakes blew blow blows drew drove drive drives threw "
    "throw throws found finds built builds sent sends spent spends lent lit bore broke break "
    "breaks froze stuck struck swung clung crept dug fed fled led leapt meant met paid said "
    "says sold told thought understood won wound became become becomes began begin begins rang "
    "shrank sank stole strode sped looks seems seem appears appear contains contain creates create provides "
    "provide adds add fills fill completes complete supports support shows show gets get plays "
    "walks walk flows contrasts contrast sways sway stretches stretch rests rest waits wait "
    "watches reads enjoys enjoy marvels marvel speaks speak helps help uses use carries carry "
    "cooks cook needs need wants want lets let tells tell features flash flashes"
)
_ADVERBS = _words(
    "very quite rather too so also just still even ever never always often together away back "
    "nearby around again already almost soon now then once yet well ahead apart aside"
)
_RELATION_NOUNS = _words(
    "top bottom left right side front back middle center centre edge rear mid-air midair"
)
_COLOURS = _words(
    "red orange yellow green blue purple pink brown black white gray grey silver gold golden "
    "beige violet indigo cyan magenta turquoise teal maroon navy crimson scarlet ivory cream "
    "tan amber lavender lilac olive khaki bronze copper charcoal emerald azure"
)
_ATTRIBUTES = _words(
    "round square oval rectangular triangular circular spherical cubic cylindrical conical "
    "pyramidal pentagonal hexagonal octagonal oblong teardrop diamond heart-shaped star-shaped "
    "big small tall short long large tiny huge little giant wide narrow thick thin flat fat "
    "wooden metallic metal plastic glass rubber leather fabric fluffy furry smooth rough soft "
    "hard woolen wool cotton silk silky velvet stone ceramic paper marble golden steel iron "
    "brick concrete crystal denim linen porcelain feathery fuzzy shiny glossy matte sparkling "
    "old new young ancient modern fresh ripe juicy crisp crispy crunchy sweet sour spicy hot "
    "cold cool warm wet dry heavy light bright dark pale deep clean dirty empty full broken "
    "striped spotted checkered plaid polka-dot colorful colourful vibrant bold dull sharp blunt "
    "sturdy fragile tender sticky fragrant thorny twisted gnarled rusty dusty muddy sandy "
    "wrinkled cozy delicate elegant fancy plain simple beautiful pretty ugly cute lovely gentle "
    "calm quiet loud distant rich grand intricate sugary chilly lively cheerful happy sad angry "
    "sleepy tired curious playful friendly fierce wild tame busy lazy strong weak brave shy "
    "proud majestic towering miniature jagged curved straight bent hollow solid transparent "
    "translucent opaque reflective hardcover burlap satin suede tart spiky bumpy sleek slender slim plump chubby stout lean "
    "thick-rimmed"
)
_NOT_VERB = _words(
    "bed red sled shed seed weed reed speed steed bread thread head need deed feed tweed ring "
    "king wing string thing sing spring swing ceiling painting building wedding pudding "
    "stocking stuffing icing frosting clothing morning evening railing awning sibling duckling "
    "dumpling earring herring shilling lightning ping ding sapling seedling filling topping "
    "dressing sporting"
)
_NOT_ADVERB = _words(
    "butterfly dragonfly fly family jelly lily belly bully ally rally assembly supply holly "
    "anomaly firefly"
)
_NOT_ADJECTIVE = _words(
    "table cable vegetable timetable turntable fable stable bible music picnic traffic clinic "
    "comic mosaic garlic attic magic olive hive archive detective radish relish polish handful "
    "spoonful mouthful cupful"
)
_OBJECT_ARTICLES = _words("a an the his her its their my our your")
_ADJECTIVE_COMPOUNDS: frozenset[tuple[str, str]] = frozenset(
    {("hot", "dog"), ("hot", "air"), ("hot", "tub"), ("sweet", "potato"), ("light", "bulb")}
)
_ADJECTIVE_SUFFIXES: tuple[str, ...] = (
    "ful",
    "ous",
    "ive",
    "less",
    "ish",
    "able",
    "ible",
    "ic",
    "ical",
)

_IRREGULAR_PLURALS: dict[str, str] = {
    "men": "man",
    "women": "woman",
    "people": "person",
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "oxen": "ox",
    "knives": "knife",
    "leaves": "leaf",
    "wolves": "wolf",
    "shelves": "shelf",
    "loaves": "loaf",
    "calves": "calf",
    "halves": "half",
    "lives": "life",
    "wives": "wife",
    "scarves": "scarf",
    "thieves": "thief",
    "elves": "elf",
    "dice": "die",
    "cacti": "cactus",
    "fungi": "fungus",
    "buses": "bus",
    "octopuses": "octopus",
    "cookies": "cookie",
    "movies": "movie",
    "pies": "pie",
    "ties": "tie",
    "brownies": "brownie",
    "zombies": "zombie",
    "smoothies": "smoothie",
    "hoodies": "hoodie",
    "selfies": "selfie",
    "shoes": "shoe",
    "toes": "toe",
    "canoes": "canoe",
    "oboes": "oboe",
    "horses": "horse",
    "houses": "house",
    "vases": "vase",
    "cases": "case",
    "bases": "base",
    "noses": "nose",
    "roses": "rose",
    "glasses": "glass",
}
_INVARIANT_NOUNS = frozenset(
    [
        "fish",
        "sheep",
        "deer",
        "shrimp",
        "moose",
        "salmon",
        "trout",
        "bison",
        "aircraft",
        "series",
        "species",
        "swiss",
        "glass",
        "grass",
        "dress",
        "class",
        "mass",
        "boss",
        "moss",
        "chess",
        "bus",
        "cactus",
        "octopus",
        "walrus",
        "tennis",
        "pants",
        "jeans",
        "scissors",
        "binoculars",
        "news",
    ]
)

_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


@dataclass(frozen=True)
class Token:
    """A word or punctuation mark of a prompt, with its character span."""

    text: str
    start: int
    end: int

    @property
    def lower(self) -> str:
        """The token in lower case."""
        return self.text.lower()

    @property
    def is_word(self) -> bool:
        """True for words, False for punctuation."""
        return self.text[0].isalnum()


@dataclass(frozen=True)
class NounChunk:
    """A noun phrase of a prompt: determiners / number, adjectives, noun (head last)."""

    text: str
    """The phrase exactly as it appears in the prompt ("The smooth, white marble columns")."""
    determiner: str | None
    """The first determiner or number word, lower case ("a", "the", "two"), or None."""
    words: tuple[str, ...]
    """Lower-case content words, determiners and inner "and"/commas excluded."""
    adjectives: tuple[str, ...]
    """The leading attribute words of ``words``."""
    noun: str
    """The rest of ``words``: the (possibly compound) noun, "desk lamp"."""
    start: int
    """Character offset of the phrase in the prompt."""
    token_index: int
    """Index of the phrase's first token in :func:`tokenize`'s output."""

    @property
    def head(self) -> str:
        """The head noun (the phrase's last word)."""
        return self.words[-1]

    @property
    def singular(self) -> str:
        """The noun with its head singularised ("teddy bears" -> "teddy bear")."""
        parts = self.noun.split()
        parts[-1] = singularize(parts[-1])
        return " ".join(parts)

    @property
    def count(self) -> int | None:
        """The number the determiner states (a/an/one -> 1, two -> 2), None if it states none."""
        if self.determiner is None:
            return None
        if self.determiner in ("a", "an"):
            return 1
        if self.determiner.isdigit():
            return int(self.determiner)
        return NUMBER_WORDS.get(self.determiner)


@dataclass(frozen=True)
class SpatialParse:
    """A 2D-spatial prompt: ``obj1 relation obj2`` ("a giraffe next to a lamp")."""

    obj1: str
    relation: str | None
    obj2: str


@dataclass(frozen=True)
class ComplexSpatialParse:
    """A complex prompt's spatial part: the objects around its one relation phrase."""

    obj1: str | None
    relation: str | None
    obj2: str | None


@dataclass(frozen=True)
class NumeracyItem:
    """One counted object of a numeracy prompt: singular noun and how many the prompt asks for."""

    noun: str
    count: int
    phrase: str


def tokenize(text: str) -> list[Token]:
    """Split a prompt into words (hyphenated and apostrophe words kept whole) and punctuation."""
    return [Token(m.group(0), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


def singularize(word: str) -> str:
    """The singular of an English noun (rule-based, with the irregulars benchmark prompts use)."""
    w = word.lower()
    if w in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[w]
    if w in _INVARIANT_NOUNS or len(w) <= 3:
        return w
    if w.endswith(("ss", "us", "is")):
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("oes"):
        return w[:-2]
    if w.endswith(("ches", "shes", "sses", "xes", "zzes")):
        return w[:-2]
    if w.endswith("s"):
        return w[:-1]
    return w


def is_adjective(word: str) -> bool:
    """Whether a modifier word is an attribute (colour, shape, material, size, ...) not a noun."""
    w = word.lower()
    if w in _COLOURS or w in _ATTRIBUTES:
        return True
    if w in _NOT_ADJECTIVE or w.endswith(("fish", "dish")):
        return False
    if "-" in w:
        last = w.rsplit("-", 1)[1]
        return last in ("shaped", "colored", "coloured", "sized", "like", "made") or is_adjective(
            last
        )
    if w.endswith(("ed", "ing")) and w not in _NOT_VERB and len(w) > 4:
        return True
    if w.endswith("ly") and w not in _NOT_ADVERB:
        return True
    return len(w) > 4 and w.endswith(_ADJECTIVE_SUFFIXES)


def _is_number(lw: str) -> bool:
    return lw in NUMBER_WORDS or lw.isdigit()


def _closed_class(lw: str) -> bool:
    return (
        lw in _CONJUNCTIONS
        or lw in _PREPOSITIONS
        or lw in _PRONOUNS
        or lw in _AUXILIARIES
        or lw in _VERBS
        or lw in _ADVERBS
    )


def _verb_candidate(lw: str) -> bool:
    """-ed / -ing forms that may be a verb (or a participle adjective)."""
    return len(lw) > 4 and lw.endswith(("ed", "ing")) and lw not in _NOT_VERB


def _adverb(lw: str, next_lw: str | None) -> bool:
    if lw in _ADVERBS:
        return True
    if lw.endswith("ly") and lw not in _NOT_ADVERB and len(lw) > 3:
        # "a chilly night" keeps its adjective; "slowly walked", "shone brightly on" do not.
        return next_lw is None or not _content_like(next_lw) or _verb_candidate(next_lw)
    return False


def _content_like(lw: str) -> bool:
    return (
        lw[0].isalnum() and lw not in _DETERMINERS and not _is_number(lw) and not _closed_class(lw)
    )


def noun_chunks(prompt: str) -> list[NounChunk]:
    """Noun phrases of a prompt, in order (the analogue of spaCy's ``doc.noun_chunks``)."""
    tokens = tokenize(prompt)
    lowers = [t.lower for t in tokens]
    chunks: list[NounChunk] = []
    dets: list[int] = []
    words: list[int] = []

    def close() -> None:
        nonlocal dets, words
        if words:
            start_i = dets[0] if dets else words[0]
            chunks.append(_make_chunk(prompt, tokens, lowers, dets, words, start_i))
        dets, words = [], []

    n = len(tokens)
    for i, tok in enumerate(tokens):
        lw = lowers[i]
        nxt = lowers[i + 1] if i + 1 < n else None
        prev = lowers[i - 1] if i > 0 else None
        if lw in _DETERMINERS or _is_number(lw):
            if words:
                close()
            dets.append(i)
            continue
        if not tok.is_word:
            # A comma between two attribute words stays inside the phrase.
            if (
                lw == ","
                and words
                and is_adjective(lowers[words[-1]])
                and nxt is not None
                and _content_like(nxt)
                and is_adjective(nxt)
            ):
                continue
            close()
            continue
        if lw == "and" and words and prev in _COLOURS and nxt in _COLOURS:
            continue  # "the striped black and white cat"
        after_modifier = (dets and not words) or (words and is_adjective(lowers[words[-1]]))
        if (lw == "can" or lw in _VERBS or lw in _ADVERBS) and after_modifier:
            words.append(i)  # a homograph used as a noun: "a cylindrical can", "the metallic stand"
            continue
        after_noun = bool(words) and not is_adjective(lowers[words[-1]])
        if lw.endswith("ly") and lw not in _NOT_ADVERB and after_noun:
            close()  # "the giraffes gracefully strode"
            continue
        if _adverb(lw, nxt) or _closed_class(lw):
            close()
            continue
        if _verb_candidate(lw):
            if words:
                # After a noun it is a verb ("ducks quacked"); after an attribute word it is an
                # adjective or a gerund noun ("a fluffy striped cat", "checkered flooring").
                if is_adjective(lowers[words[-1]]):
                    words.append(i)
                else:
                    close()
                continue
            if dets or (nxt is not None and _content_like(nxt) and not _verb_candidate(nxt)):
                words.append(i)  # "the striped rug", "running water"
            else:
                close()
            continue
        if words and nxt in _OBJECT_ARTICLES and not is_adjective(lw):
            close()  # a bare verb between a noun and its object: "wooden spoons stir the soup"
            continue
        words.append(i)
    close()
    return _drop_relation_nouns(prompt, chunks, tokens)


def _make_chunk(
    prompt: str,
    tokens: list[Token],
    lowers: list[str],
    dets: list[int],
    words: list[int],
    start_i: int,
) -> NounChunk:
    word_list = tuple(lowers[i] for i in words)
    # Leading attribute words are adjectives; the head is always a noun.
    k = 0
    while k < len(word_list) - 1 and is_adjective(word_list[k]):
        k += 1
    # Lexicalised compounds whose first word looks like an attribute: "hot dog", "hot air balloon".
    while k > 0 and (word_list[k - 1], word_list[k]) in _ADJECTIVE_COMPOUNDS:
        k -= 1
    determiner = lowers[dets[0]] if dets else None
    # "all the", "the two": the number word, when there is one, is what counts.
    for d in dets:
        if _is_number(lowers[d]):
            determiner = lowers[d]
    start = tokens[start_i].start
    end = tokens[words[-1]].end
    return NounChunk(
        text=prompt[start:end],
        determiner=determiner,
        words=word_list,
        adjectives=word_list[:k],
        noun=" ".join(word_list[k:]),
        start=start,
        token_index=start_i,
    )


def _drop_relation_nouns(
    prompt: str, chunks: list[NounChunk], tokens: list[Token]
) -> list[NounChunk]:
    """Drop bare predicative adjectives, and relation nouns ("top", "the left", "side") that sit
    inside a relation phrase ("on top of", "to the left of")."""
    kept = []
    for chunk in chunks:
        if chunk.determiner is None and all(is_adjective(w) for w in chunk.words):
            continue  # a predicative adjective ("stood tall", "sits empty"), not a noun phrase
        if len(chunk.words) == 1 and chunk.words[0] in _RELATION_NOUNS:
            rest = prompt[chunk.start + len(chunk.text) :].lstrip().lower()
            before = prompt[: chunk.start].rstrip().lower()
            if rest.startswith("of ") or before.endswith((" on", " in", " to", " at")):
                continue
        kept.append(chunk)
    return kept


def blip_questions(prompt: str, max_phrases: int = 8) -> list[str]:
    """The BLIP-VQA questions of an attribute prompt: each noun phrase with "?" appended.

    Mirrors BLIPvqa_eval/BLIP_vqa.py (``f"{noun_chunk}?"`` for the first ``np_num`` = 8 chunks).
    """
    return [f"{chunk.text}?" for chunk in noun_chunks(prompt)[:max_phrases]]


def clip_text_without_adjectives(prompt: str) -> str:
    """The text CLIP_similarity.py scores for a complex prompt: its tokens joined by spaces, with
    the adjectives left out (``' '.join(t.text for t in doc if t.pos_ != 'ADJ')``).

    The adjectives are the attribute words that lead a noun phrase (:func:`noun_chunks`) and
    the lexicon's colour and attribute words anywhere ("the sky is blue"); spaCy's tagger is
    not used, so a word it would tag differently is kept or dropped differently.
    """
    tokens = tokenize(prompt)
    spans = []
    for chunk in noun_chunks(prompt):
        spans.append((chunk.start, chunk.start + len(chunk.text), set(chunk.adjectives)))
    kept = []
    for token in tokens:
        lw = token.lower
        inside = any(a <= token.start < b and lw in adjectives for a, b, adjectives in spans)
        if inside or lw in _COLOURS or lw in _ATTRIBUTES:
            continue
        kept.append(token.text)
    return " ".join(kept)


def find_spatial_relation(prompt: str) -> str | None:
    """The prompt's 2D relation exactly as T2I-CompBench finds it: first vocabulary phrase that is a
    substring of the prompt, in :data:`SPATIAL_VOCAB` order (case-sensitive, like the official)."""
    for phrase in SPATIAL_VOCAB:
        if phrase in prompt:
            return phrase
    return None


def parse_spatial(prompt: str) -> SpatialParse | None:
    """obj1 = first noun, obj2 = last noun, relation = :func:`find_spatial_relation` (simple prompts).

    Returns None when the prompt has no noun phrase.
    """
    chunks = noun_chunks(prompt)
    if not chunks:
        return None
    return SpatialParse(
        obj1=chunks[0].singular if _is_plural_head(chunks[0]) else chunks[0].noun,
        relation=find_spatial_relation(prompt),
        obj2=chunks[-1].singular if _is_plural_head(chunks[-1]) else chunks[-1].noun,
    )


def _is_plural_head(chunk: NounChunk) -> bool:
    return singularize(chunk.head) != chunk.head


def parse_complex_spatial(prompt: str) -> ComplexSpatialParse:
    """The two objects of a complex prompt, found as the official ``--complex`` branch finds them.

    Official rule (UniDet_eval/2D_spatial_eval.py): for every occurrence of a phrase of
    :data:`COMPLEX_PREPOSITIONS` (matched on whole tokens, case-sensitive), take the nearest noun
    before it and the first noun after it; the prompt has objects only if exactly two were found
    (one relation phrase). The relation itself is :func:`find_spatial_relation`.
    Here "noun" is a whole noun phrase's noun (see the module notes).
    """
    relation = find_spatial_relation(prompt)
    tokens = tokenize(prompt)
    chunks = noun_chunks(prompt)
    texts = [t.text for t in tokens]
    objects: list[str] = []
    i = 0
    while i < len(tokens):
        width = 0
        for k in (3, 2, 1):
            if " ".join(texts[i : i + k]) in COMPLEX_PREPOSITIONS:
                width = k
                break
        if width:
            start_char = tokens[i].start
            end_char = tokens[i + width - 1].end
            before = [c for c in chunks if c.start + len(c.text) <= start_char]
            after = [c for c in chunks if c.start >= end_char]
            if before:
                objects.append(_object_name(before[-1]))
            if after:
                objects.append(_object_name(after[0]))
        i += 1
    if len(objects) == 2:
        return ComplexSpatialParse(objects[0], relation, objects[1])
    return ComplexSpatialParse(None, relation, None)


def _object_name(chunk: NounChunk) -> str:
    return chunk.singular if _is_plural_head(chunk) else chunk.noun


def parse_numeracy(prompt: str) -> list[NumeracyItem]:
    """The counted objects of a numeracy prompt, in order.

    A phrase counts when a number word states its count ("two boys", "four people" anywhere in the
    prompt), or when "a"/"an" opens it inside the prompt's leading enumeration ("a backpack, three
    apples, and a bowl were on the kitchen counter" counts the backpack and the bowl, not the
    counter; "six people gathered for a picnic" does not count a picnic). Nouns are singular.
    """
    tokens = tokenize(prompt)
    lowers = [t.lower for t in tokens]
    chunks = noun_chunks(prompt)
    items: list[NumeracyItem] = []
    in_enumeration = True
    prev_end_token = -1
    for chunk in chunks:
        first = chunk.token_index
        gap = lowers[prev_end_token + 1 : first]
        if prev_end_token >= 0 and any(g not in (",", "and") for g in gap):
            in_enumeration = False
        if prev_end_token < 0 and first != 0:
            in_enumeration = False
        count = chunk.count
        if count is not None and (chunk.determiner not in ("a", "an") or in_enumeration):
            items.append(NumeracyItem(noun=chunk.singular, count=count, phrase=chunk.text))
        # Index of the chunk's last token.
        prev_end_token = _last_token_index(tokens, chunk)
    return items


def _last_token_index(tokens: list[Token], chunk: NounChunk) -> int:
    end = chunk.start + len(chunk.text)
    for j in range(chunk.token_index, len(tokens)):
        if tokens[j].end == end:
            return j
    return len(tokens) - 1
