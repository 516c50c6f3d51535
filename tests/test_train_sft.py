"""SFT: the loss is the rollout's teacher-forced log-likelihood, the loss falls, runs resume
exactly, the from-scratch path trains tokenizer + VQ once, JSONL data with bad rows trains."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from gotr1.policy.io import load_pretrained
from gotr1.policy.logprobs import token_logprobs
from gotr1.policy.rollout import Rollouts, SamplingConfig, left_pad
from gotr1.policy.tokenizer import encode_prompt
from gotr1.train.config import SFTConfig
from gotr1.train.data import BadRows, WorldExamples, chain_token_ids, make_sft_batch
from gotr1.train.losses import sft_group_losses, sft_losses
from gotr1.train.runlog import read_log
from gotr1.train.runtime import enable_gradient_checkpointing
from gotr1.train.sft import train_sft
from test_train_data import write_dataset
from test_train_helpers import TINY, launch_two_cpu_processes, make_tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def quick_config(folder, out, **overrides):
    values = dict(
        model=str(folder),
        output_dir=str(out),
        max_steps=4,
        batch_size=4,
        learning_rate=3e-3,
        warmup_steps=1,
        save_steps=2,
        save_total_limit=5,
        sample_steps=0,
        progress=False,
        logging_steps=1,
    )
    values.update(overrides)
    return SFTConfig(**values)


def test_sft_loss_is_the_teacher_forced_likelihood(tiny_folder):
    model, processor = load_pretrained(tiny_folder)
    tokenizer = processor.tokenizer
    source = WorldExamples(seed=2)
    examples = [(i, source[i]) for i in range(5)]
    batch = make_sft_batch(examples, tokenizer, model.model.vqmodel, 64, 0.0, 0, 600, BadRows())
    with torch.no_grad():
        losses = sft_losses(model, batch)
    # The same sequences as rollouts (left-padded prompts, right-padded chains), scored by the
    # log-prob code that GRPO uses: SFT trains exactly the distribution that is sampled.
    prompt_ids, prompt_mask = left_pad([encode_prompt(tokenizer, e.prompt) for _, e in examples], 2)
    chains = [chain_token_ids(tokenizer, e.chain) for _, e in examples]
    width = max(map(len, chains))
    chain_ids = torch.full((5, width), tokenizer.pad_token_id)
    chain_mask = torch.zeros(5, width, dtype=torch.long)
    for row, chain in enumerate(chains):
        chain_ids[row, : len(chain)] = torch.tensor(chain)
        chain_mask[row, : len(chain)] = 1
    rollouts = Rollouts(
        prompts=[e.prompt for _, e in examples],
        group_ids=torch.arange(5),
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        chain_ids=chain_ids,
        chain_mask=chain_mask,
        chain_logprobs=torch.zeros(5, width),
        image_ids=batch.image_ids,
        image_logprobs=torch.zeros(5, 64),
        truncated=torch.zeros(5, dtype=torch.bool),
        chain_texts=[],
        chains=[],
        images=[],
        sampling=SamplingConfig(cfg_weight=1.0),
    )
    with torch.no_grad():
        scored = token_logprobs(model, rollouts, tokenizer.pad_token_id, tokenizer.bos_token_id)
    chain_nll = -scored.chain.sum() / chain_mask.sum()
    assert losses["chain_loss"].item() == pytest.approx(chain_nll.item(), rel=1e-4)
    assert losses["image_loss"].item() == pytest.approx(-scored.image.mean().item(), rel=1e-4)
    assert losses["chain_tokens"].item() == chain_mask.sum().item()
    # Weights, and unconditional rows (no chain loss) change the loss as documented.
    weighted = sft_losses(model, batch, chain_weight=0.5, image_weight=2.0)
    expected = 0.5 * losses["chain_loss"] + 2.0 * losses["image_loss"]
    assert weighted["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    dropped = make_sft_batch(examples, tokenizer, model.model.vqmodel, 64, 0.999, 0, 600, BadRows())
    assert dropped.unconditional.all()
    blank = sft_losses(model, dropped)
    assert blank["chain_tokens"].item() == 0 and blank["chain_loss"].item() == 0
    blank["loss"].backward()  # the text head is in the graph (zero gradient), nothing is NaN
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def tiny_model_and_batch(folder, rows: int, seed: int, cfg_dropout: float):
    """The tiny model in training mode and an SFT batch of `rows` world examples."""
    model, processor = load_pretrained(folder)
    source = WorldExamples(seed=seed)
    batch = make_sft_batch(
        [(i, source[i]) for i in range(rows)], processor.tokenizer, model.model.vqmodel, 64,
        cfg_dropout, 0, 600, BadRows(),
    )  # fmt: skip
    return model.train(), batch


def gradients(model) -> dict[str, torch.Tensor]:
    """A copy of every parameter's gradient, by name."""
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(tiny_folder):
    model, batch = tiny_model_and_batch(tiny_folder, rows=3, seed=3, cfg_dropout=0.0)
    sft_losses(model, batch)["loss"].backward()
    plain = gradients(model)
    model.zero_grad()
    enable_gradient_checkpointing(model)
    assert model.model.language_model.gradient_checkpointing
    sft_losses(model, batch)["loss"].backward()
    for name, grad in plain.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-6), name


def test_length_groups_give_the_whole_batchs_loss_and_gradient(tiny_folder):
    model, batch = tiny_model_and_batch(tiny_folder, rows=7, seed=5, cfg_dropout=0.3)
    whole = sft_losses(model, batch)
    whole["loss"].backward()
    plain = gradients(model)

    parts = batch.length_groups(3)
    lengths = [part.text_mask.sum(1) for part in parts]
    assert [len(part) for part in parts] == [3, 2, 2]
    assert sorted(p for part in parts for p in part.prompts) == sorted(batch.prompts)
    assert all(a.max() <= b.min() for a, b in zip(lengths, lengths[1:], strict=False))
    assert all(
        part.text_ids.shape[1] == int(n.max()) for part, n in zip(parts, lengths, strict=True)
    )
    assert sum(part.text_ids.numel() for part in parts) < batch.text_ids.numel()  # less padding

    model.zero_grad()
    calls = []

    def step(part, totals, last):
        calls.append(last)
        losses = sft_losses(model, part, token_totals=totals)
        losses["loss"].backward()
        return losses

    sums = sft_group_losses(batch, 3, step)
    assert calls == [False, False, True]
    for key in ("loss", "chain_loss", "image_loss", "chain_tokens", "image_tokens"):
        assert sums[key] == pytest.approx(float(whole[key].detach()), rel=1e-5), key
    for name, grad in plain.items():
        got = dict(model.named_parameters())[name].grad
        assert torch.allclose(got, grad, rtol=1e-4, atol=1e-6), name
    assert batch.length_groups(1) == [batch] and len(batch.length_groups(50)) == len(batch)


def test_prompt_only_dropout_trains_and_logs_its_share(tiny_folder, tmp_path):
    plain = tmp_path / "plain"
    train_sft(quick_config(tiny_folder, plain, max_steps=1, save_steps=100))
    assert "prompt_only" not in read_log(plain)[0]  # off: the log is as before the setting
    run = tmp_path / "run"
    train_sft(quick_config(tiny_folder, run, max_steps=2, save_steps=100, prompt_only_dropout=0.5))
    shares = [row["prompt_only"] for row in read_log(run)]
    assert len(shares) == 2 and 0 < sum(shares) < 2


def test_sft_loss_falls_and_resume_is_exact(tiny_folder, tmp_path):
    # A longer run: the loss falls.
    run = tmp_path / "long"
    final = train_sft(
        quick_config(
            tiny_folder, run, max_steps=12, batch_size=6, learning_rate=5e-3, save_steps=100
        )
    )
    losses = [row["loss"] for row in read_log(run)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    trained = load_file(str(final / "model.safetensors"))  # a plain HF checkpoint
    start = load_file(str(tiny_folder / "model.safetensors"))
    frozen = [k for k in start if ".vqmodel." in k or ".vision_model." in k]
    assert frozen and all(torch.equal(trained[k], start[k]) for k in frozen)  # VQ stays frozen
    head = "model.generation_head.vision_head.weight"
    assert not torch.equal(trained[head], start[head])

    # The same run in length groups: the same gradients, so the same weights to float tolerance.
    grouped = train_sft(
        quick_config(
            tiny_folder, tmp_path / "grouped", max_steps=12, batch_size=6, learning_rate=5e-3,
            save_steps=100, length_groups=3,
        )
    )  # fmt: skip
    grouped_losses = [row["loss"] for row in read_log(tmp_path / "grouped")]
    assert grouped_losses == pytest.approx(losses, rel=1e-3)
    other = load_file(str(grouped / "model.safetensors"))
    assert all(torch.allclose(other[k], trained[k], atol=1e-3) for k in trained)

    # Interrupted after step 2 and resumed == uninterrupted (weights, optimizer, data position).
    whole = tmp_path / "whole"
    train_sft(quick_config(tiny_folder, whole, cfg_dropout=0.3))
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(whole / "checkpoint-2", part / "checkpoint-2")
    lines = (whole / "train_log.jsonl").read_text().splitlines()
    (part / "train_log.jsonl").write_text("\n".join(lines) + "\n")  # holds steps 3, 4 too
    train_sft(quick_config(tiny_folder, part, cfg_dropout=0.3), resume=True)
    a = load_file(str(whole / "final" / "model.safetensors"))
    b = load_file(str(part / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_log(part)] == [1, 2, 3, 4]
    assert read_log(part)[3]["loss"] == read_log(whole)[3]["loss"]
    state = json.loads((part / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["data_position"] == 16 and state["step"] == 4
    # Without --resume an existing run folder is refused.
    from gotr1.errors import UserError

    with pytest.raises(UserError, match="already holds checkpoints"):
        train_sft(quick_config(tiny_folder, part))


def test_from_scratch_trains_tokenizer_and_vq_once(tmp_path):
    import yaml

    preset = tmp_path / "tiny-preset.yaml"
    preset.write_text(yaml.safe_dump(TINY.to_dict()))
    config = SFTConfig(
        model=str(preset),
        output_dir=str(tmp_path / "run"),
        vq_steps=2,
        vq_batch_size=2,
        max_steps=2,
        batch_size=2,
        save_steps=10,
        sample_steps=2,
        num_samples=2,
        sample_max_chain_tokens=8,
        progress=False,
    )
    final = train_sft(config)
    init = tmp_path / "run" / "init"
    marker = json.loads((init / "gotr1_init.json").read_text())
    assert marker["vq"]["steps"] == 2 and marker["vq_train"]["step"] == 2
    stamp = (init / "model.safetensors").stat().st_mtime_ns
    # A second run with the same settings reuses the init folder (no second VQ training).
    config.overwrite_output_dir = True
    train_sft(config)
    assert (init / "model.safetensors").stat().st_mtime_ns == stamp
    model, processor = load_pretrained(final)
    assert len(processor.tokenizer) > 500  # the full world tokenizer
    rows = read_log(tmp_path / "run")
    assert "samples/parse_rate" in rows[-1] and "samples/world_soft" in rows[-1]
    samples = tmp_path / "run" / "samples" / "step-000002"
    assert {p.name for p in samples.iterdir()} >= {
        "samples.jsonl",
        "000-image.png",
        "000-layout.png",
    }
    line = json.loads((samples / "samples.jsonl").read_text().splitlines()[0])
    assert {"prompt", "chain", "objects", "world_score"} <= set(line)


def test_vq_from_a_model_of_another_shape_is_refused(tiny_folder, tmp_path):
    from gotr1.errors import UserError
    from gotr1.train.sft import train_world_tokenizer_and_vq

    with pytest.raises(UserError, match="vq_from: the VQ of .* does not have the shape of preset"):
        train_world_tokenizer_and_vq(tmp_path / "init", "world-tiny", vq_from=tiny_folder)
    # The same shape is copied exactly (tokenizer too), and no VQ training happens.
    import yaml

    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY.to_dict()))
    folder = train_world_tokenizer_and_vq(tmp_path / "ok", str(preset), seed=3, vq_from=tiny_folder)
    copied, donor = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(tiny_folder / "model.safetensors")),
    )
    vq_keys = [k for k in donor if ".vqmodel." in k]
    assert vq_keys and all(torch.equal(copied[k], donor[k]) for k in vq_keys)
    assert not torch.equal(copied["lm_head.weight"], donor["lm_head.weight"])  # fresh weights
    assert json.loads((folder / "gotr1_init.json").read_text())["vq_train"] == {}


def test_sft_on_got_jsonl_with_bad_rows(tiny_folder, tmp_path):
    path = write_dataset(tmp_path)
    config = quick_config(
        tiny_folder,
        tmp_path / "run",
        data=[str(path)],
        chain_field="got",
        max_steps=3,
        batch_size=3,
    )
    train_sft(config)
    rows = read_log(tmp_path / "run")
    assert rows[-1]["data/bad_rows"] >= 5 and rows[-1]["examples"] == 9
    with pytest.raises(Exception, match=r"got\.jsonl:2"):
        train_sft(
            quick_config(
                tiny_folder,
                tmp_path / "strict",
                data=[str(path)],
                chain_field="got",
                on_bad_row="error",
            )  # fmt: skip
        )


SFT_LAUNCH_SCRIPT = """
import json, sys
import torch
from gotr1.train.config import SFTConfig
from gotr1.train.sft import train_sft
torch.set_num_threads(1)
for values in json.loads(sys.argv[1]):
    train_sft(SFTConfig(**values))
"""


@pytest.mark.slow
def test_length_groups_in_two_processes_train_what_one_group_trains(tiny_folder, tmp_path):
    """Under DDP only a batch's last length group synchronises gradients, and it carries the
    earlier groups' gradients with it: two processes train the same weights in 3 groups as in 1
    (a group left out of the all-reduce would leave rank 0 with its own gradient alone)."""
    script = tmp_path / "launch_sft.py"
    script.write_text(SFT_LAUNCH_SCRIPT)
    runs = [
        quick_config(
            tiny_folder, tmp_path / f"groups-{groups}", max_steps=3, batch_size=6,
            learning_rate=5e-3, save_steps=100, cfg_dropout=0.3, length_groups=groups,
        ).to_dict()
        for groups in (1, 3)
    ]  # fmt: skip
    launch_two_cpu_processes(script, json.dumps(runs))
    one, three = (
        load_file(str(tmp_path / f"groups-{g}" / "final" / "model.safetensors")) for g in (1, 3)
    )
    start = load_file(str(tiny_folder / "model.safetensors"))
    head = "model.generation_head.vision_head.weight"
    assert not torch.equal(one[head], start[head])  # it trained
    # Float noise moves a weight by up to about 6e-5 (Adam divides small gradients' noise by their
    # own size); only the first group synchronised instead of the last moved one by 2.5e-2.
    assert all(torch.allclose(three[k], one[k], atol=1e-3) for k in one)
    assert [r["loss"] for r in read_log(tmp_path / "groups-3")] == pytest.approx(
        [r["loss"] for r in read_log(tmp_path / "groups-1")], rel=1e-4
    )
