"""The benchmarks' own scorer models through transformers: CLIP, BLIP-VQA, OWLv2 (+ CLIP colours).

Each class below is an :class:`gotr1.eval.evidence.EvidenceScorer` that answers only what its model
can answer (its ``provides``); the rules of :mod:`gotr1.eval.compbench` and
:mod:`gotr1.eval.geneval` run unchanged over it.

- :class:`ClipScoreScorer` (``--scorer clip``) — ``clip_score(image, prompt)``: T2I-CompBench's
  non-spatial metric (``CLIPScore_eval/CLIP_similarity.py``): CLIP ViT-B/32, the image through
  CLIP's own transform, the prompt tokenised as is (complex prompts: adjectives removed first),
  the score the plain cosine of the normalised embeddings, no rescaling and no clipping.
- :class:`BlipVqaScorer` (``--scorer blip-vqa``) — ``yes_prob(image, question)`` as
  ``BLIPvqa_eval`` computes it (``models/blip_vqa.py``, ``inference: vqa_prob``): the image resized
  to 480 x 480 (bicubic, CLIP normalisation; the ViT's position embeddings interpolated from 384),
  the question lower-cased with ``.!"()*#:;~`` removed (``pre_question``), tokenised to at most 35
  tokens with its first token replaced by ``[ENC]``, then the decoder's first-token softmax from
  ``[DEC]``: ``P(yes) / (P(yes) + P(no))``.
- :class:`Owlv2Scorer` (``--scorer owlv2``) — ``detect`` by ``Owlv2ForObjectDetection`` with the text
  query "a photo of a <name>", and ``colour`` by GenEval's zero-shot CLIP ViT-L/14 classifier on the
  box crop (:class:`ClipColourClassifier`). OWLv2's confidences are not on UniDet's or
  Mask2Former's scale; :class:`ConfidenceMap` maps them onto the official thresholds (below).
- :class:`OfficialScorer` (``--scorer official``) — per question the scorer closest to the official
  metric: BLIP-VQA for yes/no, CLIP for CLIPScore, OWLv2 for boxes, CLIP ViT-L/14 for colours.
  Each model loads the first time it is asked.

Confidence mapping (OWLv2 -> the official detector's scale). OWLv2's sigmoid scores are on a scale
of their own (transformers' OWLv2 examples keep boxes above 0.1 and find clear objects near 0.6).
Two operating points on OWLv2's scale, ``found`` (default 0.1: the object is there) and ``count``
(default 0.3: sure enough to be counted), are mapped piecewise-linearly onto the thresholds the
official rules apply:

- T2I-CompBench (UniDet keeps scores > 0.5): ``found`` -> 0.5 and 1 -> 1, linear between; so a box
  counts for the 2D and numeracy rules exactly when OWLv2's score exceeds ``found``, and the 2D
  rule's ``0.25 * conf`` terms grow with OWLv2's confidence as they do with UniDet's.
- GenEval (Mask2Former, > 0.3 to exist, > 0.9 for the counting tag): ``found`` -> 0.3,
  ``count`` -> 0.9, 1 -> 1, linear between; so an object exists when OWLv2's score exceeds
  ``found`` and is counted when it exceeds ``count``.

Boxes at or below ``found`` are dropped, same-name boxes overlapping more than ``nms`` (IoU,
default 0.5) keep the most confident one (UniDet and Mask2Former suppress duplicates inside the
model; OWLv2 scores every patch), and a mapped confidence is at most 0.999: like UniDet's it is
never exactly 1, so two found objects in the wrong relation stay below the 2D rule's 0.5 cutoff.
The operating points are not calibrated against UniDet or Mask2Former on labelled images; the
categories scored with boxes are therefore labelled "near", never "exact"
(:data:`COMPBENCH_CLOSENESS`, :data:`GENEVAL_CLOSENESS`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gotr1.errors import UserError
from gotr1.eval.evidence import Detection, PixelBox
from gotr1.rewards.clip_model import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ClipEmbedder,
    load_pretrained,
    load_tokenizer,
    resolve_device,
)

__all__ = [
    "BLIP_IMAGE_SIZE",
    "BLIP_MAX_QUESTION_TOKENS",
    "COMPBENCH_CLOSENESS",
    "GENEVAL_CLOSENESS",
    "GENEVAL_COLOUR_TEMPLATES",
    "HF_SCORERS",
    "OFFICIAL_MODELS",
    "BlipVqaScorer",
    "ClipColourClassifier",
    "ClipScoreScorer",
    "ConfidenceMap",
    "HFScorerOptions",
    "OfficialScorer",
    "Owlv2Scorer",
    "blip_pixels",
    "blip_question",
    "closeness",
    "confidence_map",
    "is_official_model",
    "nms",
    "owlv2_pixels",
]

HF_SCORERS: tuple[str, ...] = ("clip", "blip-vqa", "owlv2", "official")
"""The ``--scorer`` names served by this module."""

OFFICIAL_MODELS: dict[str, str] = {
    "clip": "openai/clip-vit-base-patch32",
    "blip-vqa": "Salesforce/blip-vqa-capfilt-large",
    "owlv2": "google/owlv2-base-patch16-ensemble",
    "colour-clip": "openai/clip-vit-large-patch14",
}
"""Default hub id of each model. CLIP ViT-B/32 (T2I-CompBench's ``clip.load("ViT-B/32")``), BLIP
VQA CapFilt-L (``model_base_vqa_capfilt_large.pth`` of BLIPvqa_eval/configs/vqa.yaml) and CLIP
ViT-L/14 (GenEval's ``open_clip`` "ViT-L-14", pretrained "openai") are the official weights in
transformers' format; OWLv2 stands in for UniDet and Mask2Former."""

BLIP_IMAGE_SIZE = 480
"""BLIPvqa_eval/configs/vqa.yaml ``image_size``."""
BLIP_MAX_QUESTION_TOKENS = 35
"""blip_vqa.py tokenises questions with ``truncation=True, max_length=35``."""
OWLV2_QUERY = "a photo of a {}"
"""The text query OWLv2 is given for an object name."""
GENEVAL_COLOUR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c} {classname}",
    "a photo of a {c}-colored {classname}",
    "a photo of a {c} object",
)
"""evaluate_images.py ``color_classification``: the zero-shot templates per colour."""

_QUESTION_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class HFScorerOptions:
    """Where the transformers scorers load their models from and how they run."""

    clip_model: str = OFFICIAL_MODELS["clip"]
    blip_model: str = OFFICIAL_MODELS["blip-vqa"]
    owlv2_model: str = OFFICIAL_MODELS["owlv2"]
    colour_clip_model: str = OFFICIAL_MODELS["colour-clip"]
    owlv2_found: float = 0.1
    owlv2_count: float = 0.3
    owlv2_nms: float = 0.5
    device: str | None = None
    dtype: str | None = None
    local_files_only: bool = False
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.owlv2_found < self.owlv2_count < 1:
            raise UserError(
                "OWLv2 thresholds must satisfy 0 < --owlv2-threshold < --owlv2-count-threshold "
                f"< 1, got {self.owlv2_found} and {self.owlv2_count}"
            )
        if not 0 < self.owlv2_nms <= 1:
            raise UserError(f"--owlv2-nms must be in (0, 1], got {self.owlv2_nms}")
        if self.batch_size < 1:
            raise UserError(f"scorer batch size must be at least 1, got {self.batch_size}")


def is_official_model(kind: str, name: str) -> bool:
    """Whether ``name`` (hub id or folder) is the official weights of ``kind``: the hub id itself,
    or a folder named after it (``.../clip-vit-base-patch32``)."""
    official = OFFICIAL_MODELS.get(kind)
    if official is None:
        return False
    return name.rstrip("/") == official or Path(name).name == official.split("/")[-1]


# --------------------------------------------------------------------------- confidence map


@dataclass(frozen=True)
class ConfidenceMap:
    """An increasing piecewise-linear map from a detector's scores to the official scale."""

    knots: tuple[tuple[float, float], ...]
    """(detector score, official score) pairs, increasing in both, from (0, 0) to (1, 1)."""
    ceiling: float = 0.999

    def __call__(self, score: float) -> float:
        xs = [k[0] for k in self.knots]
        ys = [k[1] for k in self.knots]
        return float(min(self.ceiling, np.interp(float(score), xs, ys)))


def confidence_map(benchmark: str, found: float, count: float) -> ConfidenceMap:
    """The OWLv2 -> official map of ``benchmark`` (compbench: ``found`` -> 0.5; geneval:
    ``found`` -> 0.3 and ``count`` -> 0.9); see the module docstring."""
    if benchmark == "compbench":
        return ConfidenceMap(((0.0, 0.0), (found, 0.5), (1.0, 1.0)))
    if benchmark == "geneval":
        return ConfidenceMap(((0.0, 0.0), (found, 0.3), (count, 0.9), (1.0, 1.0)))
    raise ValueError(f"benchmark must be compbench or geneval, got {benchmark!r}")


def nms(boxes: Sequence[Sequence[float]], scores: Sequence[float], iou: float) -> list[int]:
    """Greedy non-maximum suppression: indices kept, most confident first (a box overlapping a
    kept one by IoU > ``iou`` is dropped; ``iou`` = 1 keeps every box)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept: list[int] = []
    for i in order:
        if all(_iou(boxes[i], boxes[k]) <= iou for k in kept):
            kept.append(i)
    return kept


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --------------------------------------------------------------------------- shared pieces


class _PartialScorer:
    """Base of the scorers that answer only some questions: the others raise a clear error."""

    name = "partial"
    provides: frozenset[str] = frozenset()

    def _refuse(self, what: str) -> None:
        raise UserError(f"scorer {self.name!r} does not answer {what} questions")

    def detect(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        """Not answered by this scorer (see ``provides``)."""
        self._refuse("detect")
        return []

    def yes_prob(self, image: Image.Image, question: str) -> float:
        """Not answered by this scorer (see ``provides``)."""
        self._refuse("yes/no")
        return 0.0

    def colour(self, image: Image.Image, box: PixelBox, candidates: Sequence[str]) -> str:
        """Not answered by this scorer (see ``provides``)."""
        self._refuse("colour")
        return ""

    def close(self) -> None:
        """Release the models (nothing to do: they are freed with the scorer)."""


def _model_label(name: str) -> str:
    return name.rstrip("/").split("/")[-1] or name


class ClipScoreScorer(_PartialScorer):
    """T2I-CompBench's CLIPScore (see the module docstring)."""

    provides = frozenset({"clip_score"})

    def __init__(self, options: HFScorerOptions) -> None:
        """Load the CLIP model ``options.clip_model``."""
        self.options = options
        self.embedder = ClipEmbedder(
            options.clip_model,
            "--clip-model",
            options.device,
            options.dtype,
            options.local_files_only,
            options.batch_size,
        )
        self.name = f"clip-{_model_label(options.clip_model)}"
        self.models = {"clip": options.clip_model}
        self.stats: dict[str, int] = {"clip_scores": 0}

    def clip_score_batch(
        self, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> list[float]:
        """The CLIP cosine of each (image, prompt) pair."""
        self.stats["clip_scores"] += len(prompts)
        return self.embedder.cosine(list(images), list(prompts))

    def clip_score(self, image: Image.Image, prompt: str) -> float:
        """The cosine of CLIP's normalised image and text embeddings."""
        return self.clip_score_batch([image], [prompt])[0]


def blip_question(question: str, max_words: int = 50) -> str:
    """BLIP's ``pre_question``: lower-case, drop ``.!"()*#:;~``, strip trailing spaces, keep at
    most ``max_words`` words ("a green bench?" stays "a green bench?")."""
    text = _QUESTION_PUNCTUATION.sub("", question.lower()).rstrip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def blip_pixels(images: Sequence[Image.Image], size: int = BLIP_IMAGE_SIZE) -> np.ndarray:
    """BLIP-VQA's test transform: RGB, ``Resize((size, size), BICUBIC)``, /255, CLIP mean/std."""
    mean = np.asarray(OPENAI_CLIP_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(OPENAI_CLIP_STD, dtype=np.float32)[:, None, None]
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        out[i] = (np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0 - mean) / std
    return out


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` in ``tokenizer``'s vocabulary, None when it is not there."""
    value = tokenizer.convert_tokens_to_ids(token)
    if value is None or (tokenizer.unk_token_id is not None and value == tokenizer.unk_token_id):
        return None
    return int(value)


class BlipVqaScorer(_PartialScorer):
    """T2I-CompBench's BLIP-VQA yes-probability (see the module docstring)."""

    provides = frozenset({"yes_prob"})

    def __init__(self, options: HFScorerOptions) -> None:
        """Load ``BlipForQuestionAnswering`` and its BERT tokenizer from ``options.blip_model``."""
        from transformers import BlipForQuestionAnswering

        self.options = options
        self.device = resolve_device(options.device)
        self.model = load_pretrained(
            BlipForQuestionAnswering,
            options.blip_model,
            "--blip-model",
            "a BLIP VQA model",
            options.local_files_only,
            self.device,
            options.dtype,
        )
        self.tokenizer = load_tokenizer(
            options.blip_model, "--blip-model", "a BLIP VQA model", options.local_files_only
        )
        text = self.model.config.text_config
        ids = {w: _token_id(self.tokenizer, w) for w in ("yes", "no")}
        if ids["yes"] is None or ids["no"] is None:
            raise UserError(
                f"--blip-model {options.blip_model}: its tokenizer has no 'yes' or 'no' token"
            )
        self.yes_id, self.no_id = int(ids["yes"]), int(ids["no"])  # type: ignore[arg-type]
        self.bos_id = int(text.bos_token_id)
        # BLIP's tokenizer is bert-base-uncased + [DEC] (the decoder's start) + [ENC] (replaces
        # the question's first token); a tokenizer saved without [ENC] keeps that layout.
        enc = _token_id(self.tokenizer, "[ENC]")
        if enc is None and self.bos_id + 1 < int(text.vocab_size):
            enc = self.bos_id + 1
        self.enc_id = enc
        self.name = f"blip-vqa-{_model_label(options.blip_model)}"
        self.models = {"blip-vqa": options.blip_model}
        self.stats: dict[str, int] = {"yes_no_questions": 0, "empty_questions": 0}

    def yes_prob_batch(
        self, images: Sequence[Image.Image], questions: Sequence[str]
    ) -> list[float]:
        """P(yes) / (P(yes) + P(no)) of the first answer token, per (image, question)."""
        import torch

        self.stats["yes_no_questions"] += len(questions)
        out: list[float] = []
        size = self.options.batch_size
        for start in range(0, len(questions), size):
            chunk_images = list(images[start : start + size])
            texts = [blip_question(q) for q in questions[start : start + size]]
            pixels = torch.from_numpy(blip_pixels(chunk_images)).to(self.device, self.model.dtype)
            encoded = self.tokenizer(
                texts,
                padding="longest",
                truncation=True,
                max_length=BLIP_MAX_QUESTION_TOKENS,
                return_tensors="pt",
            )
            input_ids = encoded["input_ids"].to(self.device)
            attention = encoded["attention_mask"].to(self.device)
            if self.enc_id is not None:
                input_ids[:, 0] = self.enc_id
            with torch.inference_mode():
                vision = self.model.vision_model(
                    pixel_values=pixels, interpolate_pos_encoding=True
                ).last_hidden_state
                image_mask = torch.ones(vision.shape[:-1], dtype=torch.long, device=self.device)
                question = self.model.text_encoder(
                    input_ids=input_ids,
                    attention_mask=attention,
                    encoder_hidden_states=vision,
                    encoder_attention_mask=image_mask,
                ).last_hidden_state
                start_ids = torch.full((len(texts), 1), self.bos_id, device=self.device)
                logits = self.model.text_decoder(
                    input_ids=start_ids,
                    encoder_hidden_states=question,
                    encoder_attention_mask=attention,
                ).logits[:, 0, :]
            probs = torch.softmax(logits.float(), dim=-1)
            ratio = probs[:, self.yes_id] / (probs[:, self.yes_id] + probs[:, self.no_id])
            out.extend(float(v) for v in ratio.cpu())
        return out

    def yes_prob(self, image: Image.Image, question: str) -> float:
        """P(yes) / (P(yes) + P(no)) for one question about ``image``."""
        return self.yes_prob_batch([image], [question])[0]


def owlv2_pixels(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """OWLv2's input transform: RGB in [0, 1], padded to a square at the bottom and right with 0.5
    grey, resized to ``size`` x ``size`` (bilinear, per channel in float), CLIP mean/std.

    transformers' own OWLv2 image processors need scipy or torchvision; this is the same
    transform without them (its anti-aliasing filter applies only when shrinking an image
    larger than ``size``, here replaced by PIL's bilinear filter)."""
    mean = np.asarray(OPENAI_CLIP_MEAN, dtype=np.float32)
    std = np.asarray(OPENAI_CLIP_STD, dtype=np.float32)
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        height, width = array.shape[:2]
        side = max(height, width)
        padded = np.full((side, side, 3), 0.5, dtype=np.float32)
        padded[:height, :width] = array
        for c in range(3):
            channel = Image.fromarray(padded[:, :, c], mode="F")
            resized = np.asarray(channel.resize((size, size), Image.Resampling.BILINEAR))
            out[i, c] = (resized - mean[c]) / std[c]
    return out


class ClipColourClassifier:
    """GenEval's zero-shot colour classifier: CLIP (ViT-L/14) on the box crop, one prototype per
    colour from :data:`GENEVAL_COLOUR_TEMPLATES` (normalised embeddings averaged, renormalised),
    the colour of the largest cosine."""

    def __init__(self, embedder: ClipEmbedder) -> None:
        """Classify with ``embedder``'s CLIP model."""
        self.embedder = embedder
        self._prototypes: dict[tuple[str, tuple[str, ...]], Any] = {}

    def prototypes(self, classname: str, colours: Sequence[str]) -> Any:
        """[D, len(colours)] normalised prototypes for objects of ``classname`` (cached)."""
        key = (classname, tuple(colours))
        if key not in self._prototypes:
            columns = []
            for colour in colours:
                texts = [t.format(c=colour, classname=classname) for t in GENEVAL_COLOUR_TEMPLATES]
                mean = self.embedder.text_features(texts).mean(dim=0)
                columns.append(mean / mean.norm())
            import torch

            self._prototypes[key] = torch.stack(columns, dim=1)
        return self._prototypes[key]

    def classify(
        self,
        images: Sequence[Image.Image],
        boxes: Sequence[Sequence[float]],
        candidates: Sequence[Sequence[str]],
        classnames: Sequence[str | None],
    ) -> list[str]:
        """The colour of each box's crop among its candidates (GenEval crops ``box[:4]`` with
        PIL, which rounds the coordinates)."""
        if not images:
            return []
        crops = [
            image.convert("RGB").crop(tuple(float(v) for v in box[:4]))
            for image, box in zip(images, boxes, strict=True)
        ]
        features = self.embedder.image_features(crops)
        out = []
        for row, cands, classname in zip(features, candidates, classnames, strict=True):
            logits = row @ self.prototypes(classname or "object", list(cands))
            out.append(list(cands)[int(logits.argmax())])
        return out


class Owlv2Scorer(_PartialScorer):
    """Open-vocabulary boxes from OWLv2 and GenEval's CLIP colours (see the module docstring)."""

    provides = frozenset({"detect", "colour"})
    colour_reads_object_name = True

    def __init__(self, options: HFScorerOptions, benchmark: str) -> None:
        """Load ``Owlv2ForObjectDetection`` (``options.owlv2_model``); the colour CLIP model
        loads the first time a colour is asked. ``benchmark`` picks the confidence map."""
        from transformers import Owlv2ForObjectDetection

        self.options = options
        self.benchmark = benchmark
        self.map = confidence_map(benchmark, options.owlv2_found, options.owlv2_count)
        self.device = resolve_device(options.device)
        self.model = load_pretrained(
            Owlv2ForObjectDetection,
            options.owlv2_model,
            "--owlv2-model",
            "an OWLv2 detector",
            options.local_files_only,
            self.device,
            options.dtype,
        )
        self.tokenizer = load_tokenizer(
            options.owlv2_model, "--owlv2-model", "an OWLv2 detector", options.local_files_only
        )
        self.image_size = int(self.model.config.vision_config.image_size)
        self.query_length = int(self.model.config.text_config.max_position_embeddings)
        self._colours: ClipColourClassifier | None = None
        self.name = f"owlv2-{_model_label(options.owlv2_model)}"
        self.models = {"owlv2": options.owlv2_model, "colour-clip": options.colour_clip_model}
        self.stats: dict[str, int] = {"detect_images": 0, "boxes_kept": 0, "colour_questions": 0}

    def detect_batch(
        self, images: Sequence[Image.Image], names: Sequence[Sequence[str]]
    ) -> list[list[Detection]]:
        """Every box of each asked name above the ``found`` point, after same-name NMS, with its
        confidence mapped onto the benchmark's scale; boxes in pixels of each image."""
        import torch

        self.stats["detect_images"] += len(images)
        out: list[list[Detection]] = []
        size = self.options.batch_size
        for start in range(0, len(images), size):
            chunk = list(images[start : start + size])
            asked = [list(dict.fromkeys(n)) for n in names[start : start + size]]
            width_q = max(1, max(len(a) for a in asked))
            texts = [OWLV2_QUERY.format(n) for a in asked for n in a]
            encoded = self.tokenizer(
                texts or [""],
                padding="max_length",
                truncation=True,
                max_length=self.query_length,
                return_tensors="pt",
            )
            ids = torch.zeros((len(chunk) * width_q, self.query_length), dtype=torch.long)
            mask = torch.zeros_like(ids)
            mask[:, 0] = 1  # padded queries (first id 0) are masked out by the model itself
            row = 0
            for i, a in enumerate(asked):
                for j in range(len(a)):
                    ids[i * width_q + j] = encoded["input_ids"][row]
                    mask[i * width_q + j] = encoded["attention_mask"][row]
                    row += 1
            pixels = torch.from_numpy(owlv2_pixels(chunk, self.image_size))
            with torch.inference_mode():
                result = self.model(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    pixel_values=pixels.to(self.device, self.model.dtype),
                )
            logits = result.logits.float().cpu()  # [B, patches, queries]
            boxes = result.pred_boxes.float().cpu()  # [B, patches, 4] cx, cy, w, h of the square
            for i, (image, a) in enumerate(zip(chunk, asked, strict=True)):
                out.append(self._detections(image, a, logits[i, :, : len(a)], boxes[i]))
        return out

    def _detections(
        self, image: Image.Image, asked: list[str], logits: Any, boxes: Any
    ) -> list[Detection]:
        if not asked:
            return []
        import torch

        width, height = image.size
        side = float(max(width, height))
        scores, labels = torch.sigmoid(logits).max(dim=-1)
        cx, cy, w, h = boxes.unbind(-1)
        corners = torch.stack(
            [
                ((cx - w / 2) * side).clamp(0, width),
                ((cy - h / 2) * side).clamp(0, height),
                ((cx + w / 2) * side).clamp(0, width),
                ((cy + h / 2) * side).clamp(0, height),
            ],
            dim=-1,
        ).tolist()
        found: list[Detection] = []
        for q, name in enumerate(asked):
            chosen = [
                p
                for p in range(len(scores))
                if int(labels[p]) == q and float(scores[p]) > self.options.owlv2_found
            ]
            keep = nms(
                [corners[p] for p in chosen],
                [float(scores[p]) for p in chosen],
                self.options.owlv2_nms,
            )
            for k in keep:
                p = chosen[k]
                found.append(Detection(name, tuple(corners[p]), self.map(float(scores[p]))))
        self.stats["boxes_kept"] += len(found)
        return found

    def detect(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        """The boxes of each asked name in ``image`` (see :meth:`detect_batch`)."""
        return self.detect_batch([image], [list(names)])[0]

    @property
    def colours(self) -> ClipColourClassifier:
        """GenEval's colour classifier (CLIP ViT-L/14 by default), loaded on first use."""
        if self._colours is None:
            self._colours = ClipColourClassifier(
                ClipEmbedder(
                    self.options.colour_clip_model,
                    "--colour-clip-model",
                    self.options.device,
                    self.options.dtype,
                    self.options.local_files_only,
                    self.options.batch_size,
                )
            )
        return self._colours

    def colour_batch(
        self,
        images: Sequence[Image.Image],
        boxes: Sequence[Sequence[float]],
        candidates: Sequence[Sequence[str]],
        object_names: Sequence[str | None] | None = None,
    ) -> list[str]:
        """GenEval's CLIP colour of each box crop (prompts name the object's class)."""
        self.stats["colour_questions"] += len(images)
        names = list(object_names) if object_names is not None else [None] * len(images)
        return self.colours.classify(images, boxes, candidates, names)

    def colour(
        self,
        image: Image.Image,
        box: PixelBox,
        candidates: Sequence[str],
        object_name: str | None = None,
    ) -> str:
        """The colour (one of ``candidates``) of the object of class ``object_name`` in ``box``."""
        return self.colour_batch([image], [box], [list(candidates)], [object_name])[0]


class OfficialScorer(_PartialScorer):
    """Per question the scorer closest to the official metric, each loaded on first use."""

    provides = frozenset({"detect", "yes_prob", "colour", "clip_score"})
    colour_reads_object_name = True
    name = "official"

    def __init__(self, options: HFScorerOptions, benchmark: str) -> None:
        """Route yes/no to BLIP-VQA, CLIPScore to CLIP, boxes and colours to OWLv2 + CLIP-L."""
        self.options = options
        self.benchmark = benchmark
        self._parts: dict[str, Any] = {}
        self.models = {
            "clip": options.clip_model,
            "blip-vqa": options.blip_model,
            "owlv2": options.owlv2_model,
            "colour-clip": options.colour_clip_model,
        }

    def _part(self, kind: str) -> Any:
        if kind not in self._parts:
            if kind == "clip":
                self._parts[kind] = ClipScoreScorer(self.options)
            elif kind == "blip-vqa":
                self._parts[kind] = BlipVqaScorer(self.options)
            else:
                self._parts[kind] = Owlv2Scorer(self.options, self.benchmark)
        return self._parts[kind]

    @property
    def stats(self) -> dict[str, int]:
        """The statistics of the parts used so far."""
        out: dict[str, int] = {}
        for part in self._parts.values():
            out.update(part.stats)
        return out

    def detect_batch(
        self, images: Sequence[Image.Image], names: Sequence[Sequence[str]]
    ) -> list[list[Detection]]:
        """OWLv2 boxes (:meth:`Owlv2Scorer.detect_batch`)."""
        return self._part("owlv2").detect_batch(images, names)

    def detect(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        """OWLv2 boxes of each asked name."""
        return self._part("owlv2").detect(image, names)

    def yes_prob_batch(
        self, images: Sequence[Image.Image], questions: Sequence[str]
    ) -> list[float]:
        """BLIP-VQA's yes-probabilities."""
        return self._part("blip-vqa").yes_prob_batch(images, questions)

    def yes_prob(self, image: Image.Image, question: str) -> float:
        """BLIP-VQA's yes-probability."""
        return self._part("blip-vqa").yes_prob(image, question)

    def clip_score_batch(
        self, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> list[float]:
        """CLIP ViT-B/32 cosines."""
        return self._part("clip").clip_score_batch(images, prompts)

    def clip_score(self, image: Image.Image, prompt: str) -> float:
        """CLIP ViT-B/32 cosine."""
        return self._part("clip").clip_score(image, prompt)

    def colour_batch(
        self,
        images: Sequence[Image.Image],
        boxes: Sequence[Sequence[float]],
        candidates: Sequence[Sequence[str]],
        object_names: Sequence[str | None] | None = None,
    ) -> list[str]:
        """GenEval's CLIP ViT-L/14 colours."""
        return self._part("owlv2").colour_batch(images, boxes, candidates, object_names)

    def colour(
        self,
        image: Image.Image,
        box: PixelBox,
        candidates: Sequence[str],
        object_name: str | None = None,
    ) -> str:
        """GenEval's CLIP ViT-L/14 colour."""
        return self._part("owlv2").colour(image, box, candidates, object_name)


# --------------------------------------------------------------------------- closeness

COMPBENCH_CLOSENESS: dict[str, tuple[str, str]] = {
    "color": ("blip-vqa", "exact"),
    "shape": ("blip-vqa", "exact"),
    "texture": ("blip-vqa", "exact"),
    "non_spatial": ("clip", "exact"),
    "spatial": ("owlv2", "near: OWLv2 boxes with mapped confidences instead of UniDet"),
    "numeracy": ("owlv2", "near: OWLv2 boxes with mapped confidences instead of UniDet"),
    "complex": (
        "official",
        "near: attribute part BLIP-VQA (exact), spatial part OWLv2 instead of UniDet, action "
        "part CLIP with adjectives removed by gotr1's lexicon instead of spaCy's tagger",
    ),
}
"""T2I-CompBench category -> (the model kind that scores it, how close that is to the official
metric) when the official weights are used. "exact": same model, same rule (noun phrases from
gotr1's parser, whose agreement with the official spaCy parse docs/benchmarks.md measures)."""

GENEVAL_CLOSENESS = (
    "near: OWLv2 boxes with mapped confidences instead of Mask2Former; colours by CLIP ViT-L/14 "
    "on the box crop (GenEval's classifier, without Mask2Former's mask)"
)
"""How close every GenEval task is under the owlv2/official scorers."""


def closeness(scorer: Any, benchmark: str, category: str | None = None) -> str:
    """How close ``scorer``'s score of a category is to the official metric: "exact", "near: ...",
    or "not comparable: ..." (judged by a model the benchmark does not use)."""
    models: dict[str, str] = dict(getattr(scorer, "models", {}) or {})
    if not models:
        return f"not comparable: evidence from {scorer.name!r}, not the benchmark's models"
    if benchmark == "geneval":
        if not is_official_model("colour-clip", models.get("colour-clip", "")):
            return GENEVAL_CLOSENESS + f"; colour model {models.get('colour-clip')} (not official)"
        return GENEVAL_CLOSENESS
    kind, label = COMPBENCH_CLOSENESS[str(category)]
    if kind in ("blip-vqa", "clip") and not is_official_model(kind, models.get(kind, "")):
        return f"near: {models.get(kind)} instead of the official {OFFICIAL_MODELS[kind]}"
    if kind == "official":
        others = [k for k in ("blip-vqa", "clip") if not is_official_model(k, models.get(k, ""))]
        if others:
            label += "; " + ", ".join(f"{models[k]} (not official)" for k in others)
    return label
