"""Evidence scorers: where the benchmark rules get boxes, yes-probabilities and colours from.

Two families implement :class:`gotr1.eval.evidence.EvidenceScorer`:

- :class:`WorldEvidenceScorer` — the embedded world's exact pixel detector
  (:func:`gotr1.world.detect`), no neural network. ``detect`` returns the detector's shapes whose
  shape (and colour, when the asked name has one) match each asked name, with the detector's
  confidence; ``yes_prob`` is the fraction of the question's requirements the detections meet
  (:func:`gotr1.world.score_detections`); ``colour`` is the colour of the detection that best
  overlaps the box (else the nearest named colour of the box's pixels). A name or question about
  something the world has no word for ("a green bench?") is answered "not there" (no detection,
  P(yes) = 0) and counted in ``stats``.
- :class:`QwenEvidenceScorer` — a Qwen2.5-VL judge (:class:`gotr1.rewards.QwenLocalJudge`, or a
  server through :class:`LogprobOpenAIJudge`):

  * boxes from the judge's grounding question (the paper's "Locate the <object>, report the bbox
    coordinates in JSON format."); every grounded box gets the confidence ``detection_score``,
    since the judge reports none. The default, 0.95, lies above every threshold the rules apply
    (GenEval 0.3, and 0.9 for counting; UniDet 0.5) and below 1, so that in T2I-CompBench's 2D
    rule two found objects in the wrong relation score 0.25 * (0.95 + 0.95) < 0.5, hence 0, as
    they do with UniDet's confidences (which are never exactly 1); with 1.0 they would keep 0.5;
  * yes/no questions as ``Does this image show "<question>"? Answer with yes or no.``: the local
    judge reads P(yes) and P(no) from the logits of the first generated token (the summed
    softmax mass of the single-token spellings Yes/yes/YES and No/no/NO); the HTTP judge asks
    the server for ``logprobs``/``top_logprobs`` and sums the first token's yes/no entries the
    same way; a server that returns no log-probabilities (or none for yes/no) is answered from
    the parsed text (yes -> 1, no -> 0) and counted in ``stats["yes_no_from_text"]``;
  * colour by asking, for a crop of the box, for one word among the candidates.

  An answer that cannot be used (a failed request, text naming neither yes nor no) is a counted
  failure (``stats``), scored as "not found" (no box, P(yes) = 0, colour "unknown") so that one
  bad reply never crashes a benchmark run.

Both scorers also answer in batches (``detect_batch``, ``yes_prob_batch``, ``colour_batch``);
:func:`run_batched` runs the pure, per-image rules of :mod:`gotr1.eval.compbench` and
:mod:`gotr1.eval.geneval` over many images while asking the scorer each round's questions in one
batch (a judge on a GPU or behind a server is much faster asked 64 questions at once).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from gotr1.chain import box_iou
from gotr1.eval.evidence import (
    CLASSIC_CAPABILITIES,
    Detection,
    EvidenceScorer,
    PixelBox,
    capabilities,
    grid_to_pixels,
    pixels_to_grid,
)
from gotr1.rewards.openai_http import OpenAIJudge, choice_text
from gotr1.rewards.qwen_local import QwenLocalJudge
from gotr1.rewards.vlm import ChatRequest, Reply, VLMJudge
from gotr1.rewards.world_judge import parse_object_name
from gotr1.world import BACKGROUND, ObjectSpec, PromptSpec, detect, parse_prompt, score_detections
from gotr1.world.grammar import NUMBER_WORDS, SHAPES

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "UNKNOWN_COLOUR",
    "LogprobOpenAIJudge",
    "QwenEvidenceScorer",
    "WorldEvidenceScorer",
    "YesNoRequest",
    "parse_colour",
    "parse_yes_no",
    "run_batched",
    "yes_no_question",
]

T = TypeVar("T")

UNKNOWN_COLOUR = "unknown"
"""What ``colour`` answers when it cannot tell (never one of GenEval's colour names)."""

NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 200, 20),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "purple": (140, 40, 180),
    "pink": (255, 105, 180),
    "brown": (139, 69, 19),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}
"""Reference RGB values of colour names (the world's palette where the world has the colour)."""


# --------------------------------------------------------------------------- batching


class _Recorder:
    """An EvidenceScorer that answers from a cache and records what it could not answer.

    A miss gets a harmless placeholder (no detection, P(yes) 0.5, the first candidate colour) so
    the rule runs on and asks its other independent questions in the same round.
    """

    name = "batch-recorder"

    def __init__(self, cache: dict[tuple[Any, ...], Any], like: Any = None) -> None:
        """``like``: the scorer being asked, whose ``provides`` and ``colour_reads_object_name``
        the rules read through the recorder."""
        self.cache = cache
        self.provides = capabilities(like) if like is not None else CLASSIC_CAPABILITIES
        self.colour_reads_object_name = bool(getattr(like, "colour_reads_object_name", False))
        self.misses: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.missed = False

    def _get(self, key: tuple[Any, ...], args: tuple[Any, ...], placeholder: Any) -> Any:
        if key in self.cache:
            return self.cache[key]
        self.missed = True
        self.misses.setdefault(key, args)
        return placeholder

    def detect(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        names = tuple(names)
        return list(self._get(("detect", id(image), names), (image, names), []))

    def yes_prob(self, image: Image.Image, question: str) -> float:
        return float(self._get(("yes", id(image), question), (image, question), 0.5))

    def colour(
        self,
        image: Image.Image,
        box: PixelBox,
        candidates: Sequence[str],
        object_name: str | None = None,
    ) -> str:
        key = ("colour", id(image), tuple(float(v) for v in box), tuple(candidates), object_name)
        args = (image, tuple(box), tuple(candidates), object_name)
        return str(self._get(key, args, (candidates or [""])[0]))

    def clip_score(self, image: Image.Image, prompt: str) -> float:
        return float(self._get(("clip", id(image), prompt), (image, prompt), 0.0))


def _answer(scorer: EvidenceScorer, kind: str, args: list[tuple[Any, ...]]) -> list[Any]:
    """Answer a batch of one kind of question, through the scorer's batch method when it has one."""
    if kind == "detect":
        images, names = [a[0] for a in args], [list(a[1]) for a in args]
        batch = getattr(scorer, "detect_batch", None)
        if batch is not None:
            return list(batch(images, names))
        return [scorer.detect(i, n) for i, n in zip(images, names, strict=True)]
    if kind == "yes":
        images, questions = [a[0] for a in args], [a[1] for a in args]
        batch = getattr(scorer, "yes_prob_batch", None)
        if batch is not None:
            return list(batch(images, questions))
        return [scorer.yes_prob(i, q) for i, q in zip(images, questions, strict=True)]
    if kind == "clip":
        images, prompts = [a[0] for a in args], [a[1] for a in args]
        batch = getattr(scorer, "clip_score_batch", None)
        if batch is not None:
            return list(batch(images, prompts))
        clip_score = scorer.clip_score  # type: ignore[attr-defined]
        return [clip_score(i, p) for i, p in zip(images, prompts, strict=True)]
    images, boxes, candidates = [a[0] for a in args], [a[1] for a in args], [a[2] for a in args]
    batch = getattr(scorer, "colour_batch", None)
    if getattr(scorer, "colour_reads_object_name", False):
        names = [a[3] for a in args]
        if batch is not None:
            return list(batch(images, boxes, candidates, names))
        return [
            scorer.colour(i, b, list(c), object_name=n)  # type: ignore[call-arg]
            for i, b, c, n in zip(images, boxes, candidates, names, strict=True)
        ]
    if batch is not None:
        return list(batch(images, boxes, candidates))
    return [scorer.colour(i, b, list(c)) for i, b, c in zip(images, boxes, candidates, strict=True)]


def run_batched(
    scorer: EvidenceScorer,
    jobs: Sequence[Callable[[EvidenceScorer], T]],
    max_rounds: int = 8,
) -> list[T]:
    """Run per-image scoring rules over many images, asking ``scorer`` in batches.

    Each job is a function of a scorer (e.g. ``lambda s: score_image(s, "color", img, prompt)``).
    Every round runs the unfinished jobs against a cache, collects the questions the cache cannot
    answer yet, and asks them in one batch per kind; a job finishes in the first round in which
    every question it asks is answered from the cache. Questions that depend on earlier answers
    (GenEval's colour check of the objects found) take one more round. The results equal running
    each job on ``scorer`` directly, provided the scorer answers the same question the same way.
    """
    cache: dict[tuple[Any, ...], Any] = {}
    results: list[Any] = [None] * len(jobs)
    unfinished = list(range(len(jobs)))
    for _ in range(max_rounds):
        recorder = _Recorder(cache, scorer)
        still: list[int] = []
        for index in unfinished:
            recorder.missed = False
            try:
                value = jobs[index](recorder)
            except Exception:
                if not recorder.missed:
                    raise
                value = None  # an error caused by placeholder answers: rerun once answered
            if recorder.missed:
                still.append(index)
            else:
                results[index] = value
        if not still:
            return results
        by_kind: dict[str, list[tuple[tuple[Any, ...], tuple[Any, ...]]]] = {}
        for key, args in recorder.misses.items():
            by_kind.setdefault(key[0], []).append((key, args))
        for kind, entries in by_kind.items():
            answers = _answer(scorer, kind, [args for _, args in entries])
            if len(answers) != len(entries):
                raise RuntimeError(
                    f"scorer {scorer.name!r} gave {len(answers)} answers to {len(entries)} "
                    f"{kind} questions"
                )
            for (key, _), answer in zip(entries, answers, strict=True):
                cache[key] = answer
        unfinished = still
    raise RuntimeError(f"run_batched: jobs still asking new questions after {max_rounds} rounds")


# --------------------------------------------------------------------------- world scorer


_WORLD_RELATION_ALIASES: tuple[tuple[str, str], ...] = (
    ("on the top of", "above"),
    ("on the bottom of", "below"),
)
"""T2I-CompBench relation phrases the world grammar writes differently."""


class WorldEvidenceScorer:
    """Exact evidence from the world's pixel detector (see the module docstring)."""

    name = "world-detector"

    def __init__(self, cache_size: int = 64) -> None:
        """``cache_size`` images keep their detections (the rules ask several questions each)."""
        self.cache_size = cache_size
        self._cache: dict[int, tuple[Any, list[Any]]] = {}
        self.stats: dict[str, int] = {
            "detect": 0,
            "yes_prob": 0,
            "colour": 0,
            "unknown_names": 0,
            "unknown_questions": 0,
            "partly_understood_questions": 0,
        }

    def __repr__(self) -> str:
        return "WorldEvidenceScorer()"

    def detections(self, image: Image.Image) -> list[Any]:
        """The world detector's detections of ``image`` (0–1000 grid), cached per image object."""
        hit = self._cache.get(id(image))
        if hit is not None and hit[0] is image:
            return hit[1]
        found = detect(image)
        if len(self._cache) >= self.cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[id(image)] = (image, found)
        return found

    def detect(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        """Every detected world shape matching each asked name ("circle", "red circle"), boxes in
        pixels of ``image``, labelled with the name as asked, scored by the detector's confidence."""
        self.stats["detect"] += 1
        width, height = image.size
        found = self.detections(image)
        out: list[Detection] = []
        for name in dict.fromkeys(names):
            colour, shape = parse_object_name(name)
            if shape is None:
                self.stats["unknown_names"] += 1
                continue
            for det in found:
                if det.shape == shape and (colour is None or det.color == colour):
                    box = grid_to_pixels(det.box, width, height)
                    out.append(Detection(name, box, det.confidence))
        return out

    def _question_spec(self, question: str) -> Any | None:
        """The world prompt spec a question asks about, or None when it names no world object."""
        text = " ".join(question.lower().strip().rstrip("?.! ").split())
        for phrase, world_phrase in _WORLD_RELATION_ALIASES:
            text = text.replace(phrase, world_phrase)
        try:
            return parse_prompt(text)
        except ValueError:
            pass
        # Outside the grammar: keep the world objects it names (without their relation).
        shape_words = "|".join(SHAPES)
        pattern = re.compile(
            rf"\b(?:(a|an|one|{'|'.join(NUMBER_WORDS)})\s+)?((?:[a-z]+\s+)?)({shape_words})(s?)\b"
        )
        objects = []
        for match in pattern.finditer(text):
            count_word, adjective, shape, _ = match.groups()
            colour, _ = parse_object_name(f"{adjective} {shape}")
            count = NUMBER_WORDS.index(count_word) + 1 if count_word in NUMBER_WORDS else 1
            objects.append(ObjectSpec(shape, colour, count))
        if not objects:
            return None
        self.stats["partly_understood_questions"] += 1
        category = "counting" if any(o.count > 1 for o in objects) else "two_objects"
        return PromptSpec(category if len(objects) > 1 else "single_object", tuple(objects))

    def yes_prob(self, image: Image.Image, question: str) -> float:
        """The fraction of the question's requirements the detections meet (objects present,
        colours, exact counts, the relation; other objects in the image do not count against it);
        0 for a question naming no world object."""
        self.stats["yes_prob"] += 1
        spec = self._question_spec(question)
        if spec is None:
            self.stats["unknown_questions"] += 1
            return 0.0
        return float(score_detections(spec, self.detections(image), only_asked=False).soft)

    def colour(self, image: Image.Image, box: PixelBox, candidates: Sequence[str]) -> str:
        """The colour of the detection overlapping ``box`` most, else the candidate nearest to
        the box's mean foreground pixel colour."""
        self.stats["colour"] += 1
        width, height = image.size
        grid_box = pixels_to_grid(box, width, height)
        best = max(self.detections(image), key=lambda d: box_iou(d.box, grid_box), default=None)
        if best is not None and box_iou(best.box, grid_box) > 0 and best.color in candidates:
            return str(best.color)
        known = [c for c in candidates if c in NAMED_COLOURS]
        if not known:
            return UNKNOWN_COLOUR
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        crop = np.asarray(image.convert("RGB"), dtype=np.float32)[
            max(0, y1) : max(max(0, y1) + 1, y2), max(0, x1) : max(max(0, x1) + 1, x2)
        ].reshape(-1, 3)
        foreground = crop[np.linalg.norm(crop - np.array(BACKGROUND), axis=1) > 40]
        if foreground.size == 0:
            return UNKNOWN_COLOUR
        mean = foreground.mean(axis=0)
        return min(known, key=lambda c: float(np.linalg.norm(mean - np.array(NAMED_COLOURS[c]))))


# --------------------------------------------------------------------------- Qwen2.5-VL scorer


YES_WORDS: tuple[str, ...] = ("Yes", "yes", "YES")
NO_WORDS: tuple[str, ...] = ("No", "no", "NO")


def yes_no_question(question: str) -> str:
    """The yes/no prompt the Qwen scorer sends for a benchmark question ("a green bench?")."""
    body = question.strip().rstrip("?").strip().replace('"', "'")
    return f'Does this image show "{body}"? Answer with yes or no.'


def colour_question(candidates: Sequence[str]) -> str:
    """The colour prompt the Qwen scorer sends with a crop of one object."""
    return (
        "What is the main colour of the object in this image? Answer with one word from: "
        + ", ".join(candidates)
        + "."
    )


def parse_yes_no(text: str | None) -> float | None:
    """1.0 for an answer starting with yes, 0.0 for no, None otherwise."""
    if not text:
        return None
    match = re.match(r"\W*(yes|no)\b", text.strip().lower())
    if match is None:
        return None
    return 1.0 if match.group(1) == "yes" else 0.0


def parse_colour(text: str | None, candidates: Sequence[str]) -> str | None:
    """The candidate colour named first in ``text`` (whole words), or None."""
    if not text:
        return None
    lowered = text.lower()
    best: tuple[int, str] | None = None
    for candidate in candidates:
        match = re.search(rf"\b{re.escape(candidate.lower())}\b", lowered)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), candidate)
    return best[1] if best else None


@dataclass
class YesNoRequest(ChatRequest):
    """A yes/no question; :class:`LogprobOpenAIJudge` asks the server for first-token logprobs."""

    top_logprobs: int = 20


class LogprobOpenAIJudge(OpenAIJudge):
    """:class:`gotr1.rewards.OpenAIJudge` that also asks for the first token's log-probabilities of
    yes/no questions (``"logprobs": true, "top_logprobs": k``, as OpenAI and vLLM accept them).

    For a :class:`YesNoRequest` the reply text is a JSON envelope
    ``{"content": answer, "top_logprobs": [{"token": ..., "logprob": ...}, ...] | null}``; every
    other request behaves exactly as in the parent class.
    """

    def _payload(self, request: ChatRequest) -> bytes:
        payload = super()._payload(request)
        if not isinstance(request, YesNoRequest):
            return payload
        body = json.loads(payload)
        body["logprobs"] = True
        body["top_logprobs"] = int(request.top_logprobs)
        return json.dumps(body).encode("utf-8")

    def _exchange(self, payload: bytes, batch_deadline: float | None = None) -> str:
        if b'"top_logprobs"' not in payload:
            return super()._exchange(payload, batch_deadline)
        choice = self._post(payload, batch_deadline)
        content = choice_text(choice)
        top = None
        try:
            first = (choice.get("logprobs") or {}).get("content") or []
            if first:
                top = [
                    {"token": str(t["token"]), "logprob": float(t["logprob"])}
                    for t in first[0].get("top_logprobs") or []
                ]
                if not top and "token" in first[0]:
                    top = [{"token": str(first[0]["token"]), "logprob": float(first[0]["logprob"])}]
        except (AttributeError, KeyError, TypeError, ValueError):
            top = None  # logprobs in an unknown shape: fall back to the text
        return json.dumps({"content": content, "top_logprobs": top})


def yes_no_from_top_logprobs(top: Sequence[dict[str, Any]] | None) -> tuple[float, float] | None:
    """(P(yes), P(no)) summed over a first token's top log-probabilities (tokens compared after
    stripping spaces, case-insensitively); None when neither appears."""
    if not top:
        return None
    p_yes = p_no = 0.0
    for entry in top:
        word = str(entry.get("token", "")).strip().lower()
        logprob = float(entry.get("logprob", -math.inf))
        if word == "yes":
            p_yes += math.exp(logprob)
        elif word == "no":
            p_no += math.exp(logprob)
    if p_yes + p_no <= 0:
        return None
    return p_yes, p_no


class QwenEvidenceScorer:
    """Evidence from a Qwen2.5-VL judge, local or over HTTP (see the module docstring)."""

    def __init__(
        self,
        judge: VLMJudge,
        name: str | None = None,
        detection_score: float = 0.95,
        crop_padding: float = 0.1,
    ) -> None:
        """Wrap a judge: :class:`gotr1.rewards.QwenLocalJudge` (yes/no from first-token logits),
        :class:`LogprobOpenAIJudge` (from returned logprobs), or any other VLMJudge (text only)."""
        if not 0.0 <= detection_score <= 1.0:
            raise ValueError(f"detection_score must be in [0, 1], got {detection_score}")
        self.judge = judge
        self.local = isinstance(judge, QwenLocalJudge)
        self.detection_score = float(detection_score)
        self.crop_padding = float(crop_padding)
        model = getattr(judge.config, "model", "vlm")
        kind = "local" if self.local else "http"
        self.name = name or f"{str(model).rstrip('/').split('/')[-1]}-{kind}"
        self.stats: dict[str, int] = {
            "ground_questions": 0,
            "ground_failures": 0,
            "yes_no_questions": 0,
            "yes_no_failures": 0,
            "yes_no_from_text": 0,
            "colour_questions": 0,
            "colour_failures": 0,
        }
        if self.local:
            self._yes_ids = self._single_token_ids(YES_WORDS)
            self._no_ids = self._single_token_ids(NO_WORDS)
            if not self._yes_ids or not self._no_ids:
                raise ValueError(
                    "the judge's tokenizer has no single-token spelling of yes and no "
                    f"({YES_WORDS}, {NO_WORDS}); cannot read yes/no probabilities from logits"
                )

    def __repr__(self) -> str:
        return f"QwenEvidenceScorer(name={self.name!r}, judge={self.judge!r})"

    def _single_token_ids(self, words: Sequence[str]) -> list[int]:
        tokenizer = self.judge.tokenizer  # type: ignore[attr-defined]
        ids = set()
        for word in words:
            encoded = tokenizer.encode(word, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(int(encoded[0]))
        return sorted(ids)

    # -- detect -------------------------------------------------------------------------------
    def detect_batch(
        self, images: Sequence[Image.Image], names: Sequence[Sequence[str]]
    ) -> list[list[Detection]]:
        """Ground every asked name in every image (one batched judge call)."""
        asked = [list(dict.fromkeys(n)) for n in names]
        self.stats["ground_questions"] += sum(len(n) for n in asked)
        result = self.judge.ground(list(images), asked)
        out: list[list[Detection]] = []
        for image, image_names, candidates, failed in zip(
            images, asked, result.candidates, result.failed, strict=True
        ):
            if failed:
                self.stats["ground_failures"] += 1
            width, height = image.size
            found = []
            for name, boxes in zip(image_names, candidates, strict=True):
                for box in boxes:
                    pixel = grid_to_pixels(box, width, height)
                    found.append(Detection(name, pixel, self.detection_score))
            out.append(found)
        return out

    def detect(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        """Boxes of each asked name in ``image`` (pixels), each with ``detection_score``."""
        return self.detect_batch([image], [list(names)])[0]

    # -- yes/no -------------------------------------------------------------------------------
    def yes_prob_batch(
        self, images: Sequence[Image.Image], questions: Sequence[str]
    ) -> list[float]:
        """P(yes) / (P(yes) + P(no)) for each (image, question)."""
        self.stats["yes_no_questions"] += len(questions)
        if not questions:
            return []
        if self.local:
            probs = self._local_first_token_mass(
                [
                    ChatRequest(yes_no_question(q), self.judge.prepare_image(i), 1)
                    for i, q in zip(images, questions, strict=True)
                ],
                [self._yes_ids, self._no_ids],
            )
            out = []
            for p_yes, p_no in probs:
                if p_yes + p_no <= 0 or not math.isfinite(p_yes + p_no):
                    self.stats["yes_no_failures"] += 1
                    out.append(0.0)
                else:
                    out.append(p_yes / (p_yes + p_no))
            return out
        requests: list[ChatRequest]
        if isinstance(self.judge, LogprobOpenAIJudge):
            requests = [
                YesNoRequest(yes_no_question(q), self.judge.prepare_image(i), 1)
                for i, q in zip(images, questions, strict=True)
            ]
        else:
            requests = [
                ChatRequest(yes_no_question(q), self.judge.prepare_image(i), 4)
                for i, q in zip(images, questions, strict=True)
            ]
        replies = self.judge.generate(requests)
        return [
            self._yes_from_reply(r, isinstance(q, YesNoRequest))
            for r, q in zip(replies, requests, strict=True)
        ]

    def _yes_from_reply(self, reply: Reply, enveloped: bool) -> float:
        text = reply.text
        if text is not None and enveloped:
            try:
                envelope = json.loads(text)
                text = envelope.get("content")
                pair = yes_no_from_top_logprobs(envelope.get("top_logprobs"))
            except (ValueError, AttributeError, TypeError):
                pair = None
            if pair is not None:
                return pair[0] / (pair[0] + pair[1])
        value = parse_yes_no(text)
        if value is None:
            self.stats["yes_no_failures"] += 1
            return 0.0
        self.stats["yes_no_from_text"] += 1
        return value

    def yes_prob(self, image: Image.Image, question: str) -> float:
        """P(yes) / (P(yes) + P(no)) for one yes/no question about ``image``."""
        return self.yes_prob_batch([image], [question])[0]

    def _local_first_token_mass(
        self, requests: Sequence[ChatRequest], id_groups: Sequence[Sequence[int]]
    ) -> list[tuple[float, ...]]:
        """For each request, the softmax mass of each id group in the first generated token.

        The inputs are built exactly as the local judge builds them (its chat format, image
        processor and left padding) and ``generate`` runs one greedy step with raw logits out.
        """
        import torch

        judge = self.judge
        size = judge.config.batch_size  # type: ignore[attr-defined]
        out: list[tuple[float, ...]] = []
        for start in range(0, len(requests), size):
            chunk = list(requests[start : start + size])
            inputs = _qwen_inputs(judge, chunk)
            with torch.inference_mode():
                generated = judge.model.generate(  # type: ignore[attr-defined]
                    **inputs,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    max_new_tokens=1,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=judge.pad_token_id,  # type: ignore[attr-defined]
                )
            probs = torch.softmax(generated.logits[0].float(), dim=-1)
            for row in probs:
                out.append(tuple(float(row[list(ids)].sum()) for ids in id_groups))
        return out

    # -- colour -------------------------------------------------------------------------------
    def _crop(self, image: Image.Image, box: Sequence[float]) -> Image.Image:
        x1, y1, x2, y2 = (float(v) for v in box)
        pad_x, pad_y = (x2 - x1) * self.crop_padding, (y2 - y1) * self.crop_padding
        left, top = max(0, math.floor(x1 - pad_x)), max(0, math.floor(y1 - pad_y))
        right = min(image.width, math.ceil(x2 + pad_x))
        bottom = min(image.height, math.ceil(y2 + pad_y))
        if right - left < 2 or bottom - top < 2:
            return image.convert("RGB")
        return image.convert("RGB").crop((left, top, right, bottom))

    def colour_batch(
        self,
        images: Sequence[Image.Image],
        boxes: Sequence[Sequence[float]],
        candidates: Sequence[Sequence[str]],
    ) -> list[str]:
        """For each box, the candidate colour the judge names for a crop of it."""
        self.stats["colour_questions"] += len(images)
        requests = [
            ChatRequest(colour_question(c), self.judge.prepare_image(self._crop(i, b)), 8)
            for i, b, c in zip(images, boxes, candidates, strict=True)
        ]
        replies = self.judge.generate(requests) if requests else []
        out = []
        for reply, cands in zip(replies, candidates, strict=True):
            colour = parse_colour(reply.text, cands)
            if colour is None:
                self.stats["colour_failures"] += 1
                colour = UNKNOWN_COLOUR
            out.append(colour)
        return out

    def colour(self, image: Image.Image, box: PixelBox, candidates: Sequence[str]) -> str:
        """The colour (one of ``candidates``, else "unknown") of the object inside ``box``."""
        return self.colour_batch([image], [box], [list(candidates)])[0]


def _qwen_inputs(judge: Any, requests: Sequence[ChatRequest]) -> dict[str, Any]:
    """Model inputs for a batch of image questions, as QwenLocalJudge builds them."""
    import torch

    images = [r.image for r in requests]
    if any(image is None for image in images):
        raise ValueError("yes/no questions need an image")
    processed = judge.image_processor(images=images, return_tensors="pt", **judge._image_kwargs())
    grid = processed["image_grid_thw"]
    tokens = [int(t * h * w) // (judge.merge_size**2) for t, h, w in grid.tolist()]
    texts = [judge.chat_text(r.text, n) for r, n in zip(requests, tokens, strict=True)]
    encoded = judge.tokenizer(
        texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False
    )
    input_ids = encoded["input_ids"].to(judge.device)
    return {
        "pixel_values": processed["pixel_values"].to(judge.device, judge.model.dtype),
        "image_grid_thw": grid.to(judge.device),
        "input_ids": input_ids,
        "attention_mask": encoded["attention_mask"].to(judge.device),
        "mm_token_type_ids": (input_ids == judge.image_token_id).to(torch.int32),
    }
