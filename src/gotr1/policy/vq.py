"""The world image tokenizer: train transformers' JanusVQVAE on world renders, encode and decode images.

Janus decodes codes through *L2-normalised* codebook entries (`get_codebook_entry`) while its `encode`
picks codes by Euclidean distance to the raw entries. Training here quantises on the unit sphere
(cosine nearest, LlamaGen-style) and keeps the codebook normalised, so the two agree: with unit-norm
entries, Euclidean-nearest equals cosine-nearest and the saved model works unchanged in transformers.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers.models.janus.modeling_janus import JanusVQVAE

from gotr1.world import BACKGROUND, random_scene, render_scene
from gotr1.world.detector import detect
from gotr1.world.detector_check import match_objects


@dataclass
class VQTrainConfig:
    """How to train the world image tokenizer."""

    steps: int = field(
        default=4000,
        metadata={
            "help": "optimizer steps (world-tiny with these defaults: detector agreement 0.986 on "
            "500 held-out scenes after 4,000 steps)"
        },
    )
    batch_size: int = field(default=32, metadata={"help": "world renders per step"})
    learning_rate: float = field(
        default=3e-3, metadata={"help": "AdamW peak learning rate (warm-up, then cosine decay)"}
    )
    warmup_steps: int = field(default=20, metadata={"help": "linear warm-up steps"})
    commitment: float = field(
        default=0.25, metadata={"help": "weight of the commitment loss (beta)"}
    )
    codebook_weight: float = field(default=1.0, metadata={"help": "weight of the codebook loss"})
    foreground_weight: float = field(
        default=9.0,
        metadata={
            "help": "extra pixel-loss weight of object (non-background) pixels: renders are mostly "
            "flat background, and without it a small VQ learns object colours very slowly"
        },
    )
    foreground_margin: int = field(
        default=2,
        metadata={
            "help": "background pixels within this many pixels of an object get the object weight: "
            "otherwise painting colour into the gaps and corners around shapes is cheap, and "
            "reconstructions swell (world-tiny, 4,000 steps: detector agreement 0.894 with 0, "
            "0.986 with 2)"
        },
    )
    consistency_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the loss pulling identical pixel patches to one latent"},
    )
    consistency_from: float = field(
        default=0.3,
        metadata={
            "help": "fraction of steps before the consistency loss starts (a deep encoder collapses "
            "to one code when it applies from the first step)"
        },
    )
    restart_dead_every: int = field(
        default=50,
        metadata={
            "help": "steps between re-seeding unused and near-duplicate codes at the worst-"
            "represented encoder outputs (in the first 80 percent of steps; 0: never)"
        },
    )
    merge_duplicates: bool = field(
        default=True,
        metadata={"help": "after training, merge codes closer than DUPLICATE_DISTANCE"},
    )
    image_size: int = field(default=64, metadata={"help": "render size in pixels"})
    crop_size: int = field(
        default=32,
        metadata={
            "help": "train on random crops of this size, aligned to the token grid (the conv net is "
            "translation-equivariant; 32 px crops cost a quarter of full renders); 0: full images"
        },
    )
    full_size_fraction: float = field(
        default=0.2, metadata={"help": "fraction of final steps trained on full-size renders"}
    )
    seed: int = field(default=0, metadata={"help": "seed for weights init, data and restarts"})
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (None: leave as is)"}
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (what identifies a trained tokenizer)."""
        return asdict(self)


def images_to_pixels(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """PIL images to a [B, 3, H, W] float tensor in [-1, 1] (Janus' normalisation)."""
    arrays = []
    for image in images:
        rgb = image.convert("RGB")
        if size is not None and rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(rgb, dtype=np.float32))
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return pixels / 127.5 - 1.0


def pixels_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """A [B, 3, H, W] tensor in [-1, 1] back to PIL images."""
    array = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in array.permute(0, 2, 3, 1).cpu().numpy()]


def _encode_latents(vq: JanusVQVAE, pixels: torch.Tensor) -> torch.Tensor:
    """Encoder output projected to codebook space, as [B, H, W, D]."""
    return vq.quant_conv(vq.encoder(pixels)).permute(0, 2, 3, 1)


def quantize(
    vq: JanusVQVAE, latents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine-nearest codes of [B, H, W, D] latents: (straight-through quantised latents, codes, unit latents)."""
    unit = F.normalize(latents, dim=-1)
    codebook = F.normalize(vq.quantize.embedding.weight, dim=-1)
    codes = (unit.reshape(-1, unit.shape[-1]) @ codebook.T).argmax(dim=-1).view(unit.shape[:-1])
    chosen = codebook[codes]
    return unit + (chosen - unit).detach(), codes, unit


def _decode_latents(vq: JanusVQVAE, quantised: torch.Tensor) -> torch.Tensor:
    """Pixels from [B, H, W, D] quantised latents."""
    return vq.decoder(vq.post_quant_conv(quantised.permute(0, 3, 1, 2)))


@torch.no_grad()
def encode_images(vq: JanusVQVAE, images: Sequence[Image.Image]) -> torch.Tensor:
    """Image codes [B, H*W] in raster order, as Janus' image head predicts them."""
    pixels = images_to_pixels(images).to(vq.device, vq.dtype)
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    _, codes, _ = quantize(vq, _encode_latents(vq, pixels))
    return codes.reshape(codes.shape[0], -1)


@torch.no_grad()
def decode_codes(vq: JanusVQVAE, codes: torch.Tensor) -> list[Image.Image]:
    """PIL images from [B, H*W] codes (transformers' own decode path)."""
    return pixels_to_images(vq.decode(codes.to(vq.device)))


def _world_batch(
    rng: random.Random, batch_size: int, size: int, crop: int, stride: int
) -> torch.Tensor:
    """Random world renders, optionally cropped at token-grid offsets, channels-last (fast on CPU)."""
    pixels = images_to_pixels([render_scene(random_scene(rng), size) for _ in range(batch_size)])
    if 0 < crop < size:
        crops = []
        for image in pixels:
            top = rng.randrange(0, size - crop + 1, stride)
            left = rng.randrange(0, size - crop + 1, stride)
            crops.append(image[:, top : top + crop, left : left + crop])
        pixels = torch.stack(crops)
    return pixels.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def _normalise_codebook(vq: JanusVQVAE) -> None:
    """Keep codebook entries on the unit sphere (what Janus' decoder reads)."""
    weight = vq.quantize.embedding.weight
    weight.copy_(F.normalize(weight, dim=-1))


def patch_consistency_loss(pixels: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each token's latent to the mean latent of every token in the
    batch whose pixel patch is identical (an image token should be a function of its patch,
    not of the rest of the image: otherwise the LM must predict codes that depend on context
    it cannot see)."""
    batch, grid = unit.shape[0], unit.shape[1]
    side = pixels.shape[-1] // grid
    patches = F.unfold(pixels.float(), kernel_size=side, stride=side).transpose(1, 2)
    keys = torch.round(patches.reshape(batch * grid * grid, -1) * 64).to(torch.int32)
    _, group = torch.unique(keys, dim=0, return_inverse=True)
    flat = unit.reshape(batch * grid * grid, -1)
    sizes = torch.bincount(group).clamp_min(1).unsqueeze(1).to(flat.dtype)
    means = torch.zeros(sizes.shape[0], flat.shape[1], dtype=flat.dtype)
    means = means.index_add(0, group, flat) / sizes
    shared = (sizes[group] > 1).squeeze(1)
    if not shared.any():
        return flat.sum() * 0.0
    return (flat[shared] - means[group[shared]].detach()).square().sum(-1).mean()


DUPLICATE_DISTANCE = 0.1
"""Codes closer than this (on the unit sphere) count as one: the encoder's choice between them
is noise, which the LM would have to predict."""


def _most_used_first(usage: torch.Tensor) -> list[int]:
    """Code indices by falling usage (ties: the lower index first)."""
    return sorted(range(usage.numel()), key=lambda k: (-int(usage[k]), k))


@torch.no_grad()
def duplicate_codes(codebook: torch.Tensor, usage: torch.Tensor) -> torch.Tensor:
    """Mask of codes within `DUPLICATE_DISTANCE` of a more used code (ties: the lower index)."""
    unit = F.normalize(codebook, dim=-1)
    order = _most_used_first(usage)
    rank = torch.empty(unit.shape[0], dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(unit.shape[0])
    close = torch.cdist(unit, unit) < DUPLICATE_DISTANCE
    outranked = rank.unsqueeze(0) < rank.unsqueeze(1)  # [i, j]: j ranks before i
    return (close & outranked).any(dim=1)


@torch.no_grad()
def merge_duplicate_codes(codebook: torch.Tensor, usage: torch.Tensor) -> int:
    """Make every near-duplicate code an exact copy of the more used code it duplicates, so
    encoding resolves the tie to one index; returns how many codes were merged."""
    unit = F.normalize(codebook, dim=-1)
    merged = 0
    kept: list[int] = []
    for k in _most_used_first(usage):
        near = [j for j in kept if float((unit[k] - unit[j]).norm()) < DUPLICATE_DISTANCE]
        if near:
            codebook[k] = codebook[near[0]]
            merged += 1
        else:
            kept.append(k)
    return merged


@torch.no_grad()
def _restart_dead_codes(
    codebook: torch.Tensor,
    usage: torch.Tensor,
    unit: torch.Tensor,
    chosen: torch.Tensor,
    generator: torch.Generator,
) -> int:
    """Re-seed codes unused since the last restart (or near-duplicates of a more used one) with
    the current encoder outputs their codes represent worst (the tenth with the largest
    quantisation error): capacity goes to object edges and colours, not to the flat background
    that makes up most tokens. Returns how many codes were re-seeded."""
    dead = ((usage == 0) | duplicate_codes(codebook, usage)).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    pool = unit.reshape(-1, unit.shape[-1])
    error = (pool - chosen.reshape(pool.shape)).square().sum(-1)
    pool = pool[error.argsort(descending=True)[: max(1, pool.shape[0] // 10)]]
    picks = torch.randint(0, pool.shape[0], (dead.numel(),), generator=generator)
    noise = 0.01 * torch.randn(dead.numel(), pool.shape[1], generator=generator)
    codebook[dead] = F.normalize(pool[picks] + noise, dim=-1)
    return int(dead.numel())


def pixel_loss_weights(
    pixels: torch.Tensor, background: torch.Tensor, foreground_weight: float, margin: int
) -> torch.Tensor:
    """Per-pixel weights [B, 1, H, W] of the reconstruction loss: 1 + `foreground_weight` on
    object pixels and on background pixels within `margin` pixels of an object."""
    foreground = ((pixels - background).abs().sum(1, keepdim=True) > 0.05).float()
    if margin > 0:
        foreground = F.max_pool2d(foreground, 2 * margin + 1, stride=1, padding=margin)
    return 1.0 + foreground_weight * foreground


def train_vq(
    vq: JanusVQVAE,
    config: VQTrainConfig,
    log: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train the VQ in place on random world renders so that image tokens are easy for a small LM
    to predict and decode to scenes the world detector reads back; returns the last step's stats.

    Losses: a foreground-weighted pixel loss (MSE + L1), codebook and commitment losses on the
    unit sphere, and the patch-consistency loss ("one patch, one token": measured on the demo's
    32 px tokenizer, a pure background patch was otherwise encoded as any of ~200-400 codes,
    7-8.5 bits of noise per token the LM had to predict; with it, 8 codes and 2.4 bits).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(f"gotr1-vq-{config.seed}")
    gen = torch.Generator().manual_seed(config.seed)
    vq.train()
    vq.to(memory_format=torch.channels_last)  # ~10x faster convolutions on CPU (oneDNN)
    _normalise_codebook(vq)
    codebook = vq.quantize.embedding.weight
    optimizer = torch.optim.AdamW(vq.parameters(), lr=config.learning_rate, weight_decay=0.0)

    def schedule(step: int) -> float:
        warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
        return warm * 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    background = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
    usage = torch.zeros(vq.config.num_embeddings, dtype=torch.long)
    start = time.perf_counter()
    stats: dict[str, float] = {}
    stride = config.image_size // vq.config.num_patches  # pixels per token
    full_from = int(config.steps * (1 - config.full_size_fraction))
    bar = tqdm(range(config.steps), desc="image tokenizer", disable=not progress)
    for step in bar:
        crop = config.crop_size if step < full_from else 0
        pixels = _world_batch(rng, config.batch_size, config.image_size, crop, stride)
        weight = pixel_loss_weights(
            pixels, background, config.foreground_weight, config.foreground_margin
        )
        quantised, codes, unit = quantize(vq, _encode_latents(vq, pixels))
        error = _decode_latents(vq, quantised) - pixels
        reconstruction_loss = (weight * (error.square() + error.abs())).mean() / weight.mean()
        consistent = config.consistency_weight and step >= config.consistency_from * config.steps
        consistency_loss = patch_consistency_loss(pixels, unit) if consistent else torch.zeros(())
        chosen = F.normalize(codebook, dim=-1)[codes]
        codebook_loss = F.mse_loss(chosen, unit.detach())
        commitment_loss = F.mse_loss(unit, chosen.detach())
        loss = (
            reconstruction_loss
            + config.codebook_weight * codebook_loss
            + config.commitment * commitment_loss
            + config.consistency_weight * consistency_loss
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        _normalise_codebook(vq)
        usage += torch.bincount(codes.flatten(), minlength=usage.numel())
        restarted = 0
        if config.restart_dead_every and (step + 1) % config.restart_dead_every == 0:
            if step + 1 < 0.8 * config.steps:  # let the last stretch settle
                restarted = _restart_dead_codes(
                    codebook, usage, unit.detach(), chosen.detach(), gen
                )
            usage.zero_()
        stats = {
            "step": step + 1,
            "loss": float(loss.detach()),
            "reconstruction_loss": float(reconstruction_loss.detach()),
            "codebook_loss": float(codebook_loss.detach()),
            "commitment_loss": float(commitment_loss.detach()),
            "consistency_loss": float(consistency_loss.detach()),
            "codes_in_batch": int(codes.unique().numel()),
            "restarted_codes": restarted,
            "seconds": time.perf_counter() - start,
        }
        bar.set_postfix(loss=f"{stats['loss']:.4f}", codes=stats["codes_in_batch"])
        if log is not None:
            log(stats)
    vq.eval()
    if config.merge_duplicates:
        with torch.no_grad():
            pixels = _world_batch(rng, 256, config.image_size, 0, stride)
            _, codes, _ = quantize(vq, _encode_latents(vq, pixels))
            final_usage = torch.bincount(codes.flatten(), minlength=codebook.shape[0])
            stats["merged_codes"] = merge_duplicate_codes(codebook, final_usage)
    return stats


@torch.no_grad()
def evaluate_vq(
    vq: JanusVQVAE, scenes: int = 500, seed: int = 1, image_size: int = 64
) -> dict[str, float]:
    """Detector agreement on reconstructions of held-out random scenes, codebook usage and PSNR."""
    rng = random.Random(f"gotr1-vq-eval-{seed}")
    vq.eval()
    found = objects = spurious = 0
    codes_seen: set[int] = set()
    squared_error = 0.0
    for first in range(0, scenes, 50):
        batch = [random_scene(rng) for _ in range(min(50, scenes - first))]
        images = [render_scene(s, image_size) for s in batch]
        codes = encode_images(vq, images)
        codes_seen.update(codes.flatten().tolist())
        reconstructions = decode_codes(vq, codes)
        for scene, image, reconstruction in zip(batch, images, reconstructions, strict=True):
            hits, extra, _ = match_objects(scene, detect(reconstruction), 0.7)
            found, objects, spurious = found + hits, objects + len(scene.objects), spurious + extra
            difference = np.asarray(image, np.float32) - np.asarray(reconstruction, np.float32)
            squared_error += float((difference**2).mean())
    mse = squared_error / scenes
    return {
        "scenes": scenes,
        "objects": objects,
        "detector_agreement": found / max(objects, 1),
        "spurious_detections": spurious,
        "codebook_used": len(codes_seen),
        "codebook_size": int(vq.config.num_embeddings),
        "psnr_db": 10 * math.log10(255.0**2 / max(mse, 1e-9)),
    }


def save_report(
    path: Path, train_stats: dict[str, float], eval_stats: dict[str, float], config: VQTrainConfig
) -> None:
    """Write what training measured next to the saved tokenizer."""
    path.write_text(
        json.dumps({"config": asdict(config), "train": train_stats, "eval": eval_stats}, indent=2)
        + "\n"
    )
