"""SFT's loss: cross-entropy of the chain tokens and the image tokens under teacher forcing.

It lives apart from `gotr1.train.sft` so that `gotr1.train.runtime`, whose training module computes
it, and the SFT loop can both import it without importing each other.
"""

from __future__ import annotations

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
) -> dict[str, torch.Tensor]:
    """Cross-entropy on chain tokens (text head) and image tokens (image head) of a batch.

    Returns ``loss`` (the weighted sum, differentiable), ``chain_loss`` and ``image_loss`` (token
    means) and the token counts. The text block is left-padded, so every row's <begin_of_image> is
    the last text column and hidden state ``L - 1 + k`` predicts image code ``k``.
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
    chain_loss = F.cross_entropy(chain_logits, targets[labelled], reduction="sum") / max(
        chain_tokens, 1
    )

    # Image: the hidden state at <begin_of_image> predicts code 0, at code k-1 predicts code k.
    image_logits = head_logits(parts.image_head, hidden[:, length - 1 :]).float()
    image_loss = F.cross_entropy(image_logits.flatten(0, 1), image_ids.flatten())

    loss = chain_weight * chain_loss + image_weight * image_loss
    return {
        "loss": loss,
        "chain_loss": chain_loss.detach(),
        "image_loss": image_loss.detach(),
        "chain_tokens": torch.tensor(float(chain_tokens)),
        "image_tokens": torch.tensor(float(image_ids.numel())),
    }
