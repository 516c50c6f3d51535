"""The evidence a benchmark rule needs, behind one pluggable protocol.

T2I-CompBench and GenEval score an image with fixed *rules* (a box-geometry formula, a product of
yes-probabilities, include/exclude counts) applied to *evidence* from fixed models (UniDet,
BLIP-VQA, CLIP, Mask2Former). gotr1 implements the rules exactly (:mod:`gotr1.eval.compbench`,
:mod:`gotr1.eval.geneval`) and takes the evidence from an :class:`EvidenceScorer`: the Qwen2.5-VL
judge at real scale, the exact world judge on the embedded world. Scores computed this way are
*judged by that scorer*, not by the official models, and every output says so.

Conventions:

- A :class:`Detection`'s box is ``(x1, y1, x2, y2)`` in **pixels of the image that was passed** to
  :meth:`EvidenceScorer.detect` (floats allowed). The rules rescale where the official code works on a
  resized image (T2I-CompBench's UniDet sees ~480 px images: see
  :func:`gotr1.eval.compbench.to_unidet_pixels`). :func:`grid_to_pixels` converts boxes from the
  project's 0-1000 grid.
- ``detect`` returns every instance it finds of each asked name, each labelled with the name exactly
  as asked; the rules sort by score themselves.
- ``yes_prob`` answers a yes/no question with ``P(yes) / (P(yes) + P(no))`` (see
  :func:`gotr1.eval.compbench.yes_ratio`), in [0, 1].
- ``colour`` picks one of the candidate colour names for the object inside ``box``. A scorer that
  sets ``colour_reads_object_name = True`` is also given the object's class as ``object_name=``
  (GenEval's CLIP colour prompts name it: "a photo of a red car").
- Optional capability ``clip_score(image, prompt)``: the CLIP image-text cosine that
  T2I-CompBench's non-spatial metric uses. A scorer states what it answers in ``provides``
  (:func:`capabilities`); scorers without the attribute answer detect, yes_prob and colour. A rule
  that needs a capability the scorer lacks is not run with it (see
  :func:`gotr1.eval.compbench.missing_capabilities`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

PixelBox = tuple[float, float, float, float]
"""(x1, y1, x2, y2) in pixels of the image being scored."""


@dataclass(frozen=True)
class Detection:
    """One detected instance: the name it was asked for, its box in pixels, its confidence."""

    label: str
    box: PixelBox
    score: float

    def __post_init__(self) -> None:
        if len(self.box) != 4:
            raise ValueError(f"Detection.box must be (x1, y1, x2, y2), got {self.box!r}")
        values = [float(v) for v in self.box]
        if not all(math.isfinite(v) for v in values) or not math.isfinite(float(self.score)):
            raise ValueError(
                f"Detection needs finite box and score, got {self.box!r}, {self.score!r}"
            )
        object.__setattr__(self, "box", tuple(values))
        object.__setattr__(self, "score", float(self.score))


@runtime_checkable
class EvidenceScorer(Protocol):
    """Where the benchmark rules get their evidence from (detector, VQA model, colour classifier)."""

    name: str
    """Short name written into every result file ("qwen2.5-vl-7b", "world"), so judged scores are
    never mistaken for the official models' scores."""

    def detect(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        """Find every instance of each name in ``image``; boxes in pixels, labels = the asked names."""
        ...

    def yes_prob(self, image: Image.Image, question: str) -> float:
        """P(yes) / (P(yes) + P(no)) for a yes/no question about ``image`` (e.g. "a green bench?")."""
        ...

    def colour(self, image: Image.Image, box: PixelBox, candidates: Sequence[str]) -> str:
        """The colour (one of ``candidates``) of the object inside ``box``. A scorer whose
        ``colour_reads_object_name`` is True also takes ``object_name=`` (the object's class)."""
        ...


CLASSIC_CAPABILITIES: frozenset[str] = frozenset({"detect", "yes_prob", "colour"})
"""What a scorer without a ``provides`` attribute answers (the Qwen and world scorers)."""
CAPABILITIES: frozenset[str] = CLASSIC_CAPABILITIES | {"clip_score"}
"""Every kind of evidence a rule can ask for."""


def capabilities(scorer: object) -> frozenset[str]:
    """The kinds of evidence ``scorer`` answers (its ``provides``, else detect/yes_prob/colour)."""
    return frozenset(getattr(scorer, "provides", CLASSIC_CAPABILITIES))


def grid_to_pixels(box: Sequence[float], width: int, height: int) -> PixelBox:
    """Convert a box on the project's 0-1000 grid to pixels of a ``width`` x ``height`` image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 / 1000 * width, y1 / 1000 * height, x2 / 1000 * width, y2 / 1000 * height)


def pixels_to_grid(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Convert a pixel box to the 0-1000 grid (rounded, clamped to [0, 1000])."""
    x1, y1, x2, y2 = (float(v) for v in box)

    def conv(v: float, size: int) -> int:
        return max(0, min(1000, round(v / size * 1000)))

    return (conv(x1, width), conv(y1, height), conv(x2, width), conv(y2, height))
