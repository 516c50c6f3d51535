"""Teacher-forced log-probs of rollouts: the same distributions the sampler drew from.

For every row the sequence ``[prompt][chain ... <begin_of_image>][image tokens]`` is run through
the model once (twice with guidance: the unconditional row blanks prompt and chain to pad exactly
as the sampler did; three times with two-condition guidance: the prompt-only row blanks the chain
only). Chain tokens are scored with the text head, image tokens with the image head:

    guided:      log_softmax(guided_logits(c, u, p) / T_image)[token]   (the GRPO ratio is exact)
    conditional: log_softmax(c / T_image)[token]                         (the paper-era shortcut)

with c/u/p the conditional/unconditional/prompt-only image logits, mixed by the sampler's own
`guided_logits` with the rollout's cfg_weight (and plan_cfg_weight): u + w * (c - u), or
u + w_prompt * (p - u) + w_plan * (c - p). Gradients flow through every branch when called under
grad mode. Top-p is not applied here (the recorded
sampling log-probs include it; with top_p = 1 the two agree to float precision).

Memory: logits are never formed for a whole batch: rows go in micro-batches, and the heads run on
chunks of positions sized so that one chunk holds at most `logits_chunk_elements` floats. Under
grad mode each chunk is checkpointed, so only hidden states are kept for the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint

from gotr1.policy.rollout import (
    JanusParts,
    guided_logits,
    janus_parts,
    positions_from_mask,
    prompt_only_ids,
    real_bounds,
    unconditional_ids,
)

if TYPE_CHECKING:
    from gotr1.policy.rollout import Rollouts

IMAGE_LOGPROB_MODES = ("guided", "conditional")
TEXT_WIDTH_MULTIPLE = 16
"""The text block of a micro-batch is left-padded to a multiple of this many columns: shapes then
repeat from step to step, and CPU bf16 kernels are built once per shape (a new shape cost the demo
model's forward + backward 1.65x a seen one, measured)."""


@dataclass
class TokenLogprobs:
    """Per-token log-probs (and optionally entropies) of a rollout batch; 0 where masked."""

    chain: torch.Tensor  # [B, C] float32
    image: torch.Tensor  # [B, K] float32
    chain_entropy: torch.Tensor | None = None  # [B, C]
    image_entropy: torch.Tensor | None = None  # [B, K]


def head_logits(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """`head(hidden)` for hidden states [..., D], computed on one 2-D [positions, D] matrix.

    A head's linear layers fold a contiguous [b, t, D] input into one matrix product, but not a
    strided slice of one (a chunk of positions, the chain's columns): PyTorch then multiplies
    batch by batch against the weight expanded over the b rows, and on CPU in bf16 that expansion
    is copied, b copies of the weight per call (1.56 GiB for Janus-Pro-1B's 102,400 x 2048 text
    head at 4 rows, in the forward, the recomputation and the backward alike; measured with
    `benchmarks/grpo_memory_probe.py`). Reshaping copies the hidden states instead (b x t x D).
    """
    flat = hidden.reshape(-1, hidden.shape[-1])
    return head(flat).view(*hidden.shape[:-1], -1)


def _head_logprobs(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    uncond_hidden: torch.Tensor | None,
    cfg_weight: float,
    with_entropy: bool,
    prompt_hidden: torch.Tensor | None = None,
    plan_cfg_weight: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of `targets` [b, t] under head(hidden [b, t, D]), mixed by `guided_logits` with
    the unconditional and prompt-only branches given (none: the head's own logits)."""
    logits = head_logits(head, hidden).float()
    uncond = None if uncond_hidden is None else head_logits(head, uncond_hidden).float()
    prompt_only = None if prompt_hidden is None else head_logits(head, prompt_hidden).float()
    logits = guided_logits(logits, uncond, prompt_only, cfg_weight, plan_cfg_weight)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    token_logp = logp.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(dim=-1) if with_entropy else torch.zeros_like(token_logp)
    return token_logp, entropy


def chunked_head_logprobs(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    uncond_hidden: torch.Tensor | None = None,
    cfg_weight: float = 1.0,
    with_entropy: bool = False,
    logits_chunk_elements: int = 1 << 24,
    prompt_hidden: torch.Tensor | None = None,
    plan_cfg_weight: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_head_logprobs` over chunks of positions, each checkpointed when gradients are on."""
    rows, length = targets.shape
    with torch.no_grad():
        vocab = head_logits(head, hidden[:1, :1]).shape[-1] if length else 1
    chunk = max(1, logits_chunk_elements // max(1, rows * vocab))
    recompute = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    logps, entropies = [], []
    for start in range(0, length, chunk):
        stop = min(length, start + chunk)
        args = (
            head,
            hidden[:, start:stop],
            targets[:, start:stop],
            temperature,
            None if uncond_hidden is None else uncond_hidden[:, start:stop],
            cfg_weight,
            with_entropy,
            None if prompt_hidden is None else prompt_hidden[:, start:stop],
            plan_cfg_weight,
        )
        if recompute:
            logp, entropy = checkpoint(_head_logprobs, *args, use_reentrant=False)
        else:
            logp, entropy = _head_logprobs(*args)
        logps.append(logp)
        entropies.append(entropy)
    if not logps:
        empty = hidden.new_zeros(rows, 0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps, dim=1), torch.cat(entropies, dim=1)


def teacher_forced_hidden(
    parts: JanusParts,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    image_ids: torch.Tensor,
) -> torch.Tensor:
    """Final hidden states of ``[text][image codes except the last]`` (transformers' forward): the
    one teacher-forced pass that SFT's losses and GRPO's log-probs both read."""
    embeds = torch.cat([parts.text_embed(text_ids), parts.image_embed(image_ids[:, :-1])], dim=1)
    mask = torch.cat([text_mask, text_mask.new_ones(image_ids.shape[0], image_ids.shape[1] - 1)], 1)
    output = parts.language_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions_from_mask(mask),
        use_cache=False,
    )
    return output.last_hidden_state


def _image_hidden(hidden: torch.Tensor, text_mask: torch.Tensor, num_image: int) -> torch.Tensor:
    """The hidden states that predict the image tokens: each row's <begin_of_image>, then codes."""
    text_len = text_mask.shape[1]
    _, last_real = real_bounds(text_mask)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    boi = hidden[rows, last_real][:, None]
    return torch.cat([boi, hidden[:, text_len : text_len + num_image - 1]], dim=1)


def token_logprobs(
    model: torch.nn.Module,
    rollouts: Rollouts,
    pad_id: int,
    bos_id: int | None,
    image_logprob: str = "guided",
    micro_batch_size: int | None = None,
    with_entropy: bool = False,
    logits_chunk_elements: int = 1 << 24,
) -> TokenLogprobs:
    """Teacher-forced log-probs of the chain tokens (text head) and image tokens (image head).

    `pad_id`/`bos_id` build the unconditional (and prompt-only) rows as the sampler did.
    `image_logprob` is "guided" (CFG-mixed, the sampling distribution) or "conditional".
    Differentiable under grad mode. Temperatures and the guidance weights come from
    `rollouts.sampling` (temperature 0 = greedy rollouts are scored at temperature 1).
    """
    if image_logprob not in IMAGE_LOGPROB_MODES:
        raise ValueError(
            f"image_logprob must be one of {IMAGE_LOGPROB_MODES}, got {image_logprob!r}"
        )
    parts = janus_parts(model)
    device = parts.device
    sampling = rollouts.sampling
    text_temperature = sampling.text_temperature or 1.0
    image_temperature = sampling.image_temperature or 1.0
    guided = image_logprob == "guided" and sampling.guided
    plan_guided = image_logprob == "guided" and sampling.plan_guided
    rows = len(rollouts)
    step = micro_batch_size or rows
    if step < 1:
        raise ValueError("micro_batch_size must be >= 1")

    chain_parts, image_parts, chain_entropy_parts, image_entropy_parts = [], [], [], []
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        prompt_ids = rollouts.prompt_ids[start:stop].to(device)
        prompt_mask = rollouts.prompt_mask[start:stop].to(device)
        chain_ids = rollouts.chain_ids[start:stop].to(device)
        chain_mask = rollouts.chain_mask[start:stop].to(device)
        image_ids = rollouts.image_ids[start:stop].to(device)
        # Trim the columns no row of this micro-batch uses (positions come from the masks).
        first = int(prompt_mask.long().argmax(dim=1).min()) if prompt_mask.any() else 0
        prompt_ids, prompt_mask = prompt_ids[:, first:], prompt_mask[:, first:]
        width = int(chain_mask.sum(dim=1).max())
        if width < 1:
            raise ValueError("every rollout row needs at least its <begin_of_image> chain token")
        chain_ids, chain_mask = chain_ids[:, :width], chain_mask[:, :width]
        extra = -(prompt_ids.shape[1] + width) % TEXT_WIDTH_MULTIPLE
        prompt_ids = torch.nn.functional.pad(prompt_ids, (extra, 0), value=pad_id)
        prompt_mask = torch.nn.functional.pad(prompt_mask, (extra, 0), value=0)
        prompt_len = prompt_ids.shape[1]

        text_ids = torch.cat([prompt_ids, chain_ids], dim=1)
        text_mask = torch.cat([prompt_mask, chain_mask], dim=1)
        hidden = teacher_forced_hidden(parts, text_ids, text_mask, image_ids)
        chain_hidden = hidden[:, prompt_len - 1 : prompt_len + width - 1]
        chain_logp, chain_entropy = chunked_head_logprobs(
            parts.lm_head,
            chain_hidden,
            chain_ids,
            text_temperature,
            with_entropy=with_entropy,
            logits_chunk_elements=logits_chunk_elements,
        )
        keep = chain_mask.bool()
        chain_logp = torch.where(keep, chain_logp, 0.0)
        chain_entropy = torch.where(keep, chain_entropy, 0.0)

        num_image = image_ids.shape[1]
        image_hidden = _image_hidden(hidden, text_mask, num_image)
        del hidden
        uncond_image_hidden = prompt_image_hidden = None
        if plan_guided:
            chain_blanked = prompt_only_ids(text_ids, text_mask, prompt_len, pad_id)
            blanked_hidden = teacher_forced_hidden(parts, chain_blanked, text_mask, image_ids)
            prompt_image_hidden = _image_hidden(blanked_hidden, text_mask, num_image)
            del blanked_hidden
        if guided:
            uncond_ids = unconditional_ids(text_ids, text_mask, pad_id, bos_id)
            uncond_hidden = teacher_forced_hidden(parts, uncond_ids, text_mask, image_ids)
            uncond_image_hidden = _image_hidden(uncond_hidden, text_mask, num_image)
            del uncond_hidden
        image_logp, image_entropy = chunked_head_logprobs(
            parts.image_head,
            image_hidden,
            image_ids,
            image_temperature,
            uncond_image_hidden,
            sampling.cfg_weight,
            with_entropy,
            logits_chunk_elements,
            prompt_image_hidden,
            sampling.plan_cfg_weight,
        )
        full_width = rollouts.chain_ids.shape[1]
        chain_parts.append(torch.nn.functional.pad(chain_logp, (0, full_width - width)))
        chain_entropy_parts.append(torch.nn.functional.pad(chain_entropy, (0, full_width - width)))
        image_parts.append(image_logp)
        image_entropy_parts.append(image_entropy)

    return TokenLogprobs(
        chain=torch.cat(chain_parts),
        image=torch.cat(image_parts),
        chain_entropy=torch.cat(chain_entropy_parts) if with_entropy else None,
        image_entropy=torch.cat(image_entropy_parts) if with_entropy else None,
    )
