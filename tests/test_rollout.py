"""Two-stage rollouts: contract, truncation, seeding, padding invariance, KV reuse, CFG batching."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from PIL import Image

from gotr1.chain import BEGIN_OF_IMAGE, Chain
from gotr1.policy.presets import WORLD_TINY, build_model
from gotr1.policy.rollout import (
    Rollouts,
    SamplingConfig,
    janus_parts,
    log_probs,
    prompt_only_ids,
    sample_from_logits,
    unconditional_ids,
)
from gotr1.policy.tokenizer import build_processor, build_prompt_text, train_world_tokenizer

# A world-tiny-shaped model shrunk further so the tests run in seconds: 2 layers, hidden 64,
# grouped-query attention (4 heads over 2 kv heads), 64 image codes on an 8x8 grid.
SMALL = dataclasses.replace(
    WORLD_TINY,
    name="world-test",
    text={
        **WORLD_TINY.text,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    vq={**WORLD_TINY.vq, "num_embeddings": 64, "latent_channels": 32},
)
CORPUS = [
    "a red circle to the left of a blue square",
    "<|obj_start|>red circle<|obj_end|> <|box_start|>(120,340),(560,780)<|box_end|>",
    build_prompt_text("three green triangles above a yellow star"),
]
PROMPTS = ["a red circle", "a blue square to the left of three green triangles"]


def make_policy(boi_logit: float | None = 2.5, seed: int = 0):
    """(model, processor) of the small test shape; `boi_logit` biases the text head towards
    <begin_of_image> so chains end at varied lengths (a random model almost never ends them)."""
    tokenizer = train_world_tokenizer(texts=CORPUS, vocab_size=300)
    processor = build_processor(tokenizer, image_size=64, num_image_tokens=64)
    model = build_model(SMALL, vocab_size=len(tokenizer), seed=seed)
    if boi_logit is not None:
        old = model.lm_head
        head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
        with torch.no_grad():
            head.weight.copy_(old.weight)
            head.bias.zero_()
            head.bias[tokenizer.convert_tokens_to_ids(BEGIN_OF_IMAGE)] = boi_logit
        model.lm_head = head
    return model.eval(), processor


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and the CI machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def policy(one_thread):
    from gotr1.policy.policy import Policy

    model, processor = make_policy()
    return Policy(model, processor)


def run(policy, prompts=PROMPTS, n=3, seed=0, **sampling):
    config = SamplingConfig(**{"max_chain_tokens": 12, "cfg_weight": 3.0, **sampling})
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return policy.rollout(prompts, n, config, generator)


def test_rollouts_follow_the_contract(policy):
    policy.model.train()  # rollouts must switch to eval and restore the mode
    rollouts = run(policy)
    assert policy.model.training
    policy.model.eval()
    boi = policy.special.begin_of_image
    b = len(PROMPTS) * 3
    assert len(rollouts) == b and rollouts.num_groups == 2
    assert rollouts.prompts == [p for p in PROMPTS for _ in range(3)]
    assert rollouts.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert rollouts.image_ids.shape == (b, 64) and rollouts.image_logprobs.shape == (b, 64)
    assert rollouts.chain_ids.shape == rollouts.chain_mask.shape == rollouts.chain_logprobs.shape
    assert rollouts.chain_logprobs.dtype == rollouts.image_logprobs.dtype == torch.float32
    # Left-padded prompts starting with BOS, right-padded chains ending in <begin_of_image>.
    assert (rollouts.prompt_mask[:, -1] == 1).all()
    lengths = rollouts.chain_mask.sum(1)
    assert (lengths >= 1).all()
    last = rollouts.chain_ids[torch.arange(b), lengths - 1]
    assert (last == boi).all()
    real = rollouts.chain_mask.bool()
    assert ((rollouts.chain_ids == boi) & real).sum(1).eq(1).all()  # exactly one, at the end
    assert (rollouts.chain_logprobs[~real] == 0).all() and (rollouts.chain_logprobs[real] < 0).all()
    assert (rollouts.chain_ids[~real] == policy.special.pad).all()
    assert (rollouts.image_logprobs < 0).all()
    assert ((rollouts.image_ids >= 0) & (rollouts.image_ids < 64)).all()
    # Text, parsed chains and pictures for every row; nothing tracks gradients.
    assert len(rollouts.chain_texts) == len(rollouts.chains) == len(rollouts.images) == b
    assert all(isinstance(c, Chain) for c in rollouts.chains)
    assert all(BEGIN_OF_IMAGE not in t for t in rollouts.chain_texts)
    assert all(isinstance(im, Image.Image) and im.size == (64, 64) for im in rollouts.images)
    for value in dataclasses.astuple(rollouts):
        if isinstance(value, torch.Tensor):
            assert not value.requires_grad
    assert all(p.grad is None for p in policy.model.parameters())


def test_chains_that_run_out_are_closed_and_flagged(policy):
    rollouts = run(policy, n=8, max_chain_tokens=4)
    lengths = rollouts.chain_mask.sum(1)
    boi = policy.special.begin_of_image
    assert rollouts.truncated.any() and (~rollouts.truncated).any()
    assert (lengths[rollouts.truncated] == 4).all()
    ends = rollouts.chain_ids[torch.arange(len(rollouts)), lengths - 1]
    assert (ends == boi).all()
    # Chains that ended by themselves are not flagged, even one that ended at the last step: the
    # same seed without the cap samples the same tokens, so it says which chains the cap cut.
    uncapped = run(policy, n=8, max_chain_tokens=64)
    free_lengths = uncapped.chain_mask.sum(1)
    assert (free_lengths == 4).any()  # this seed has a chain that ends by itself at the cap
    assert rollouts.truncated.tolist() == (free_lengths > 4).tolist()
    natural = ~rollouts.truncated
    assert torch.equal(lengths[natural], free_lengths[natural])
    assert torch.equal(rollouts.chain_ids[natural, :4], uncapped.chain_ids[natural, :4])


def test_chain_lengths_vary_within_a_batch(policy):
    rollouts = run(policy, n=6)
    lengths = rollouts.chain_mask.sum(1)
    assert lengths.unique().numel() >= 3  # the holes after early <begin_of_image> are exercised


def test_seeded_rollouts_are_reproducible(policy):
    a, b, c = run(policy, seed=7), run(policy, seed=7), run(policy, seed=8)
    for field in ("chain_ids", "chain_logprobs", "image_ids", "image_logprobs", "truncated"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.chain_texts == b.chain_texts
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.images, b.images, strict=True))
    assert not torch.equal(a.image_ids, c.image_ids)


def test_padded_rows_equal_the_same_rows_alone_greedy(policy):
    greedy = dict(text_temperature=0.0, image_temperature=0.0, max_chain_tokens=6)
    both = run(policy, prompts=PROMPTS, n=1, seed=None, **greedy)
    for row, prompt in enumerate(PROMPTS):
        alone = run(policy, prompts=[prompt], n=1, seed=None, **greedy)
        length = int(alone.chain_mask.sum())
        assert torch.equal(both.chain_ids[row, :length], alone.chain_ids[0, :length])
        assert torch.equal(both.image_ids[row], alone.image_ids[0])
        diff = (both.image_logprobs[row] - alone.image_logprobs[0]).abs().max()
        assert diff < 1e-5
        diff = (both.chain_logprobs[row, :length] - alone.chain_logprobs[0, :length]).abs().max()
        assert diff < 1e-5


def _alone_logprobs(
    model, special, prompt_ids, chain_ids, image_ids, cfg, text_temp, image_temp, plan_cfg=None
):
    """Reference: the row alone (no padding, no holes) through transformers' own forward; with
    `plan_cfg`, two-condition guidance written out from its definition (the chain blanked by hand)."""
    parts = janus_parts(model)
    text = torch.cat([prompt_ids, chain_ids])[None]
    mask = torch.ones_like(text)

    def hidden(ids):
        embeds = torch.cat([parts.text_embed(ids), parts.image_embed(image_ids[None, :-1])], 1)
        return model.model.language_model(inputs_embeds=embeds).last_hidden_state[0]

    cond = hidden(text)
    n_text = text.shape[1]
    chain_logits = model.lm_head(cond[len(prompt_ids) - 1 : n_text - 1]).float()
    chain_lp = torch.log_softmax(chain_logits / text_temp, -1).gather(-1, chain_ids[:, None])
    image_logits = model.model.generation_head(cond[n_text - 1 :]).float()
    uncond_ids = unconditional_ids(text, mask, special.pad, special.bos)
    assert uncond_ids[0, 0] == special.bos and uncond_ids[0, -1] == special.begin_of_image
    assert (uncond_ids[0, 1:-1] == special.pad).all()
    uncond_logits = model.model.generation_head(hidden(uncond_ids)[n_text - 1 :]).float()
    mixed = uncond_logits + cfg * (image_logits - uncond_logits)
    if plan_cfg is not None:
        blanked = text.clone()
        blanked[0, len(prompt_ids) : n_text - 1] = special.pad  # the chain, not its BOI
        prompt_logits = model.model.generation_head(hidden(blanked)[n_text - 1 :]).float()
        mixed = (
            uncond_logits
            + cfg * (prompt_logits - uncond_logits)
            + plan_cfg * (image_logits - prompt_logits)
        )
    image_lp = torch.log_softmax(mixed / image_temp, -1).gather(-1, image_ids[:, None])
    return chain_lp.squeeze(-1), image_lp.squeeze(-1)


def test_sampling_logprobs_of_padded_rows_match_each_row_alone(policy):
    """Batched sampling (left pad, holes, shared prefix, CFG) vs each row alone in transformers."""
    rollouts = run(policy, n=3, image_temperature=0.8, text_temperature=1.2)
    assert rollouts.chain_mask.sum(1).unique().numel() > 1
    with torch.no_grad():
        for row in range(len(rollouts)):
            prompt = rollouts.prompt_ids[row][rollouts.prompt_mask[row].bool()]
            chain = rollouts.chain_ids[row][rollouts.chain_mask[row].bool()]
            chain_lp, image_lp = _alone_logprobs(
                policy.model, policy.special, prompt, chain, rollouts.image_ids[row], 3.0, 1.2, 0.8
            )
            recorded = rollouts.chain_logprobs[row][: len(chain)]
            assert (chain_lp - recorded).abs().max() < 1e-4
            assert (image_lp - rollouts.image_logprobs[row]).abs().max() < 1e-4


@pytest.mark.parametrize("cfg,plan_cfg", [(3.0, 6.0), (1.0, 4.0), (4.0, 1.5)])
def test_two_condition_sampling_matches_the_formula_on_each_row_alone(policy, cfg, plan_cfg):
    """Three rows a sample (cond, prompt-only, uncond) vs u + w_p (c_p - u) + w_plan (c - c_p)
    from transformers' forward on the three inputs of each row alone."""
    rollouts = run(policy, n=3, image_temperature=0.9, cfg_weight=cfg, plan_cfg_weight=plan_cfg)
    plain = run(policy, n=3, image_temperature=0.9, cfg_weight=cfg)
    assert torch.equal(rollouts.chain_ids, plain.chain_ids)  # stage 1 is not guided
    assert (rollouts.image_logprobs - plain.image_logprobs).abs().max() > 1e-3
    with torch.no_grad():
        for row in range(len(rollouts)):
            prompt = rollouts.prompt_ids[row][rollouts.prompt_mask[row].bool()]
            chain = rollouts.chain_ids[row][rollouts.chain_mask[row].bool()]
            _, image_lp = _alone_logprobs(
                policy.model,
                policy.special,
                prompt,
                chain,
                rollouts.image_ids[row],
                cfg,
                1.0,
                0.9,
                plan_cfg,
            )
            assert (image_lp - rollouts.image_logprobs[row]).abs().max() < 1e-4


@pytest.mark.parametrize("cfg", [3.0, 1.0])
def test_equal_weights_are_one_condition_guidance_token_for_token(policy, cfg):
    counter = TokenCounter(policy.model)
    try:
        equal = run(policy, n=3, seed=5, cfg_weight=cfg, plan_cfg_weight=cfg)
    finally:
        counter.remove()
    one = run(policy, n=3, seed=5, cfg_weight=cfg)
    assert torch.equal(equal.image_ids, one.image_ids)
    assert torch.equal(equal.image_logprobs, one.image_logprobs)
    assert set(counter.image_head_rows) == {12 if cfg != 1.0 else 6}  # no prompt-only row


def test_two_condition_guidance_batches_three_rows_a_sample(policy):
    counter = TokenCounter(policy.model)
    try:
        run(policy, n=4, cfg_weight=3.0, plan_cfg_weight=5.0)
        assert set(counter.image_head_rows) == {3 * 8}
        counter.image_head_rows.clear()
        run(policy, n=4, cfg_weight=1.0, plan_cfg_weight=5.0)  # uncond cancels at w_prompt 1
        assert set(counter.image_head_rows) == {2 * 8}
    finally:
        counter.remove()


def test_drawing_given_chains_with_two_condition_guidance_matches_the_formula(policy):
    from gotr1.eval.plans import draw_from_chains

    chains = ["a red circle", "<|obj_start|>red circle<|obj_end|> a blue square"]
    sampling = SamplingConfig(cfg_weight=2.0, plan_cfg_weight=4.0, image_temperature=0.9)
    drawn = draw_from_chains(policy, PROMPTS, chains, sampling, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for row in range(len(drawn)):
            prompt = drawn.prompt_ids[row][drawn.prompt_mask[row].bool()]
            chain = drawn.chain_ids[row][drawn.chain_mask[row].bool()]
            _, image_lp = _alone_logprobs(
                policy.model,
                policy.special,
                prompt,
                chain,
                drawn.image_ids[row],
                2.0,
                1.0,
                0.9,
                4.0,
            )
            assert (image_lp - drawn.image_logprobs[row]).abs().max() < 1e-4


class TokenCounter:
    """Counts rows x tokens through layer 0's q_proj and the rows seen by the image head."""

    def __init__(self, model):
        parts = janus_parts(model)
        self.tokens = 0
        self.image_head_rows: list[int] = []
        self.handles = [
            parts.language_model.layers[0].self_attn.q_proj.register_forward_hook(self._count),
            parts.image_head.register_forward_hook(self._rows),
        ]

    def _count(self, module, inputs, output):
        self.tokens += inputs[0].shape[0] * inputs[0].shape[1]

    def _rows(self, module, inputs, output):
        self.image_head_rows.append(inputs[0].shape[0])

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("cfg", [3.0, 1.0])
def test_prefix_once_per_prompt_kv_reused_and_cfg_pairs_batched(policy, cfg):
    counter = TokenCounter(policy.model)
    try:
        rollouts = run(policy, n=4, cfg_weight=cfg)
    finally:
        counter.remove()
    groups, b, k = 2, 8, 64
    prompt_len = rollouts.prompt_ids.shape[1]
    chain_steps = rollouts.chain_ids.shape[1]
    expected = groups * prompt_len  # the shared prefix, once per prompt
    expected += b * chain_steps  # one token per row per chain step
    if cfg != 1.0:
        # The unconditional rows share one blanked prefix [BOS, pad, ...] as long as the longest
        # row's prompt + chain without its <begin_of_image>, computed once; then each row runs
        # its own <begin_of_image>, then cond + uncond image steps (the cond prefix KV is reused).
        longest = int((rollouts.prompt_mask.sum(1) + rollouts.chain_mask.sum(1)).max())
        expected += (longest - 1) + b + 2 * b * (k - 1)
        assert set(counter.image_head_rows) == {2 * b}
    else:
        expected += b * (k - 1)  # no unconditional rows at all
        assert set(counter.image_head_rows) == {b}
    assert counter.tokens == expected


def test_batches_of_rows_keep_groups_together(policy):
    rollouts = run(policy, prompts=PROMPTS * 2, n=3, max_batch_rows=6)
    assert rollouts.group_ids.tolist() == [g for g in range(4) for _ in range(3)]
    assert len(rollouts.images) == 12
    lengths = rollouts.chain_mask.sum(1)
    assert (
        rollouts.chain_ids[torch.arange(12), lengths - 1] == policy.special.begin_of_image
    ).all()


def test_select_to_and_num_groups(policy):
    rollouts = run(policy, n=2)
    subset = rollouts.select([3, 2])
    assert subset.prompts == [PROMPTS[1]] * 2
    assert subset.group_ids.tolist() == [0, 0] and subset.num_groups == 1
    assert torch.equal(subset.image_ids, rollouts.image_ids[[3, 2]])
    assert subset.chain_texts == [rollouts.chain_texts[3], rollouts.chain_texts[2]]
    assert subset.images[0] is rollouts.images[3]
    mixed = rollouts.select(torch.tensor([2, 0, 1]))
    assert mixed.group_ids.tolist() == [0, 1, 1] and mixed.num_groups == 2
    moved = rollouts.to("cpu")
    assert isinstance(moved, Rollouts) and torch.equal(moved.chain_ids, rollouts.chain_ids)
    with pytest.raises(IndexError):
        rollouts.select([99])


def test_unconditional_row_blanks_prompt_and_chain():
    pad, bos, boi = 2, 0, 3
    ids = torch.tensor([[pad, pad, bos, 10, 11, 12, boi, pad], [bos, 10, 11, 12, 13, 14, 15, boi]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0], [1] * 8])
    out = unconditional_ids(ids, mask, pad, bos)
    assert out.tolist() == [
        [pad, pad, bos, pad, pad, pad, boi, pad],
        [bos, pad, pad, pad, pad, pad, pad, boi],
    ]
    no_bos = unconditional_ids(torch.tensor([[9, 10, boi]]), torch.ones(1, 3), pad, bos)
    assert no_bos.tolist() == [[pad, pad, boi]]


def test_prompt_only_row_blanks_the_chain_and_keeps_the_prompt():
    pad, bos, boi = 2, 0, 3
    # Row 0: left pad, prompt [bos, 10, 11], chain [12, boi], a hole; row 1: prompt [bos, 10],
    # chain [11 .. 15, boi]. Chains start at column 5 and 2.
    ids = torch.tensor([[pad, pad, bos, 10, 11, 12, boi, pad], [bos, 10, 11, 12, 13, 14, 15, boi]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0], [1] * 8])
    out = prompt_only_ids(ids, mask, torch.tensor([5, 2]), pad)
    assert out.tolist() == [
        [pad, pad, bos, 10, 11, pad, boi, pad],
        [bos, 10, pad, pad, pad, pad, pad, boi],
    ]
    same_column = prompt_only_ids(ids[:1], mask[:1], 5, pad)
    assert torch.equal(same_column, out[:1])
    bare = prompt_only_ids(torch.tensor([[bos, 10, boi]]), torch.ones(1, 3), 2, pad)
    assert bare.tolist() == [[bos, 10, boi]]  # a chain of <begin_of_image> alone: nothing blanked


def test_gumbel_sampling_matches_the_distribution_and_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(40000, 1)
    generator = torch.Generator().manual_seed(0)
    tokens, logprob = sample_from_logits(logits, 1.0, 1.0, generator)
    expected = torch.softmax(logits[0], -1)
    frequencies = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert (frequencies - expected).abs().max() < 0.01
    assert torch.allclose(logprob, expected.log()[tokens])
    # top-p 0.8 keeps the two most likely tokens (0.64 + 0.24 >= 0.8), renormalised.
    tokens, logprob = sample_from_logits(logits, 1.0, 0.8, generator)
    assert set(tokens.tolist()) == {0, 1}
    kept = expected[:2] / expected[:2].sum()
    assert torch.allclose(logprob, kept.log()[tokens])
    # Temperature sharpens; 0 is greedy.
    assert torch.allclose(log_probs(logits[:1], 0.5), torch.log_softmax(logits[:1] * 2, -1))
    greedy, _ = sample_from_logits(logits[:3], 0.0, 1.0, None)
    assert greedy.tolist() == [0, 0, 0]
    assert math.isclose(float(log_probs(logits[:1], 1.0, 0.5)[0, 0]), 0.0, abs_tol=1e-6)


def test_sampling_config_rejects_bad_values():
    for bad in (
        dict(top_p=0.0),
        dict(text_temperature=-1.0),
        dict(cfg_weight=-2.0),
        dict(max_chain_tokens=0),
        dict(max_batch_rows=0),
        dict(plan_cfg_weight=-1.0),
        dict(plan_cfg_weight=float("nan")),
    ):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)
    assert not SamplingConfig(cfg_weight=1.0).guided and SamplingConfig().guided
    assert not SamplingConfig().plan_guided
    assert not SamplingConfig(cfg_weight=3.0, plan_cfg_weight=3.0).plan_guided
    assert SamplingConfig(cfg_weight=1.0, plan_cfg_weight=3.0).plan_guided
    with pytest.raises(ValueError, match="^plan_cfg_weight must be >= 0 or None, got -1.0$"):
        SamplingConfig(plan_cfg_weight=-1.0)


def test_rollout_rejects_models_that_are_not_janus():
    with pytest.raises(TypeError, match="JanusForConditionalGeneration"):
        janus_parts(torch.nn.Linear(2, 2))


def _static_decode(monkeypatch, step):
    """Make stage 2 take its graph path (whole-cache attention, static addresses) with `step`."""
    import gotr1.policy.rollout as rollout_module

    monkeypatch.setattr(rollout_module, "_decode_step_fn", lambda sampling, device: step)


@pytest.mark.parametrize("plan_cfg", [None, 5.0])
def test_fixed_shape_decode_path_matches_eager(policy, monkeypatch, plan_cfg):
    from gotr1.policy.rollout import transformer_forward

    greedy = dict(text_temperature=0.0, image_temperature=0.0, plan_cfg_weight=plan_cfg)
    eager = run(policy, n=2, seed=None, **greedy)
    _static_decode(monkeypatch, lambda *args: transformer_forward(*args))
    static = run(policy, n=2, seed=None, **greedy)
    assert torch.equal(static.image_ids, eager.image_ids)
    assert (static.image_logprobs - eager.image_logprobs).abs().max() < 1e-5


def test_compile_flag_is_ignored_on_cpu(policy):
    plain = run(policy, n=2, seed=3)
    flagged = run(policy, n=2, seed=3, compile_decode=True)
    assert torch.equal(plain.image_ids, flagged.image_ids)


@pytest.mark.slow
def test_compiled_decode_step_matches_eager(policy, monkeypatch):
    """The decode step traces under torch.compile (inductor on CPU here; CUDA graphs on GPU)."""
    from gotr1.policy.rollout import transformer_forward

    greedy = dict(text_temperature=0.0, image_temperature=0.0, max_chain_tokens=4)
    eager = run(policy, n=2, seed=None, **greedy)
    _static_decode(monkeypatch, torch.compile(transformer_forward, dynamic=False))
    compiled = run(policy, n=2, seed=None, **greedy)
    assert torch.equal(compiled.image_ids, eager.image_ids)
    assert (compiled.image_logprobs - eager.image_logprobs).abs().max() < 1e-4
