"""A pixel detector for the world: image -> coloured shapes with boxes and confidences.

Pixels are classified to the nearest palette colour (or background), same-colour pixels are
grouped into 4-connected components, and each component's shape is read from how it fills its box.
It is exact on clean renders and tolerant of the noise and blur of a learned tokenizer's reconstructions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from gotr1.chain import GRID, Box
from gotr1.world.grammar import BACKGROUND, COLORS

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)
_BACKGROUND = np.array(BACKGROUND, dtype=np.float32)
MAX_COLOR_DISTANCE = 100.0
"""A pixel farther than this (RGB Euclidean) from every palette colour counts as background."""
MIN_AREA_AT_64 = 24
"""Components smaller than this many pixels of a 64 px image are noise."""


@dataclass(frozen=True)
class Detection:
    """One detected object: shape, colour name, box on the 0–1000 grid, confidence in [0, 1]."""

    shape: str
    color: str
    box: Box
    confidence: float

    @property
    def name(self) -> str:
        """The full noun phrase, e.g. "red circle"."""
        return f"{self.color} {self.shape}"


def _classify_pixels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: palette index + 1 (0 for background) and the distance to that colour."""
    distances = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)
    nearest = distances.argmin(axis=-1)
    nearest_distance = distances.min(axis=-1)
    background_distance = np.linalg.norm(pixels - _BACKGROUND, axis=-1)
    foreground = (nearest_distance < MAX_COLOR_DISTANCE) & (nearest_distance < background_distance)
    return np.where(foreground, nearest + 1, 0), nearest_distance


def _components(classes: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """4-connected components of equal non-zero class: (class, row indices, column indices)."""
    height, _ = classes.shape
    parent: list[int] = []
    runs: list[tuple[int, int, int, int]] = []  # (row, start, end exclusive, class)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[int] = []
    for row in range(height):
        line = classes[row]
        edges = np.flatnonzero(np.diff(line)) + 1
        starts = np.concatenate(([0], edges))
        ends = np.concatenate((edges, [line.size]))
        current: list[int] = []
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            cls = int(line[start])
            if cls == 0:
                continue
            index = len(runs)
            runs.append((row, start, end, cls))
            parent.append(index)
            current.append(index)
            for other in previous:
                _, o_start, o_end, o_cls = runs[other]
                if o_cls == cls and o_start < end and start < o_end:
                    root_a, root_b = find(index), find(other)
                    if root_a != root_b:
                        parent[root_b] = root_a
        previous = current
    groups: dict[int, list[int]] = {}
    for index in range(len(runs)):
        groups.setdefault(find(index), []).append(index)
    components = []
    for members in groups.values():
        rows = np.concatenate([np.full(runs[m][2] - runs[m][1], runs[m][0]) for m in members])
        cols = np.concatenate([np.arange(runs[m][1], runs[m][2]) for m in members])
        components.append((runs[members[0]][3], rows, cols))
    return components


def _shape_of(rows: np.ndarray, cols: np.ndarray) -> tuple[str, float]:
    """Name the shape a pixel component fills, with a margin-based confidence in [0, 1]."""
    top, bottom = rows.min(), rows.max()
    left, right = cols.min(), cols.max()
    height, width = bottom - top + 1, right - left + 1
    fill = rows.size / float(height * width)
    row_widths = np.bincount(rows - top, minlength=height).astype(np.float32)
    quarter = max(1, height // 4)
    top_width, bottom_width = row_widths[:quarter].mean(), row_widths[-quarter:].mean()
    taper = bottom_width / max(top_width, 1.0)
    if fill > 0.88:
        return "square", min(1.0, (fill - 0.88) / 0.08 + 0.5)
    if taper > 1.6:
        return "triangle", min(1.0, (taper - 1.6) / 1.0 + 0.5)
    return "circle", min(1.0, max(0.0, 1.0 - abs(fill - np.pi / 4) / 0.2))


def detect(image: Image.Image) -> list[Detection]:
    """Find every coloured shape in a world image, largest first."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = np.asarray(rgb, dtype=np.float32)
    height, width = pixels.shape[:2]
    classes, distance = _classify_pixels(pixels)
    min_area = MIN_AREA_AT_64 * (height * width) / (64 * 64)
    detections = []
    for cls, rows, cols in _components(classes):
        if rows.size < min_area:
            continue
        shape, shape_confidence = _shape_of(rows, cols)
        color_confidence = float(1.0 - distance[rows, cols].mean() / MAX_COLOR_DISTANCE)
        box = (
            round(cols.min() * GRID / width),
            round(rows.min() * GRID / height),
            round((cols.max() + 1) * GRID / width),
            round((rows.max() + 1) * GRID / height),
        )
        confidence = round(float(np.clip(0.5 * shape_confidence + 0.5 * color_confidence, 0, 1)), 4)
        detections.append((rows.size, Detection(shape, COLOR_NAMES[cls - 1], box, confidence)))
    detections.sort(key=lambda pair: -pair[0])
    return [d for _, d in detections]
