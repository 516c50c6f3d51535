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

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.models.janus.modeling_janus import JanusVQVAE

from gotr1.world import random_scene, render_scene
from gotr1.world.detector import detect
from gotr1.world.detector_check import match_objects


@dataclass
class VQTrainConfig:
    """How to train the world image tokenizer."""

    steps: int = field(default=1200, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "world renders per step"})
    learning_rate: float = field(
        default=2e-3, metadata={"help": "AdamW peak learning rate (cosine decay)"}
    )
    commitment: float = field(
        default=0.25, metadata={"help": "weight of the commitment loss (beta)"}
    )
    codebook_weight: float = field(default=1.0, metadata={"help": "weight of the codebook loss"})
    restart_dead_every: int = field(
        default=100,
        metadata={"help": "steps between re-seeding unused codes from encoder outputs (0: never)"},
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


@torch.no_grad()
def _restart_dead_codes(
    vq: JanusVQVAE, usage: torch.Tensor, unit: torch.Tensor, gen: torch.Generator
) -> int:
    """Re-seed codes unused since the last restart with random current encoder outputs; returns how many."""
    dead = (usage == 0).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    pool = unit.reshape(-1, unit.shape[-1])
    picks = torch.randint(0, pool.shape[0], (dead.numel(),), generator=gen)
    noise = 0.01 * torch.randn(dead.numel(), pool.shape[1], generator=gen)
    vq.quantize.embedding.weight[dead] = F.normalize(pool[picks] + noise, dim=-1)
    return int(dead.numel())


def train_vq(
    vq: JanusVQVAE,
    config: VQTrainConfig,
    log: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train the VQ on random world renders (reconstruction + codebook + commitment losses); returns final stats."""
    from tqdm.auto import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(f"gotr1-vq-{config.seed}")
    gen = torch.Generator().manual_seed(config.seed)
    vq.train()
    vq.to(memory_format=torch.channels_last)  # ~10x faster convolutions on CPU (oneDNN)
    _normalise_codebook(vq)
    optimizer = torch.optim.AdamW(vq.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0)))
    )
    usage = torch.zeros(vq.config.num_embeddings, dtype=torch.long)
    start = time.perf_counter()
    stats: dict[str, float] = {}
    stride = config.image_size // vq.config.num_patches  # pixels per token
    full_from = int(config.steps * (1 - config.full_size_fraction))
    bar = tqdm(range(config.steps), desc="image tokenizer", disable=not progress)
    for step in bar:
        crop = config.crop_size if step < full_from else 0
        pixels = _world_batch(rng, config.batch_size, config.image_size, crop, stride)
        latents = _encode_latents(vq, pixels)
        quantised, codes, unit = quantize(vq, latents)
        reconstruction = _decode_latents(vq, quantised)
        chosen = F.normalize(vq.quantize.embedding.weight, dim=-1)[codes]
        reconstruction_loss = F.mse_loss(reconstruction, pixels) + F.l1_loss(reconstruction, pixels)
        codebook_loss = F.mse_loss(chosen, unit.detach())
        commitment_loss = F.mse_loss(unit, chosen.detach())
        loss = (
            reconstruction_loss
            + config.codebook_weight * codebook_loss
            + config.commitment * commitment_loss
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        _normalise_codebook(vq)
        usage += torch.bincount(codes.flatten(), minlength=usage.numel())
        restarted = 0
        if config.restart_dead_every and (step + 1) % config.restart_dead_every == 0:
            if step + 1 < 0.8 * config.steps:  # let the last stretch settle
                restarted = _restart_dead_codes(vq, usage, unit.detach(), gen)
            usage.zero_()
        stats = {
            "step": step + 1,
            "loss": float(loss.detach()),
            "reconstruction_loss": float(reconstruction_loss.detach()),
            "codebook_loss": float(codebook_loss.detach()),
            "commitment_loss": float(commitment_loss.detach()),
            "codes_in_batch": int(codes.unique().numel()),
            "restarted_codes": restarted,
            "seconds": time.perf_counter() - start,
        }
        bar.set_postfix(loss=f"{stats['loss']:.4f}", codes=stats["codes_in_batch"])
        if log is not None:
            log(stats)
    vq.eval()
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
