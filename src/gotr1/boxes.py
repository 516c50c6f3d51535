"""Box geometry every layer shares: GenEval's rule for where one box lies relative to another.

The world's scoring and `gotr1.eval.geneval` both judge relations by it, so it sits below both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POSITION_THRESHOLD = 0.1
"""Each axis of the centre offset shrinks by 0.1 x (dim_A + dim_B) (``position_threshold``)."""


def relative_position(
    box_a: Sequence[float],
    box_b: Sequence[float],
    position_threshold: float = POSITION_THRESHOLD,
) -> set[str]:
    """Where A is relative to B, as evaluate_images.py's ``relative_position`` computes it.

    offset = centre_A - centre_B; each axis is shrunk toward zero by
    ``position_threshold * (dim_A + dim_B)`` (clamped at 0); if both shrunk components are below
    1e-3 the answer is the empty set; otherwise (dx, dy) = shrunk offset / |offset| and the answer
    holds "left of" if dx < -0.5, "right of" if dx > 0.5, "above" if dy < -0.5, "below" if
    dy > 0.5 (strict; image y grows downward). Computed with numpy as the official code is.
    """
    boxes = np.array([list(box_a)[:4], list(box_b)[:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - position_threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations
