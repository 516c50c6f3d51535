"""Rollouts: sample a GoT chain, then an image, for every prompt — the two-stage sampler.

Reading order (top to bottom):
  1. `SamplingConfig` (from `gotr1.policy.sampling`, which owns its checks) and `Rollouts`, the
     batch object handed to rewards and training (verl style).
  2. `JanusParts`: the pieces of a `JanusForConditionalGeneration` (possibly inside a peft model).
  3. `KVCache` and `transformer_forward`: a preallocated (static) KV cache and one forward pass of
     the Llama decoder through it, with explicit slots, position ids and key masks.
  4. `sample_from_logits`: temperature, optional top-p, Gumbel-max sampling on the device.
  5. Stage 1, `sample_chains`: prompt prefix computed once per prompt, shared by its N samples,
     then the chains until `<begin_of_image>` (or `max_chain_tokens`, then forced and flagged).
  6. Stage 2, `sample_image_tokens`: the conditional rows reuse the stage-1 KV cache; the
     unconditional rows (prompt and chain blanked to pad) all read the same [BOS, pad, ...]
     prefix, computed once and shared; then K image tokens with classifier-free guidance, the
     CFG pair in one batch, sampled on the device with no host sync per token. Two-condition
     guidance (`plan_cfg_weight`) adds a prompt-only row per sample (chain blanked), mixed by
     `guided_logits`.
  7. `decode_images` and `rollout`, which ties it all together.

Layout of one row in the cache: ``[left pad][prompt][chain ... <begin_of_image>][holes][image]``.
Rows finish their chains at different steps; the slots after a row's `<begin_of_image>` are holes
(masked keys). Position ids always count real tokens only, so a padded row computes exactly what
the same row computes alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from gotr1.chain import BEGIN_OF_IMAGE, END_OF_IMAGE, Chain, parse_chain
from gotr1.policy.sampling import SamplingConfig
from gotr1.policy.tokenizer import encode_prompt

# ----------------------------------------------------------------------------------------------
# 1. The sampling settings and the batch object
# ----------------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    """One batch of sampled chains and images; B = num_prompts * num_generations rows.

    Rows of a group (same prompt) are contiguous. Tensors: ids/masks long/bool-like ints as in
    ROLLOUTS.md; log-probs float32 and 0 where masked. See notes/ROLLOUTS.md for the contract.
    """

    prompts: list[str]
    group_ids: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    chain_ids: torch.Tensor
    chain_mask: torch.Tensor
    chain_logprobs: torch.Tensor
    image_ids: torch.Tensor
    image_logprobs: torch.Tensor
    truncated: torch.Tensor
    chain_texts: list[str]
    chains: list[Chain]
    images: list[Image.Image]
    sampling: SamplingConfig

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_groups(self) -> int:
        """Number of distinct prompt groups in this batch."""
        return int(torch.unique(self.group_ids).numel())

    def to(self, device: torch.device | str) -> Rollouts:
        """A copy with every tensor on `device` (lists and images are shared)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def select(self, indices: Sequence[int] | torch.Tensor) -> Rollouts:
        """The rows `indices` (in that order), e.g. to drop a group or form a micro-batch.

        Group ids are renumbered densely (0..G-1 in order of first appearance) so they stay valid
        indices for per-group scatter operations.
        """
        index = torch.as_tensor(indices, dtype=torch.long).flatten()
        rows = index.tolist()
        if any(r < -len(self) or r >= len(self) for r in rows):
            raise IndexError(f"Rollouts.select: index out of range for {len(self)} rows")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                values[f.name] = value[index.to(value.device)]
            elif isinstance(value, list):
                values[f.name] = [value[r] for r in rows]
            else:
                values[f.name] = value
        first_seen: dict[int, int] = {}
        groups = [first_seen.setdefault(int(g), len(first_seen)) for g in values["group_ids"]]
        values["group_ids"] = torch.tensor(groups, dtype=torch.long, device=self.group_ids.device)
        return Rollouts(**values)


# ----------------------------------------------------------------------------------------------
# 2. The pieces of a Janus model
# ----------------------------------------------------------------------------------------------


@dataclass
class JanusParts:
    """Handles on the modules the sampler and the log-prob code call, peft wrappers removed."""

    janus: Any  # JanusForConditionalGeneration (with LoRA layers injected, if any)
    language_model: Any  # LlamaModel: embed_tokens, layers, norm, rotary_emb
    lm_head: torch.nn.Module  # text head (tied to the input embeddings or not)
    image_head: torch.nn.Module  # generation_head: hidden -> image-code logits

    def text_embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of text token ids."""
        return self.language_model.embed_tokens(ids)

    def image_embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Input embeddings of image codes (generation_embeddings + generation_aligner)."""
        return self.janus.prepare_embeddings_for_image_generation(codes)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image (576 for Janus-Pro, 64 for world-tiny)."""
        height, width = self.janus.model.vqmodel.quantize.quant_state_dims
        return int(height) * int(width)

    @property
    def device(self) -> torch.device:
        """Device of the decoder (where caches and sampling live)."""
        return self.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the decoder's activations and KV cache."""
        return self.language_model.embed_tokens.weight.dtype


def janus_parts(model: torch.nn.Module) -> JanusParts:
    """Find the Janus pieces in `model` (a JanusForConditionalGeneration or a peft model of one)."""
    janus = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(janus, "model", None)
    needed = ("language_model", "generation_head", "generation_embeddings", "vqmodel")
    if inner is None or not all(hasattr(inner, name) for name in needed):
        raise TypeError(
            f"expected a JanusForConditionalGeneration (or a peft model of one), got "
            f"{type(model).__name__}"
        )
    language_model = inner.language_model
    for layer in language_model.layers:
        attention = layer.self_attn
        if not all(hasattr(attention, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise NotImplementedError(
                f"the rollout engine supports Llama-style decoders; got {type(layer).__name__}"
            )
    return JanusParts(janus, language_model, janus.lm_head, inner.generation_head)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (left pad and holes do not advance them)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def real_bounds(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first and of the last real (mask 1) slot of each row of `mask` [R, S]."""
    real = mask.bool().int()
    return real.argmax(dim=1), mask.shape[1] - 1 - real.flip(1).argmax(dim=1)


def _blank_before_last(
    ids: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, pad_id: int
) -> torch.Tensor:
    """`ids` with every real token from column `start` [R] up to (not including) the row's last
    real token replaced by pad; the guidance rows are built this way."""
    _, last = real_bounds(mask)
    columns = torch.arange(ids.shape[1], device=ids.device)[None]
    blank = mask.bool() & (columns >= start[:, None]) & (columns < last[:, None])
    return ids.masked_fill(blank, pad_id)


def unconditional_ids(
    ids: torch.Tensor, mask: torch.Tensor, pad_id: int, bos_id: int | None
) -> torch.Tensor:
    """The CFG unconditional row: every real token between BOS and <begin_of_image> becomes pad.

    `ids`/`mask` hold prompt and chain (a row's last real token is its <begin_of_image>). The
    first real token is kept if it is BOS, the last real token is kept; everything else real is
    pad (the chain is blanked too, PAPER.md). The attention mask is unchanged.
    """
    rows = torch.arange(ids.shape[0], device=ids.device)
    first, _ = real_bounds(mask)
    start = first
    if bos_id is not None:
        start = first + (ids[rows, first] == bos_id).long()
    return _blank_before_last(ids, mask, start, pad_id)


def prompt_only_ids(
    ids: torch.Tensor, mask: torch.Tensor, chain_start: torch.Tensor | int, pad_id: int
) -> torch.Tensor:
    """The prompt-only row of two-condition guidance: the chain blanked, the prompt kept.

    `ids`/`mask` as for `unconditional_ids`; `chain_start` is the column of each row's first
    chain token ([R], or one column for all rows). Every real token from there up to the row's
    <begin_of_image> (kept, like BOS and the whole prompt) becomes pad, as the unconditional row
    blanks it; the attention mask is unchanged.
    """
    start = torch.as_tensor(chain_start, device=ids.device).expand(ids.shape[0])
    return _blank_before_last(ids, mask, start, pad_id)


# ----------------------------------------------------------------------------------------------
# 3. Static KV cache and one decoder pass through it
# ----------------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Preallocated keys and values of every layer, plus a key mask.

    keys[layer] is [rows, kv_heads, head_dim, slots] (stored transposed, so a decode step reads
    them as one matrix-vector product per head), values[layer] is [rows, kv_heads, slots,
    head_dim], `valid` [rows, slots] marks slots holding a real token. `prefix` is an optional
    one-row cache that every row sees before its own slots, row r its first `prefix_len[r]` prefix
    slots: the unconditional rows of CFG all share their [BOS, pad, pad, ...] prefix this way.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor
    prefix: KVCache | None = None
    prefix_len: torch.Tensor | None = None

    @classmethod
    def allocate(
        cls,
        parts: JanusParts,
        rows: int,
        slots: int,
        prefix: KVCache | None = None,
        prefix_len: torch.Tensor | None = None,
    ) -> KVCache:
        """Zero-filled cache for `rows` sequences of up to `slots` tokens (model dtype/device)."""
        lm = parts.language_model
        kv_heads, head_dim = lm.config.num_key_value_heads, lm.layers[0].self_attn.head_dim
        like = dict(dtype=parts.dtype, device=parts.device)
        layers = range(len(lm.layers))
        return cls(
            keys=[torch.zeros(rows, kv_heads, head_dim, slots, **like) for _ in layers],
            values=[torch.zeros(rows, kv_heads, slots, head_dim, **like) for _ in layers],
            valid=torch.zeros(rows, slots, dtype=torch.bool, device=parts.device),
            prefix=prefix,
            prefix_len=prefix_len,
        )

    @property
    def rows(self) -> int:
        return self.valid.shape[0]

    def first_slots(self, slots: int) -> KVCache:
        """A view of the first `slots` slots (same storage, same prefix)."""
        return dataclasses.replace(
            self,
            keys=[k[..., :slots] for k in self.keys],
            values=[v[:, :, :slots] for v in self.values],
            valid=self.valid[:, :slots],
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the cache (and of its prefix), e.g. to mark them static for graphs."""
        own = [*self.keys, *self.values, self.valid]
        return own + (self.prefix.tensors() if self.prefix is not None else [])

    @property
    def slots(self) -> int:
        return self.valid.shape[1]


@dataclass
class Block:
    """Consecutive rows of one forward pass that share a cache.

    The new tokens go to cache `slots` [T]; `valid` [rows, T] marks the real ones. Attention reads
    the first `span` slots (an eager speed-up; None reads all of them: fixed shapes for graphs).
    """

    cache: KVCache
    slots: torch.Tensor
    valid: torch.Tensor
    span: int | None = None


def transformer_forward(
    parts: JanusParts, embeds: torch.Tensor, positions: torch.Tensor, blocks: Sequence[Block]
) -> torch.Tensor:
    """Run the Llama decoder on `embeds` [R, T, D] at rotary `positions` [R, T]; final-normed hidden.

    The rows are split into `blocks` (in order), each writing to and attending over its own
    cache; projections and MLPs run on all rows at once. A query sees the valid keys at slots up
    to its own, plus itself (so a padding query never has an empty row).
    """
    lm = parts.language_model
    rows, length = embeds.shape[0], embeds.shape[1]
    masks = [_attention_bias(block, embeds.dtype) for block in blocks]
    cos, sin = lm.rotary_emb(embeds, positions)
    hidden = embeds
    for index, layer in enumerate(lm.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        q = attn.q_proj(x).view(rows, length, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(rows, length, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(rows, length, -1, attn.head_dim).transpose(1, 2)
        q, k = _apply_rotary(q, k, cos, sin)
        outs, start = [], 0
        for block, bias in zip(blocks, masks, strict=True):
            stop = start + block.cache.rows
            part = slice(start, stop)
            outs.append(_attend(block, index, q[part], k[part], v[part], bias, attn.scaling))
            start = stop
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(rows, length, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return lm.norm(hidden)


def _attention_bias(block: Block, dtype: torch.dtype) -> torch.Tensor:
    """Record the block's new tokens in its key mask; return the additive attention bias.

    [rows, 1, T, keys]: 0 where a query may look, -inf elsewhere. The keys are the shared prefix
    slots (if any, the first `prefix_len` visible to each row) followed by the block's own slots.
    """
    cache = block.cache
    cache.valid.index_copy_(1, block.slots, block.valid)
    span = block.span or cache.slots
    key_slots = torch.arange(span, device=cache.valid.device)
    causal = key_slots[None, :] <= block.slots[:, None]  # [T, span]
    itself = key_slots[None, :] == block.slots[:, None]
    allowed = (cache.valid[:, None, None, :span] & causal) | itself
    if cache.prefix is not None:
        prefix_slots = torch.arange(cache.prefix.slots, device=cache.valid.device)
        seen = prefix_slots[None, :] < cache.prefix_len[:, None]  # [rows, P]
        allowed = torch.cat(
            [seen[:, None, None, :].expand(-1, 1, len(block.slots), -1), allowed], -1
        )
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf")
    )


def _attend(
    block: Block,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Write k/v [rows, kv_heads, T, d] into the block's cache, attend with q [rows, heads, T, d].

    Several tokens per row (prefill) use PyTorch's fused attention. One token per row (decode)
    uses two batched matmuls against the transposed keys, plus the shared prefix if any; grouped
    query heads share their key/value head (head h reads kv head h // (heads / kv_heads)).
    """
    cache = block.cache
    keys, values = cache.keys[layer], cache.values[layer]
    keys.index_copy_(3, block.slots, k.transpose(-1, -2).to(keys.dtype))
    values.index_copy_(2, block.slots, v.to(values.dtype))
    span = block.span or cache.slots
    keys, values = keys[..., :span], values[:, :, :span]
    rows, heads, length, dim = q.shape
    if length > 1:
        if cache.prefix is not None:
            raise ValueError("rows with a shared prefix take one token per forward pass")
        return F.scaled_dot_product_attention(
            q, keys.transpose(-1, -2), values, attn_mask=bias, scale=scale, enable_gqa=True
        )
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    grouped = (q * scale).reshape(rows, kv_heads, group, dim)
    scores = torch.matmul(grouped, keys)  # [rows, kv_heads, group, span]
    if cache.prefix is None:
        probs = torch.softmax((scores + bias).float(), dim=-1).to(values.dtype)
        return torch.matmul(probs, values).reshape(rows, heads, 1, dim)
    # Shared prefix: one [kv_heads, rows * group, d] x [kv_heads, d, P] product for all rows.
    prefix_keys, prefix_values = cache.prefix.keys[layer][0], cache.prefix.values[layer][0]
    seen = prefix_keys.shape[-1]
    by_head = grouped.transpose(0, 1).reshape(kv_heads, rows * group, dim)
    prefix_scores = torch.matmul(by_head, prefix_keys).view(kv_heads, rows, group, seen)
    scores = torch.cat([prefix_scores.transpose(0, 1), scores], dim=-1)
    probs = torch.softmax((scores + bias).float(), dim=-1).to(values.dtype)
    prefix_probs = probs[..., :seen].transpose(0, 1).reshape(kv_heads, rows * group, seen)
    out = torch.matmul(prefix_probs, prefix_values).view(kv_heads, rows, group, dim).transpose(0, 1)
    out = out + torch.matmul(probs[..., seen:], values)
    return out.reshape(rows, heads, 1, dim)


def _apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding exactly as transformers' Llama applies it (rotate-half convention)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


# ----------------------------------------------------------------------------------------------
# 4. Sampling one token per row, on the device
# ----------------------------------------------------------------------------------------------


def gumbel_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Standard Gumbel noise; argmax(logp + noise) is an exact sample of softmax(logp)."""
    noise_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=noise_device, dtype=torch.float32)
    return (-torch.log(-torch.log(u.clamp_(min=1e-30)))).to(device, non_blocking=True)


def log_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Log-probabilities (float32) of the distribution sampled from: temperature, then top-p.

    Temperature 0 (greedy) gives the temperature-1 distribution (its argmax is the greedy token).
    """
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        sorted_p = sorted_logp.exp()
        outside = (sorted_p.cumsum(dim=-1) - sorted_p) > top_p  # the top token always stays
        sorted_logp = sorted_logp.masked_fill(outside, float("-inf"))
        logp = torch.log_softmax(
            torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp), dim=-1
        )
    return logp


def guided_logits(
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    prompt_only: torch.Tensor | None,
    cfg_weight: float,
    plan_cfg_weight: float | None,
) -> torch.Tensor:
    """Image logits under classifier-free guidance; the sampler and the guided log-probs both
    call this, so they cannot disagree.

    One condition (`prompt_only` None): uncond + w * (cond - uncond), w = `cfg_weight`. Two
    conditions: uncond + w_prompt * (prompt_only - uncond) + w_plan * (cond - prompt_only), with
    w_prompt = `cfg_weight` and w_plan = `plan_cfg_weight`. A row whose weights cancel it is not
    computed and passed as None: uncond when cfg_weight is 1 (the formula is then prompt_only +
    w_plan * (cond - prompt_only), or cond), prompt_only when the weights are equal (the formula
    is then the one-condition one, computed as such, so the result is today's bit for bit).
    """
    if prompt_only is None:
        return cond if uncond is None else uncond + cfg_weight * (cond - uncond)
    if plan_cfg_weight is None:
        raise ValueError("a prompt-only row needs plan_cfg_weight")
    base = prompt_only if uncond is None else uncond + cfg_weight * (prompt_only - uncond)
    return base + plan_cfg_weight * (cond - prompt_only)


def sample_from_logits(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of `logits` [R, V]; returns (tokens [R], log-probs [R] float32)."""
    logp = log_probs(logits, temperature, top_p)
    if temperature > 0:
        token = (logp + gumbel_noise(tuple(logp.shape), generator, logp.device)).argmax(dim=-1)
    else:
        token = logp.argmax(dim=-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# 5. Stage 1: the chains
# ----------------------------------------------------------------------------------------------


@dataclass
class SpecialIds:
    """Token ids the sampler needs."""

    pad: int
    bos: int | None
    begin_of_image: int


@dataclass
class ChainSample:
    """What stage 1 hands to stage 2: the conditional KV cache and the sampled chains."""

    cache: KVCache  # rows B, slots [0, used) filled (prompt, chain with holes), room for K - 1
    used: int  # slots filled
    chain_start: int  # slot of every row's first chain token (the prompts' padded width)
    slot_ids: torch.Tensor  # [B, used] the token in each slot (pad in holes)
    chain_ids: torch.Tensor  # [B, C] right-padded chains, last real token <begin_of_image>
    chain_mask: torch.Tensor  # [B, C]
    chain_logprobs: torch.Tensor  # [B, C]
    truncated: torch.Tensor  # [B] bool
    boi_hidden: torch.Tensor  # [B, D] hidden state at each row's <begin_of_image>


def prefill(
    parts: JanusParts, cache: KVCache, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Write a left-padded batch `ids`/`mask` [R, P] into cache slots [0, P); final hidden [R, P, D]."""
    slots = torch.arange(ids.shape[1], device=ids.device)
    block = Block(cache, slots, mask.bool(), span=ids.shape[1])
    return transformer_forward(parts, parts.text_embed(ids), positions_from_mask(mask), [block])


def copy_slots(source: KVCache, target: KVCache, slots: int, repeat: int = 1) -> None:
    """Copy the first `slots` slots of `source` into `target`, each source row `repeat` times."""

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t if repeat == 1 else t.repeat_interleave(repeat, dim=0)

    for src, dst in zip(source.keys, target.keys, strict=True):
        dst[..., :slots] = rows(src[..., :slots])
    for src, dst in zip(source.values, target.values, strict=True):
        dst[:, :, :slots] = rows(src[:, :, :slots])
    target.valid[:, :slots] = rows(source.valid[:, :slots])


def sample_chains(
    parts: JanusParts,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    num_generations: int,
    sampling: SamplingConfig,
    special: SpecialIds,
    generator: torch.Generator | None,
) -> ChainSample:
    """Stage 1: sample `num_generations` chains per prompt until <begin_of_image>.

    `prompt_ids`/`prompt_mask` [G, P] hold each prompt once (left-padded). Their prefix is
    computed once and its KV copied to the N sample rows. A chain that reaches
    `max_chain_tokens` gets <begin_of_image> forced as its last token (log-prob = the model's
    log-prob of <begin_of_image> there, temperature applied, no top-p) and is flagged truncated.
    A row that has finished leaves holes (masked slots) while the others go on. The cache has
    room for the image tokens after the longest chain, so stage 2 continues in it.
    """
    device = prompt_ids.device
    groups, prompt_len = prompt_ids.shape
    rows = groups * num_generations
    max_chain = sampling.max_chain_tokens

    # The prompt prefix once per prompt, then its KV copied to the N rows of its group.
    prefix = KVCache.allocate(parts, groups, prompt_len)
    hidden = prefill(parts, prefix, prompt_ids, prompt_mask)[:, -1]
    cache = KVCache.allocate(parts, rows, prompt_len + max_chain + parts.num_image_tokens - 1)
    copy_slots(prefix, cache, prompt_len, repeat=num_generations)
    del prefix
    logits = parts.lm_head(hidden).float().repeat_interleave(num_generations, dim=0)
    start_positions = prompt_mask.long().sum(dim=1).repeat_interleave(num_generations)

    tokens, logprobs, masks = [], [], []
    active = torch.ones(rows, dtype=torch.bool, device=device)
    truncated = torch.zeros(rows, dtype=torch.bool, device=device)
    boi_hidden = torch.zeros(rows, hidden.shape[-1], dtype=hidden.dtype, device=device)
    pad = torch.full((rows,), special.pad, dtype=torch.long, device=device)
    sync_every = 1 if device.type == "cpu" else 8  # "all chains done?" needs the host
    for step in range(max_chain):
        token, logprob = sample_from_logits(
            logits, sampling.text_temperature, sampling.top_p, generator
        )
        if step == max_chain - 1:  # out of budget: close the chain and flag it
            forced = active & (token != special.begin_of_image)
            boi_logprob = log_probs(logits, sampling.text_temperature)[:, special.begin_of_image]
            token = torch.where(forced, special.begin_of_image, token)
            logprob = torch.where(forced, boi_logprob, logprob)
            truncated = forced
        token = torch.where(active, token, pad)
        tokens.append(token)
        logprobs.append(torch.where(active, logprob, 0.0))
        masks.append(active)
        slot = prompt_len + step
        block = Block(cache, torch.tensor([slot], device=device), active[:, None], span=slot + 1)
        positions = (start_positions + step)[:, None]
        hidden = transformer_forward(parts, parts.text_embed(token[:, None]), positions, [block])
        hidden = hidden[:, -1]
        is_boi = active & (token == special.begin_of_image)
        boi_hidden = torch.where(is_boi[:, None], hidden, boi_hidden)
        active = active & ~is_boi
        if (step + 1) % sync_every == 0 and not bool(active.any()):
            break
        logits = parts.lm_head(hidden).float()

    chain_ids = torch.stack(tokens, dim=1)
    chain_mask = torch.stack(masks, dim=1).long()
    chain_logprobs = torch.stack(logprobs, dim=1)
    width = int(chain_mask.sum(dim=1).max())
    return ChainSample(
        cache=cache,
        used=prompt_len + chain_ids.shape[1],
        chain_start=prompt_len,
        slot_ids=torch.cat([prompt_ids.repeat_interleave(num_generations, 0), chain_ids], 1),
        chain_ids=chain_ids[:, :width],
        chain_mask=chain_mask[:, :width],
        chain_logprobs=chain_logprobs[:, :width],
        truncated=truncated,
        boi_hidden=boi_hidden,
    )


# ----------------------------------------------------------------------------------------------
# 6. Stage 2: the image tokens, with classifier-free guidance
# ----------------------------------------------------------------------------------------------


def unconditional_rows(
    parts: JanusParts,
    slot_ids: torch.Tensor,
    valid: torch.Tensor,
    special: SpecialIds,
    num_tokens: int,
) -> tuple[KVCache, torch.Tensor]:
    """The CFG unconditional rows: their cache and the hidden state at their <begin_of_image>.

    An unconditional row is its conditional row (`slot_ids`/`valid` [B, S]: prompt and chain)
    with every real token between BOS and <begin_of_image> replaced by pad. So before its
    <begin_of_image> every row reads the same [BOS, pad, pad, ...] at positions 0, 1, 2, ...:
    that prefix is computed once, as a single row as long as the longest one, and shared. Each
    row's own cache holds its <begin_of_image> (position n - 1 for n real tokens) and image tokens.
    """
    rows = torch.arange(slot_ids.shape[0], device=slot_ids.device)
    blanked = unconditional_ids(slot_ids, valid, special.pad, special.bos)
    first, last = real_bounds(valid)
    lengths = valid.long().sum(dim=1)
    longest = int(lengths.argmax())
    shared_ids = blanked[longest, first[longest] : last[longest]]  # [BOS, pad, ...], no BOI
    if len(shared_ids) and bool(((blanked[rows, first] != shared_ids[0]) & (lengths > 1)).any()):
        raise ValueError("the prefixes disagree on a leading BOS; cannot share the uncond prefix")
    shared = KVCache.allocate(parts, 1, max(1, len(shared_ids)))
    if len(shared_ids):
        prefill(parts, shared, shared_ids[None], torch.ones_like(shared_ids)[None])

    own = KVCache.allocate(parts, len(rows), num_tokens, prefix=shared, prefix_len=lengths - 1)
    first_slot = torch.zeros(1, dtype=torch.long, device=rows.device)
    block = Block(own, first_slot, valid.new_ones(len(rows), 1, dtype=torch.bool), span=1)
    boi = parts.text_embed(slot_ids[rows, last][:, None])
    hidden = transformer_forward(parts, boi, (lengths - 1)[:, None], [block])
    return own, hidden[:, -1]


def prompt_only_rows(
    parts: JanusParts,
    slot_ids: torch.Tensor,
    valid: torch.Tensor,
    chain_start: torch.Tensor | int,
    special: SpecialIds,
    num_tokens: int,
) -> tuple[KVCache, torch.Tensor]:
    """The prompt-only rows of two-condition guidance: their cache and the hidden state at their
    <begin_of_image>.

    A prompt-only row is its conditional row (`slot_ids`/`valid` [B, S]) with the chain, from
    column `chain_start` up to its <begin_of_image>, blanked to pad (`prompt_only_ids`). Prompts
    and chain lengths differ from row to row, so nothing is shared: one prefill pass over the B
    blanked rows into a cache with room for the image tokens after slot S.
    """
    rows = torch.arange(slot_ids.shape[0], device=slot_ids.device)
    blanked = prompt_only_ids(slot_ids, valid, chain_start, special.pad)
    cache = KVCache.allocate(parts, len(rows), slot_ids.shape[1] + num_tokens - 1)
    hidden = prefill(parts, cache, blanked, valid)
    _, last = real_bounds(valid)
    return cache, hidden[rows, last]


def sample_image_tokens(
    parts: JanusParts,
    cond: KVCache,
    used: int,
    slot_ids: torch.Tensor,
    boi_hidden: torch.Tensor,
    sampling: SamplingConfig,
    special: SpecialIds,
    generator: torch.Generator | None,
    chain_start: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2: sample K image tokens per row; returns (image_ids [B, K], log-probs [B, K]).

    `cond` holds the conditional rows' KV for slots [0, used) (prompt and chain, from stage 1);
    the image tokens continue in it (a view sized exactly for prefix + image tokens; a cache
    without that room is copied into a new one), so the prefix is never recomputed. With
    guidance the unconditional rows come from `unconditional_rows`, and every step runs the
    cond/uncond pair as one batch of 2B rows. Two-condition guidance (`sampling.plan_guided`)
    adds the prompt-only rows of `prompt_only_rows` (`chain_start`: the column of each row's
    first chain token in `slot_ids`), 3B rows a step. Logits are mixed by `guided_logits`,
    divided by the image temperature and sampled with Gumbel-max on the device: nothing in the
    loop waits for the host.
    """
    rows = boi_hidden.shape[0]
    num_tokens = parts.num_image_tokens
    device = boi_hidden.device
    valid = cond.valid[:, :used]
    positions = valid.long().sum(dim=1)  # of the first image token: real tokens so far

    if cond.slots >= used + num_tokens - 1:
        cache = cond.first_slots(used + num_tokens - 1)
    else:
        cache = KVCache.allocate(parts, rows, used + num_tokens - 1)
        copy_slots(cond, cache, used)
    caches, first_slots, hiddens = [cache], [used], [boi_hidden]
    if sampling.plan_guided:
        if chain_start is None:
            raise ValueError("two-condition guidance needs chain_start (where each chain begins)")
        plan, plan_boi = prompt_only_rows(parts, slot_ids, valid, chain_start, special, num_tokens)
        caches.append(plan)
        first_slots.append(used)
        hiddens.append(plan_boi)
    if sampling.guided:
        uncond, uncond_boi = unconditional_rows(parts, slot_ids, valid, special, num_tokens)
        caches.append(uncond)
        first_slots.append(1)
        hiddens.append(uncond_boi)
    hidden = torch.cat(hiddens) if len(hiddens) > 1 else boi_hidden
    positions = positions.repeat(len(caches))

    step = _decode_step_fn(sampling, device)
    static = step is not transformer_forward  # compiled: attend over whole caches, fixed shapes
    if static:  # the graph updates the caches in place: their addresses must not change
        for tensor in (t for c in caches for t in c.tensors()):
            torch._dynamo.mark_static_address(tensor)
    slots = [torch.tensor([s], device=device) for s in first_slots]
    real = [torch.ones(c.rows, 1, dtype=torch.bool, device=device) for c in caches]
    positions = positions[:, None].clone()
    image_ids = torch.empty(rows, num_tokens, dtype=torch.long, device=device)
    image_logprobs = torch.empty(rows, num_tokens, dtype=torch.float32, device=device)
    for k in range(num_tokens):
        logits = parts.image_head(hidden).float()
        if len(caches) > 1:
            branches = iter(logits.chunk(len(caches)))
            cond_logits = next(branches)
            prompt_logits = next(branches) if sampling.plan_guided else None
            uncond_logits = next(branches) if sampling.guided else None
            logits = guided_logits(
                cond_logits,
                uncond_logits,
                prompt_logits,
                sampling.cfg_weight,
                sampling.plan_cfg_weight,
            )
        token, logprob = sample_from_logits(logits, sampling.image_temperature, 1.0, generator)
        image_ids[:, k] = token
        image_logprobs[:, k] = logprob
        if k == num_tokens - 1:
            break
        embeds = parts.image_embed(token[:, None])
        if len(caches) > 1:
            embeds = embeds.repeat(len(caches), 1, 1)
        blocks = [
            Block(c, slot, r, None if static else first + k + 1)
            for c, slot, r, first in zip(caches, slots, real, first_slots, strict=True)
        ]
        hidden = step(parts, embeds, positions, blocks)[:, -1]
        for slot in slots:
            slot += 1
        positions += 1
    return image_ids, image_logprobs


_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}


def _decode_step_fn(sampling: SamplingConfig, device: torch.device) -> Callable[..., torch.Tensor]:
    """The decode step: eager, or on CUDA with `compile_decode` a CUDA-graph compiled version."""
    if not (sampling.compile_decode and device.type == "cuda"):
        return transformer_forward
    if "cuda" not in _COMPILED:
        _COMPILED["cuda"] = torch.compile(
            transformer_forward, mode="reduce-overhead", dynamic=False
        )
    return _COMPILED["cuda"]


def generate_image_tokens(
    parts: JanusParts,
    prefix_ids: torch.Tensor,
    prefix_mask: torch.Tensor,
    sampling: SamplingConfig,
    special: SpecialIds,
    generator: torch.Generator | None = None,
    chain_start: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2 alone from given conditional prefixes (left-padded, each row ending in
    <begin_of_image>): one prefill pass, then `sample_image_tokens`. For benchmarks and for
    drawing fixed chains; `chain_start` [R] (the column of each row's first chain token) is
    needed for two-condition guidance.
    """
    with torch.no_grad():
        rows, length = prefix_ids.shape
        cache = KVCache.allocate(parts, rows, length + parts.num_image_tokens - 1)
        hidden = prefill(parts, cache, prefix_ids, prefix_mask)[:, -1]
        return sample_image_tokens(
            parts,
            cache,
            prefix_ids.shape[1],
            prefix_ids,
            hidden,
            sampling,
            special,
            generator,
            chain_start,
        )


# ----------------------------------------------------------------------------------------------
# 7. Pixels, and the whole rollout
# ----------------------------------------------------------------------------------------------


def decode_images(
    parts: JanusParts,
    image_ids: torch.Tensor,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    batch_size: int = 16,
) -> list[Image.Image]:
    """Decode image codes [B, K] to PIL images with the VQ decoder (pixels un-normalised)."""
    images = []
    mean_t = torch.tensor(mean, device=image_ids.device)
    std_t = torch.tensor(std, device=image_ids.device)
    with torch.no_grad():
        for start in range(0, image_ids.shape[0], batch_size):
            pixels = parts.janus.decode_image_tokens(image_ids[start : start + batch_size])
            pixels = (pixels.float() * std_t + mean_t).clamp(0, 1).mul(255).round()
            for array in pixels.to(torch.uint8).cpu().numpy():
                images.append(Image.fromarray(array))
    return images


def special_ids(tokenizer: Any) -> SpecialIds:
    """Pad, BOS and <begin_of_image> ids of a tokenizer; a clear error when one is missing."""

    boi = tokenizer.convert_tokens_to_ids(BEGIN_OF_IMAGE)
    unk = getattr(tokenizer, "unk_token_id", None)
    if boi is None or (unk is not None and boi == unk):
        raise ValueError(f"the tokenizer has no {BEGIN_OF_IMAGE} token")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token (needed for padding and CFG)")
    return SpecialIds(pad=tokenizer.pad_token_id, bos=tokenizer.bos_token_id, begin_of_image=boi)


def chain_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decoded chain with markup kept and image/pad/BOS/EOS special tokens removed."""

    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    drop = [BEGIN_OF_IMAGE, END_OF_IMAGE, tokenizer.pad_token, tokenizer.bos_token]
    drop.append(tokenizer.eos_token)
    for token in drop:
        if token:
            text = text.replace(token, "")
    return text.strip()


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (ids [R, P], mask [R, P])."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, width - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
            mask[row, width - len(sequence) :] = 1
    return ids, mask


def rollout(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    num_generations: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    encode: Callable[[str], list[int]] | None = None,
    image_mean: Sequence[float] = (0.5, 0.5, 0.5),
    image_std: Sequence[float] = (0.5, 0.5, 0.5),
) -> Rollouts:
    """Sample `num_generations` (chain, image) pairs for each prompt; see the module docstring.

    `encode` turns a user prompt into the token ids of the prefix (BOS + chat template up to the
    assistant turn); default `gotr1.policy.tokenizer.encode_prompt`. Runs without autograd and in
    eval mode (restoring the previous mode), in chunks of `sampling.max_batch_rows` rows (whole
    groups). Seeded through `generator` (on the model's device, or CPU).
    """

    if num_generations < 1:
        raise ValueError("num_generations must be >= 1")
    if not prompts:
        raise ValueError("rollout needs at least one prompt")
    if encode is None:

        def encode(prompt: str) -> list[int]:
            return encode_prompt(tokenizer, prompt)

    parts = janus_parts(model)
    special = special_ids(tokenizer)
    encoded = [encode(p) for p in prompts]
    for prompt, ids in zip(prompts, encoded, strict=True):
        if not ids:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens")
    n = num_generations
    columns: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("prompt_ids", "prompt_mask", "chain_ids", "chain_mask", "chain_logprobs")
    }
    image_ids, image_logprobs, truncated = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            per_pass = max(1, (sampling.max_batch_rows or 10**9) // n)
            for start in range(0, len(prompts), per_pass):
                ids, mask = left_pad(encoded[start : start + per_pass], special.pad)
                ids, mask = ids.to(parts.device), mask.to(parts.device)
                chains = sample_chains(parts, ids, mask, n, sampling, special, generator)
                codes, logprobs = sample_image_tokens(
                    parts,
                    chains.cache,
                    chains.used,
                    chains.slot_ids,
                    chains.boi_hidden,
                    sampling,
                    special,
                    generator,
                    chains.chain_start,
                )
                columns["prompt_ids"].append(ids.repeat_interleave(n, dim=0))
                columns["prompt_mask"].append(mask.repeat_interleave(n, dim=0))
                columns["chain_ids"].append(chains.chain_ids)
                columns["chain_mask"].append(chains.chain_mask)
                columns["chain_logprobs"].append(chains.chain_logprobs)
                truncated.append(chains.truncated)
                image_ids.append(codes)
                image_logprobs.append(logprobs)
                del chains  # frees the KV cache before the next pass
            images = decode_images(parts, torch.cat(image_ids), image_mean, image_std)
    finally:
        model.train(was_training)

    def cat_padded(tensors: list[torch.Tensor], left: bool, value: float = 0) -> torch.Tensor:
        """Concatenate rows of different widths, padding on the left or the right."""
        width = max(t.shape[1] for t in tensors)
        padded = []
        for t in tensors:
            pad = (width - t.shape[1], 0) if left else (0, width - t.shape[1])
            padded.append(F.pad(t, pad, value=value))
        return torch.cat(padded, dim=0)

    chain_ids = cat_padded(columns["chain_ids"], False, special.pad)
    chain_mask = cat_padded(columns["chain_mask"], False)
    texts = [
        chain_text(tokenizer, row[m.bool()].tolist())
        for row, m in zip(chain_ids.cpu(), chain_mask.cpu(), strict=True)
    ]
    return Rollouts(
        prompts=[p for p in prompts for _ in range(n)],
        group_ids=torch.arange(len(prompts), device=parts.device).repeat_interleave(n),
        prompt_ids=cat_padded(columns["prompt_ids"], True, special.pad),
        prompt_mask=cat_padded(columns["prompt_mask"], True),
        chain_ids=chain_ids,
        chain_mask=chain_mask,
        chain_logprobs=cat_padded(columns["chain_logprobs"], False),
        image_ids=torch.cat(image_ids),
        image_logprobs=torch.cat(image_logprobs),
        truncated=torch.cat(truncated),
        chain_texts=texts,
        chains=[parse_chain(t) for t in texts],
        images=images,
        sampling=sampling,
    )
