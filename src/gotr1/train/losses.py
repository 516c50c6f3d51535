"""SFT's loss: cross-entropy of the chain tokens and the image tokens under teacher forcing.

It lives apart from `gotr1.train.sft` so that `gotr1.train.runtime`, whose training module computes
it, and the SFT loop can both import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from gotr1.policy.logprobs import head_logits, teacher_forced_hidden
from gotr1.policy.rollout import janus_parts

if TYPE_CHECKING:
    from gotr1.train.data import SFTBatch


def sft_losses(
    model: torch.nn.Module,
    batch: SFTBatch,
    chain_weight: float = 1.0,
    image_weight: float = 1.0,
    token_totals: tuple[float, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Cross-entropy on chain tokens (text head) and image tokens (image head) of a batch.

    Returns ``loss`` (the weighted sum, differentiable), ``chain_loss`` and ``image_loss`` (token
    means) and the token counts. The text block is left-padded, so every row's <begin_of_image> is
    the last text column and hidden state ``L - 1 + k`` predicts image code ``k``.

    ``token_totals`` (chain tokens, image tokens of a whole batch) divides the sums by the whole
    batch's counts instead of this batch's: for the parts of a batch (`SFTBatch.length_groups`),
    whose losses and gradients then add up to the whole batch's.
    """
    parts = janus_parts(model)
    image_ids = batch.image_ids
    length = batch.text_ids.shape[1]
    hidden = teacher_forced_hidden(parts, batch.text_ids, batch.text_mask, image_ids)

    # Chain: the hidden state at t predicts text token t + 1; only labelled positions hit the head.
    targets = batch.labels[:, 1:]
    labelled = targets != -100
    chain_logits = parts.lm_head(hidden[:, : length - 1][labelled]).float()
    chain_tokens = int(labelled.sum())
    chain_total, image_total = token_totals or (chain_tokens, image_ids.numel())
    chain_loss = F.cross_entropy(chain_logits, targets[labelled], reduction="sum") / max(
        chain_total, 1
    )

    # Image: the hidden state at <begin_of_image> predicts code 0, at code k-1 predicts code k.
    image_logits = head_logits(parts.image_head, hidden[:, length - 1 :]).float()
    image_loss = F.cross_entropy(
        image_logits.flatten(0, 1), image_ids.flatten(), reduction="sum"
    ) / max(image_total, 1)

    loss = chain_weight * chain_loss + image_weight * image_loss
    return {
        "loss": loss,
        "chain_loss": chain_loss.detach(),
        "image_loss": image_loss.detach(),
        "chain_tokens": torch.tensor(float(chain_tokens)),
        "image_tokens": torch.tensor(float(image_ids.numel())),
    }


SFTGroupStep = Callable[["SFTBatch", tuple[float, float], bool], dict[str, torch.Tensor]]


def sft_group_losses(batch: SFTBatch, groups: int, step: SFTGroupStep) -> dict[str, float]:
    """Run one SFT batch as `groups` length groups (`SFTBatch.length_groups`) and add up their
    losses: the whole batch's gradient with less padding.

    ``step(part, token_totals, last)`` runs the forward (`sft_losses` with ``token_totals``) and
    backward of one part and returns its losses; ``last`` is True for the final part, the one
    whose backward may synchronise gradients across processes. Returns the whole batch's
    ``loss``, ``chain_loss``, ``image_loss`` and token counts as floats.
    """
    totals = (float((batch.labels[:, 1:] != -100).sum()), float(batch.image_ids.numel()))
    parts = batch.length_groups(groups)
    sums = dict.fromkeys(("loss", "chain_loss", "image_loss", "chain_tokens", "image_tokens"), 0.0)
    for index, part in enumerate(parts):
        losses = step(part, totals, index == len(parts) - 1)
        for key in sums:
            sums[key] += float(losses[key].detach())
    return sums
