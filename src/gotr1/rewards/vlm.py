"""The judge logic shared by both Qwen2.5-VL judges: questions, retry-once, parsing, boxes.

A subclass only says how to get answers: :meth:`VLMJudge.generate` takes a batch of
:class:`ChatRequest` (text, optionally one image) and returns one :class:`Reply` per request (the
answer text, or None when no answer came, and the size of the image as the model saw it). The rest
— building the four questions from :mod:`gotr1.rewards.qwen_prompts`, retrying an unusable answer
once with a stricter reminder, counting failures, converting boxes to the 0–1000 grid — lives here,
so the local and the HTTP judge behave the same. Nothing here raises on odd input: an image that
cannot be prepared (say, an aspect ratio Qwen2.5-VL refuses) or a :meth:`VLMJudge.generate` that
raises fails the samples concerned, counted and with a reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from gotr1.numeric import finite_message
from gotr1.rewards import qwen_prompts as qp
from gotr1.rewards.protocol import Box, GroundResult, JudgeScores


@dataclass
class ChatRequest:
    """One question to the judge: a user turn with text and at most one image."""

    text: str
    image: Image.Image | None = None
    max_new_tokens: int = 64


@dataclass
class Reply:
    """The judge's answer to one request; ``text`` is None when no answer came (``error`` says why).

    ``image_size`` is (width, height) of the image as the model saw it, which Qwen2.5-VL's pixel
    boxes refer to.
    """

    text: str | None
    image_size: tuple[int, int] | None = None
    error: str | None = None


@dataclass
class VLMJudgeConfig:
    """Settings shared by the Qwen2.5-VL judges."""

    box_format: str = field(
        default="qwen2.5",
        metadata={
            "help": "how the judge writes boxes: qwen2.5 (pixels of the resized image), "
            "grid1000 (Qwen2-VL), unit (0-1)"
        },
    )
    image_size: int | None = field(
        default=448,
        metadata={
            "help": "resize images so their longer side has this many pixels before judging "
            "(small world images are upscaled); None keeps them as they are"
        },
    )
    retry_unusable: bool = field(
        default=True,
        metadata={"help": "ask once more, with a stricter reminder, after an unusable answer"},
    )
    score_max_new_tokens: int = field(
        default=48, metadata={"help": "answer length cap for the scoring questions"}
    )
    ground_max_new_tokens: int = field(
        default=160, metadata={"help": "answer length cap for grounding (several boxes fit)"}
    )

    def __post_init__(self) -> None:
        message = finite_message(self)  # of subclasses' fields too (timeouts, backoff)
        if message:
            raise ValueError(message)
        if self.box_format not in qp.BOX_FORMATS:
            raise ValueError(f"box_format {self.box_format!r} is not one of {qp.BOX_FORMATS}")
        if self.image_size is not None and self.image_size < 28:
            raise ValueError(f"image_size {self.image_size} is below 28 pixels")


def _rgb(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image or an HxWx3 uint8 array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {array.shape}")
    return Image.fromarray(array.astype(np.uint8), "RGB")


class VLMJudge:
    """Answers the four judge questions through :meth:`generate`; counts retries and failures."""

    config: VLMJudgeConfig

    def __init__(self, config: VLMJudgeConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.stats: dict[str, float] = {
            "requests": 0,
            "unusable_answers": 0,
            "retries": 0,
            "no_answer": 0,
            "bad_inputs": 0,
            "generate_errors": 0,
            "failures": 0,
            "seconds": 0.0,
        }

    # -- what a subclass provides -------------------------------------------------------------
    def generate(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        """Answer a batch of requests (greedy, deterministic); one Reply per request, in order."""
        raise NotImplementedError

    # -- shared machinery ------------------------------------------------------------------------
    def _count(self, key: str, amount: float = 1) -> None:
        with self._lock:
            self.stats[key] = self.stats.get(key, 0) + amount

    def prepare_image(self, image: Any) -> Image.Image:
        """The image as sent to the judge: RGB, longer side resized to ``config.image_size``."""
        rgb = _rgb(image)
        target = self.config.image_size
        if target is None or max(rgb.size) == target:
            return rgb
        scale = target / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        return rgb.resize(size, Image.Resampling.BICUBIC)

    def _prepare_all(
        self, images: Sequence[Any]
    ) -> tuple[list[Image.Image | None], list[str | None]]:
        """Each image as sent to the judge, or None and the reason it cannot be (e.g. an aspect
        ratio Qwen2.5-VL's processor refuses); such a sample becomes a counted failure."""
        prepared: list[Image.Image | None] = []
        errors: list[str | None] = []
        for image in images:
            try:
                prepared.append(self.prepare_image(image))
                errors.append(None)
            except Exception as error:  # noqa: BLE001 - one odd image must not stop the batch
                prepared.append(None)
                errors.append(f"cannot prepare the image ({type(error).__name__}: {error})")
        return prepared, errors

    def _generate_safely(
        self,
        requests: Sequence[ChatRequest | None],
        input_errors: Sequence[str | None] | None = None,
    ) -> list[Reply]:
        """One reply per request, never a raise: a None request (its input could not be prepared;
        ``input_errors`` says why) is not sent, and an exception from :meth:`generate` becomes
        replies without text for the requests it was asked."""
        errors = list(input_errors) if input_errors is not None else [None] * len(requests)
        replies = [
            Reply(None, None, errors[i] or "the request could not be built")
            for i in range(len(requests))
        ]
        index = [i for i, r in enumerate(requests) if r is not None]
        if not index:
            return replies
        try:
            answered = self.generate([r for r in requests if r is not None])
        except Exception as error:  # noqa: BLE001 - a judge must never crash the trainer
            self._count("generate_errors")
            reason = f"the judge raised {type(error).__name__}: {error}"
            answered = [Reply(None, None, reason) for _ in index]
        if len(answered) != len(index):
            raise RuntimeError(f"judge returned {len(answered)} replies for {len(index)} requests")
        for i, reply in zip(index, answered, strict=True):
            replies[i] = reply
        return replies

    def _ask(
        self,
        requests: list[ChatRequest | None],
        parse: Any,
        retry_suffixes: list[str],
        input_errors: Sequence[str | None] | None = None,
    ) -> tuple[list[Any], list[Reply], list[str | None], int]:
        """Ask, parse, re-ask the unusable ones once; returns parsed values (None = failure).

        A request given as None is not sent: it fails with its ``input_errors`` entry as reason.
        """
        start = time.perf_counter()
        replies = self._generate_safely(requests, input_errors)
        self._count("requests", sum(r is not None for r in requests))
        values = [parse(r) if r.text is not None else None for r in replies]
        reasons: list[str | None] = [None] * len(requests)
        unusable = [
            i
            for i, (v, r) in enumerate(zip(values, replies, strict=True))
            if v is None and r.text is not None
        ]
        self._count("unusable_answers", len(unusable))
        retried = 0
        if unusable and self.config.retry_unusable:
            again: list[ChatRequest | None] = [
                ChatRequest(r.text + retry_suffixes[i], r.image, r.max_new_tokens)
                for i in unusable
                if (r := requests[i]) is not None  # an answer came, so the request was sent
            ]
            second = self._generate_safely(again)
            retried = len(again)
            self._count("retries", retried)
            self._count("requests", retried)
            for i, reply in zip(unusable, second, strict=True):
                replies[i] = reply
                values[i] = parse(reply) if reply.text is not None else None
        for i, (value, reply) in enumerate(zip(values, replies, strict=True)):
            if value is None:
                if requests[i] is None:
                    self._count("bad_inputs")
                    reasons[i] = reply.error
                elif reply.text is None:
                    self._count("no_answer")
                    reasons[i] = f"no answer: {reply.error or 'unknown error'}"
                else:
                    reasons[i] = f"unusable answer: {reply.text[:80]!r}"
                self._count("failures")
        self._count("seconds", time.perf_counter() - start)
        return values, replies, reasons, retried

    def _scores(
        self,
        question: str,
        requests: list[ChatRequest | None],
        input_errors: Sequence[str | None] | None = None,
    ) -> JudgeScores:
        lo, hi = qp.SCORE_BANDS[question]
        suffix = qp.score_retry_suffix(question)
        values, _, reasons, retried = self._ask(
            requests,
            lambda r: qp.parse_score(r.text, lo, hi),
            [suffix] * len(requests),
            input_errors,
        )
        scores = [None if v is None else qp.band_to_unit(v, question) for v in values]
        result = JudgeScores.from_lists(scores, reasons)
        result.retried = retried
        return result

    # -- the four questions ------------------------------------------------------------------------
    def semantic(self, prompts: Sequence[str], chains: Sequence[Any]) -> JudgeScores:
        """R_sem from the chain's text: objects and attributes captured, no contradiction."""
        _check_lengths(prompts, chains)
        requests = [
            ChatRequest(qp.semantic_question(p, c), None, self.config.score_max_new_tokens)
            for p, c in zip(prompts, chains, strict=True)
        ]
        return self._scores("sem", requests)

    def layout(
        self, prompts: Sequence[str], chains: Sequence[Any], layout_images: Sequence[Any] | None
    ) -> JudgeScores:
        """R_spa from the drawn layout, or from the coordinates as text when no images are given."""
        _check_lengths(prompts, chains)
        if layout_images is None:
            requests: list[ChatRequest | None] = [
                ChatRequest(
                    qp.layout_question(p, c, as_text=True), None, self.config.score_max_new_tokens
                )
                for p, c in zip(prompts, chains, strict=True)
            ]
            return self._scores("spa", requests)
        return self._image_scores("spa", prompts, layout_images, qp.layout_question)

    def image(self, prompts: Sequence[str], images: Sequence[Any]) -> JudgeScores:
        """R_PI: the generated image against the prompt."""
        return self._image_scores("pi", prompts, images, qp.image_question)

    def _image_scores(
        self,
        component: str,
        prompts: Sequence[str],
        images: Sequence[Any],
        question: Callable[[str], str],
    ) -> JudgeScores:
        """Ask `question(prompt)` about each image; an image that cannot be prepared is a
        counted failure of its sample only."""
        _check_lengths(prompts, images)
        prepared, errors = self._prepare_all(images)
        requests = [
            None if img is None else ChatRequest(question(p), img, self.config.score_max_new_tokens)
            for p, img in zip(prompts, prepared, strict=True)
        ]
        return self._scores(component, requests, errors)

    def ground(self, images: Sequence[Any], names: Sequence[Sequence[str]]) -> GroundResult:
        """Boxes of each planned object name (asked once per distinct name and image)."""
        _check_lengths(images, names)
        requests: list[ChatRequest | None] = []
        input_errors: list[str | None] = []
        owners: list[tuple[int, str]] = []
        for index, (image, image_names) in enumerate(zip(images, names, strict=True)):
            distinct = list(dict.fromkeys(image_names))
            if not distinct:
                continue
            (prepared,), (error,) = self._prepare_all([image])
            for name in distinct:
                requests.append(
                    None
                    if prepared is None
                    else ChatRequest(
                        qp.ground_question(name), prepared, self.config.ground_max_new_tokens
                    )
                )
                input_errors.append(error)
                owners.append((index, name))
        box_format = self.config.box_format

        def parse(reply: Reply) -> list[Box] | None:
            boxes = qp.parse_boxes(reply.text)
            if boxes is None:
                return None
            try:
                return [qp.model_box_to_grid(b, box_format, reply.image_size) for b in boxes]
            except ValueError:
                return None

        suffixes = [qp.ground_retry_suffix(name) for _, name in owners]
        values, _, reasons, retried = self._ask(requests, parse, suffixes, input_errors)
        found: list[dict[str, list[Box]]] = [{} for _ in images]
        failed = np.zeros(len(images), dtype=bool)
        image_reasons: list[str | None] = [None] * len(images)
        for (index, name), value, reason in zip(owners, values, reasons, strict=True):
            if value is None:
                failed[index] = True
                image_reasons[index] = image_reasons[index] or f"{name!r}: {reason}"
            else:
                found[index][name] = value
        candidates = [
            [found[i].get(name, []) for name in image_names] for i, image_names in enumerate(names)
        ]
        return GroundResult(candidates, failed, image_reasons, retried)


def _check_lengths(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"batch lengths differ: {len(a)} vs {len(b)}")
