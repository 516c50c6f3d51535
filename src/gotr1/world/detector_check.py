"""Measure the pixel detector against ground truth, on clean renders and on degraded ones."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from gotr1.chain import box_iou
from gotr1.world.detector import Detection, detect
from gotr1.world.scene import Scene, random_scene, render_scene


def degrade(image: Image.Image, seed: int, blur: float = 0.6, noise: float = 8.0) -> Image.Image:
    """Blur and add Gaussian pixel noise, like a learned image tokenizer's reconstructions look."""
    blurred = image.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else image
    pixels = np.asarray(blurred, dtype=np.float32)
    pixels = pixels + np.random.default_rng(seed).normal(0.0, noise, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def match_objects(
    scene: Scene, detections: Sequence[Detection], min_iou: float
) -> tuple[int, int, list[float]]:
    """Greedily pair true objects with detections of the same shape and colour.

    Returns (objects found with IoU >= min_iou, unmatched detections, IoU of each found object).
    """
    used: set[int] = set()
    ious: list[float] = []
    for obj in scene.objects:
        best, best_iou = None, min_iou
        for index, detection in enumerate(detections):
            if index in used or (detection.shape, detection.color) != (obj.shape, obj.color):
                continue
            iou = box_iou(detection.box, obj.box)
            if iou >= best_iou:
                best, best_iou = index, iou
        if best is not None:
            used.add(best)
            ious.append(best_iou)
    return len(ious), len(detections) - len(used), ious


def detector_accuracy(
    scenes: int = 1000, seed: int = 0, blur: float = 0.6, noise: float = 8.0, size: int = 64
) -> dict[str, float]:
    """Object recall (right shape, colour, box IoU >= 0.9, and >= 0.7 for degraded renders) and
    spurious detections, on clean and on blurred-plus-noisy renders of `size` pixels."""
    rng = random.Random(f"gotr1-detector-check-{seed}")
    totals = {"objects": 0, "clean_found": 0, "clean_spurious": 0}
    totals |= {"degraded_found": 0, "degraded_found_iou0.9": 0, "degraded_spurious": 0}
    clean_ious: list[float] = []
    degraded_ious: list[float] = []
    start = time.perf_counter()
    for index in range(scenes):
        scene = random_scene(rng)
        image = render_scene(scene, size)
        found, spurious, ious = match_objects(scene, detect(image), 0.9)
        totals["objects"] += len(scene.objects)
        totals["clean_found"] += found
        totals["clean_spurious"] += spurious
        clean_ious += ious
        noisy = degrade(image, seed * 1_000_003 + index, blur, noise)
        noisy_detections = detect(noisy)
        totals["degraded_found_iou0.9"] += match_objects(scene, noisy_detections, 0.9)[0]
        found, spurious, ious = match_objects(scene, noisy_detections, 0.7)
        totals["degraded_found"] += found
        totals["degraded_spurious"] += spurious
        degraded_ious += ious
    return {
        "scenes": scenes,
        "objects": totals["objects"],
        "clean_recall_iou0.9": totals["clean_found"] / totals["objects"],
        "clean_spurious": totals["clean_spurious"],
        "clean_min_iou": min(clean_ious, default=0.0),
        "degraded_recall_iou0.9": totals["degraded_found_iou0.9"] / totals["objects"],
        "degraded_recall_iou0.7": totals["degraded_found"] / totals["objects"],
        "degraded_spurious": totals["degraded_spurious"],
        "degraded_mean_iou": float(np.mean(degraded_ious)) if degraded_ious else 0.0,
        "blur_radius": blur,
        "noise_std": noise,
        "size": size,
        "seconds": round(time.perf_counter() - start, 2),
    }
