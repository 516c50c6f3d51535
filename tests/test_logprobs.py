"""Teacher-forced log-probs: equal to the sampling log-probs, chunked, differentiable, reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gotr1.policy.logprobs import chunked_head_logprobs, token_logprobs
from gotr1.policy.lora import apply_lora
from gotr1.policy.policy import Policy
from gotr1.policy.rollout import SamplingConfig, janus_parts
from test_rollout import PROMPTS, make_policy


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and the CI machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def policy(one_thread):
    model, processor = make_policy()
    return Policy(model, processor)


def sample(policy, seed=0, n=3, **sampling):
    config = SamplingConfig(**{"max_chain_tokens": 12, "cfg_weight": 3.0, **sampling})
    return policy.rollout(PROMPTS, n, config, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "temperature,cfg", [(1.0, 3.0), (1.0, 5.0), (0.7, 5.0), (1.4, 2.0), (1.0, 1.0)]
)
def test_teacher_forced_logprobs_equal_sampling_logprobs(policy, temperature, cfg):
    rollouts = sample(
        policy, text_temperature=temperature, image_temperature=temperature, cfg_weight=cfg
    )
    assert rollouts.chain_mask.sum(1).unique().numel() > 1  # rows end at different steps
    with torch.no_grad():
        scored = policy.logprobs(rollouts)
    mask = rollouts.chain_mask.bool()
    assert (scored.chain - rollouts.chain_logprobs).abs().max() <= 1e-4
    assert (scored.chain[~mask] == 0).all()
    assert (scored.image - rollouts.image_logprobs).abs().max() <= 1e-4
    assert scored.chain.dtype == scored.image.dtype == torch.float32


@pytest.mark.parametrize("cfg,plan_cfg", [(3.0, 6.0), (1.0, 4.0), (5.0, 2.0)])
@pytest.mark.parametrize("micro_batch_size", [None, 2])
def test_two_condition_teacher_forced_logprobs_equal_sampling_logprobs(
    policy, cfg, plan_cfg, micro_batch_size
):
    rollouts = sample(policy, image_temperature=0.8, cfg_weight=cfg, plan_cfg_weight=plan_cfg)
    with torch.no_grad():
        scored = policy.logprobs(rollouts, micro_batch_size=micro_batch_size)
        one_condition = policy.logprobs(
            dataclasses.replace(rollouts, sampling=SamplingConfig(cfg_weight=cfg))
        )
    assert (scored.image - rollouts.image_logprobs).abs().max() <= 1e-4
    assert (one_condition.image - rollouts.image_logprobs).abs().max() > 1e-3


def test_conditional_mode_is_the_unguided_distribution(policy):
    guided = sample(policy, cfg_weight=4.0)
    with torch.no_grad():
        conditional = policy.logprobs(guided, image_logprob="conditional")
        mixed = policy.logprobs(guided, image_logprob="guided")
    assert (conditional.chain - mixed.chain).abs().max() < 1e-6  # chains are never guided
    assert (conditional.image - guided.image_logprobs).abs().max() > 1e-2
    unguided = sample(policy, cfg_weight=1.0)
    with torch.no_grad():
        conditional = policy.logprobs(unguided, image_logprob="conditional")
    assert (conditional.image - unguided.image_logprobs).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="image_logprob"):
        policy.logprobs(unguided, image_logprob="cfg")


def test_micro_batches_and_chunks_change_nothing(policy):
    rollouts = sample(policy)
    parts = janus_parts(policy.model)
    shapes = []
    hook = parts.image_head.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    try:
        with torch.no_grad():
            whole = policy.logprobs(rollouts, with_entropy=True)
            shapes.clear()
            pieces = token_logprobs(
                policy.model,
                rollouts,
                policy.special.pad,
                policy.special.bos,
                micro_batch_size=2,
                with_entropy=True,
                logits_chunk_elements=2 * 64 * 10,  # 10 positions of 2 rows x 64 codes
            )
    finally:
        hook.remove()
    # No head call ever produced more than the budget (the 1x1 probe aside).
    assert max(s.numel() for s in shapes) <= 2 * 64 * 10
    assert len(shapes) > 10
    for field in ("chain", "image", "chain_entropy", "image_entropy"):
        assert (getattr(whole, field) - getattr(pieces, field)).abs().max() < 1e-5, field


def test_entropy_is_the_entropy_of_the_scored_distribution():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 5)
    hidden, uncond = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    targets = torch.randint(0, 5, (2, 3))
    logp, entropy = chunked_head_logprobs(
        head, hidden, targets, 0.7, uncond, 3.0, with_entropy=True, logits_chunk_elements=10
    )
    with torch.no_grad():
        mixed = head(uncond) + 3.0 * (head(hidden) - head(uncond))
        reference = torch.log_softmax(mixed / 0.7, -1)
    assert torch.allclose(logp, reference.gather(-1, targets[..., None]).squeeze(-1), atol=1e-6)
    assert torch.allclose(entropy, -(reference.exp() * reference).sum(-1), atol=1e-6)


def test_gradients_flow_through_both_branches_and_checkpointed_chunks(policy):
    rollouts = sample(policy, n=2)
    model = policy.model
    parts = janus_parts(model)
    layer = parts.language_model.layers[0].self_attn.q_proj.weight

    def grads(mode, chunk):
        model.zero_grad()
        scored = token_logprobs(
            model,
            rollouts,
            policy.special.pad,
            policy.special.bos,
            image_logprob=mode,
            logits_chunk_elements=chunk,
        )
        (scored.image.sum() + scored.chain.sum()).backward()
        return layer.grad.clone(), parts.image_head.vision_head.weight.grad.clone()

    guided_big = grads("guided", 1 << 24)
    guided_small = grads("guided", 64 * 8)
    conditional = grads("conditional", 1 << 24)
    model.zero_grad()
    for big, small in zip(guided_big, guided_small, strict=True):
        assert big.abs().sum() > 0
        assert torch.allclose(big, small, atol=1e-5, rtol=1e-4)
    # The unconditional branch contributes: guided and conditional gradients differ.
    assert not torch.allclose(guided_big[0], conditional[0], atol=1e-4)


def test_reference_logprobs_use_the_base_weights_under_lora():
    model, processor = make_policy(seed=1)
    base = Policy(model, processor)
    rollouts = sample(base)
    with torch.no_grad():
        before = base.logprobs(rollouts)
    with pytest.raises(ValueError, match="no reference"):
        base.reference_logprobs(rollouts)
    lora = Policy(apply_lora(model, r=4, alpha=4), processor)
    with torch.no_grad():  # give the adapters a non-zero update
        for name, parameter in lora.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    reference = lora.reference_logprobs(rollouts)
    assert not reference.image.requires_grad
    assert (reference.image - before.image).abs().max() < 1e-5
    assert (reference.chain - before.chain).abs().max() < 1e-5
    with torch.no_grad():
        moved = lora.logprobs(rollouts)
    assert (moved.image - before.image).abs().max() > 1e-3
    # An explicit frozen reference model is used when given.
    other, _ = make_policy(seed=2)
    explicit = Policy(lora.model, processor, reference_model=other).reference_logprobs(rollouts)
    assert (explicit.image - before.image).abs().max() > 1e-3


def test_policy_save_and_load_plain_and_lora(tmp_path):
    from gotr1.errors import UserError

    model, processor = make_policy(boi_logit=None, seed=3)
    plain = Policy(model, processor)
    rollouts = sample(plain, n=2, max_chain_tokens=6)
    with torch.no_grad():
        before = plain.logprobs(rollouts)
    plain.save(tmp_path / "plain")
    loaded = Policy.load(tmp_path / "plain")
    with torch.no_grad():
        after = loaded.logprobs(rollouts)
    assert (after.image - before.image).abs().max() < 1e-5
    assert (after.chain - before.chain).abs().max() < 1e-5

    lora = Policy(apply_lora(loaded.model, r=4, alpha=4), loaded.processor)
    with torch.no_grad():
        for name, parameter in lora.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
        tuned = lora.logprobs(rollouts)
    lora.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    reloaded = Policy.load(tmp_path / "adapter")
    with torch.no_grad():
        again = reloaded.logprobs(rollouts)
    assert (again.image - tuned.image).abs().max() < 1e-5
    reference = reloaded.reference_logprobs(rollouts)
    assert (reference.image - before.image).abs().max() < 1e-5
    with pytest.raises(UserError, match="nowhere"):
        Policy.load(tmp_path / "nowhere")


@pytest.mark.parametrize("micro_batch_size", [None, 2])
def test_text_width_padding_changes_no_logprob(policy, monkeypatch, micro_batch_size):
    """The text block is left-padded to a multiple of TEXT_WIDTH_MULTIPLE columns (repeating
    shapes); the extra masked columns change no log-prob."""
    import gotr1.policy.logprobs as logprobs

    rollouts = sample(policy, seed=4)
    with torch.no_grad():
        padded = policy.logprobs(rollouts, micro_batch_size=micro_batch_size)
        monkeypatch.setattr(logprobs, "TEXT_WIDTH_MULTIPLE", 1)
        unpadded = policy.logprobs(rollouts, micro_batch_size=micro_batch_size)
    text_width = rollouts.prompt_ids.shape[1] + int(rollouts.chain_mask.sum(1).max())
    assert text_width % 16 != 0  # so the padded run really adds columns
    assert (padded.chain - unpadded.chain).abs().max() <= 1e-5
    assert (padded.image - unpadded.image).abs().max() <= 1e-5


def test_heads_run_on_one_matrix_and_never_copy_their_weight_per_row():
    """A strided chunk of positions reaches the head as one 2-D matrix: in bf16 on CPU a 3-D
    strided input made PyTorch copy the head's weight once per row (and its gradient likewise),
    1.56 GiB a call for Janus-Pro-1B's text head at 4 rows."""
    head = torch.nn.Linear(64, 4096, bias=False).to(torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(4, 24, 64, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 4096, (4, 12))
    inputs = []
    head.register_forward_pre_hook(lambda _, args: inputs.append(args[0].shape))
    weight_bytes = head.weight.numel() * head.weight.element_size()
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=cpu, profile_memory=True) as prof:
        logp, _ = chunked_head_logprobs(
            head, hidden[:, 6:18], targets, 1.0, logits_chunk_elements=4 * 4 * 4096
        )
        logp.sum().backward()
    assert inputs and all(len(shape) == 2 for shape in inputs)
    events = prof.profiler.kineto_results.events()
    largest = max(e.nbytes() for e in events if e.name() == "[memory]")
    assert largest < weight_bytes  # a logits chunk (4 x 4 x 4096 float32) is half the weight
    with torch.no_grad():
        reference = torch.log_softmax(head(hidden[:, 6:18].contiguous()).float(), -1)
    expected = reference.gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(logp.detach(), expected, atol=1e-2)
    assert hidden.grad is not None and hidden.grad[:, 6:18].abs().sum() > 0
