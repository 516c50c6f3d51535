"""Training data: GoT-style JSONL with bad rows (file and line), SFT batches with CFG dropout,
indexed world sources and prompt files."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from gotr1.chain import BEGIN_OF_IMAGE
from gotr1.policy.io import load_pretrained
from gotr1.policy.rollout import prompt_only_ids, unconditional_ids
from gotr1.train.data import (
    BadRowError,
    BadRows,
    JsonlExamples,
    PromptSource,
    WorldExamples,
    cfg_dropped,
    chain_token_ids,
    make_sft_batch,
    prompt_only_dropped,
    read_prompt_file,
)
from gotr1.world import sample_examples
from test_train_helpers import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return load_pretrained(folder)


def write_dataset(folder):
    """A GoT-style JSONL file: 3 good rows, 4 bad ones (bad JSON, missing key, no image, not a
    dict) and one whose image file is corrupt (found only when a batch reads it)."""
    examples = sample_examples(4, seed=3)
    (folder / "images").mkdir()
    lines = []
    for index, example in enumerate(examples[:3]):
        example.render(96).save(folder / "images" / f"{index}.png")  # not 64 px: resized
        lines.append(
            json.dumps(
                {"prompt": example.prompt, "got": example.chain, "image": f"images/{index}.png"}
            )
        )
    lines.insert(1, "{not json")
    lines.append(json.dumps({"prompt": "a red circle", "image": "images/0.png"}))
    lines.append(json.dumps({"prompt": "a red circle", "got": "x", "image": "images/missing.png"}))
    lines.append("")  # blank lines are fine
    lines.append(json.dumps(["a list"]))
    (folder / "images" / "broken.png").write_bytes(b"not a png at all")
    lines.append(
        json.dumps(
            {"prompt": examples[3].prompt, "got": examples[3].chain, "image": "images/broken.png"}
        )
    )
    path = folder / "got.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_bad_rows_are_reported_with_file_and_line(tmp_path, tiny, capsys):
    model, processor = tiny
    path = write_dataset(tmp_path)
    bad = BadRows(policy="skip")
    data = JsonlExamples([path], bad, chain_field="got")
    assert len(data) == 4 and bad.count == 4
    assert [m.split(": ")[0] for m in bad.messages] == [
        f"{path}:2",
        f"{path}:5",
        f"{path}:6",
        f"{path}:8",
    ]
    assert "not valid JSON" in bad.messages[0] and "'got'" in bad.messages[1]
    assert "image file not found" in bad.messages[2] and "JSON object" in bad.messages[3]
    assert f"{path}:2" in capsys.readouterr().err
    # The corrupt image is found when its batch is built, reported, and left out of the batch.
    rows = [(i, data.rows[i]) for i in range(4)]
    batch = make_sft_batch(rows, processor.tokenizer, model.model.vqmodel, 64, 0.0, 0, 600, bad)
    assert len(batch) == 3 and bad.count == 5 and f"{path}:9" in bad.messages[-1]
    assert batch.image_ids.shape == (3, 64)
    # A chain over the token limit is a bad row too.
    short = make_sft_batch(rows[:1], processor.tokenizer, model.model.vqmodel, 64, 0.0, 0, 5, bad)
    assert short is None and "max_chain_tokens=5" in bad.messages[-1]
    # Under "error" the first bad row stops everything, naming file and line.
    with pytest.raises(BadRowError, match=f"{path}:2: not valid JSON"):
        JsonlExamples([path], BadRows(policy="error"), chain_field="got")
    with pytest.raises(BadRowError, match=f"{path}:9: cannot read image"):
        make_sft_batch(
            rows, processor.tokenizer, model.model.vqmodel, 64, 0.0, 0, 600, BadRows(policy="error")
        )


def test_sft_batch_layout_and_cfg_dropout(tiny):
    model, processor = tiny
    tokenizer = processor.tokenizer
    source = WorldExamples(seed=5)
    # Pick indices so that the batch has both conditional and unconditional rows.
    indices = list(range(40))
    dropped = [cfg_dropped(7, i, 0.3) for i in indices]
    assert 0 < sum(dropped) < len(indices)
    batch = make_sft_batch(
        [(i, source[i]) for i in indices],
        tokenizer,
        model.model.vqmodel,
        64,
        0.3,
        7,
        600,
        BadRows(),
    )
    boi = tokenizer.convert_tokens_to_ids(BEGIN_OF_IMAGE)
    assert batch.unconditional.tolist() == dropped
    assert (batch.text_ids[:, -1] == boi).all() and (batch.text_mask[:, -1] == 1).all()
    assert (batch.text_ids[:, 0] == tokenizer.bos_token_id)[batch.text_mask[:, 0].bool()].all()
    for row, index in enumerate(indices):
        example = source[index]
        if dropped[row]:
            assert (batch.labels[row] == -100).all()
            continue
        labels = batch.labels[row][batch.labels[row] != -100].tolist()
        assert labels == chain_token_ids(tokenizer, example.chain)
        assert tokenizer.decode(labels[:-1]).strip() == example.chain.strip()
        assert labels[-1] == boi
    # Unconditional rows are exactly the rollout's unconditional rows of the conditional batch.
    plain = make_sft_batch(
        [(i, source[i]) for i in indices],
        tokenizer,
        model.model.vqmodel,
        64,
        0.0,
        7,
        600,
        BadRows(),
    )
    blank = unconditional_ids(
        plain.text_ids, plain.text_mask, tokenizer.pad_token_id, tokenizer.bos_token_id
    )
    expected = torch.where(batch.unconditional[:, None], blank, plain.text_ids)
    assert torch.equal(batch.text_ids, expected) and torch.equal(batch.text_mask, plain.text_mask)
    assert torch.equal(batch.image_ids, plain.image_ids)
    assert batch.prompt_only is None  # prompt-only dropout off: the batch is as before it existed
    # About 10% by default, deterministic in (seed, index).
    rate = sum(cfg_dropped(0, i, 0.1) for i in range(4000)) / 4000
    assert 0.08 < rate < 0.12 and cfg_dropped(0, 17, 0.1) == cfg_dropped(0, 17, 0.1)


def test_sources_are_indexed_and_deterministic(tmp_path):
    first, second = WorldExamples(seed=1), WorldExamples(seed=1)
    for index in (0, 255, 256, 1000):
        a, b = first[index], second[index]
        assert (a.prompt, a.chain) == (b.prompt, b.chain)
        assert a.image.tobytes() == b.image.tobytes()
    assert WorldExamples(seed=2)[3].chain != first[3].chain
    drawn = WorldExamples(seed=1, chain_colors="drawn")
    assert [drawn[i].prompt for i in range(300)] == [first[i].prompt for i in range(300)]
    assert any(drawn[i].chain != first[i].chain for i in range(300))
    assert drawn[255].image.tobytes() == first[255].image.tobytes()
    prompts = PromptSource("world", seed=4)
    assert prompts.take(250, 10) == PromptSource("world", seed=4).take(250, 10)
    assert len(set(prompts.take(0, 64))) > 40
    text = tmp_path / "p.txt"
    text.write_text("a red circle\n\n a blue square \n")
    assert read_prompt_file(text) == ["a red circle", "a blue square"]
    file_source = PromptSource(str(text), seed=0)
    assert sorted(file_source.take(0, 2)) == ["a blue square", "a red circle"]
    assert sorted(file_source.take(2, 2)) == ["a blue square", "a red circle"]  # next epoch
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "two stars"}\n{"text": "x"}\n')
    from gotr1.errors import UserError

    with pytest.raises(UserError, match=f"{jsonl}:2: no string 'prompt'"):
        read_prompt_file(jsonl)
    with pytest.raises(UserError, match="holds no prompts"):
        (tmp_path / "e.txt").write_text("\n")
        read_prompt_file(tmp_path / "e.txt")


def test_square_images_are_centre_cropped(tmp_path):
    from gotr1.train.data import square_image

    image = Image.new("RGB", (120, 80), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 80))  # a blue strip on the left, cropped away
    square = square_image(image, 64)
    assert square.size == (64, 64) and square.getpixel((0, 32)) == (255, 0, 0)


def test_prompt_only_dropout_blanks_only_the_chain_and_masks_its_labels(tiny):
    model, processor = tiny
    tokenizer = processor.tokenizer
    source = WorldExamples(seed=5)
    indices = list(range(40))

    def batch(cfg_dropout, prompt_only_dropout):
        rows = [(i, source[i]) for i in indices]
        vq = model.model.vqmodel
        return make_sft_batch(
            rows, tokenizer, vq, 64, cfg_dropout, 7, 600, BadRows(), prompt_only_dropout
        )

    plain, dropped = batch(0.0, 0.0), batch(0.2, 0.3)
    chosen = [prompt_only_dropped(7, i, 0.2, 0.3) for i in indices]
    assert dropped.prompt_only.tolist() == chosen and 0 < sum(chosen) < len(indices)
    # cfg_dropout picks the same examples as without prompt-only dropout, and never the same.
    assert dropped.unconditional.tolist() == [cfg_dropped(7, i, 0.2) for i in indices]
    assert not (dropped.unconditional & dropped.prompt_only).any()
    # The prompt-only rows are the sampler's prompt-only rows of the conditional batch.
    pad, width = tokenizer.pad_token_id, plain.text_ids.shape[1]
    chain_start = torch.tensor(
        [width - len(chain_token_ids(tokenizer, source[i].chain)) for i in indices]
    )
    blank = prompt_only_ids(plain.text_ids, plain.text_mask, chain_start, pad)
    uncond = unconditional_ids(plain.text_ids, plain.text_mask, pad, tokenizer.bos_token_id)
    expected = torch.where(dropped.prompt_only[:, None], blank, plain.text_ids)
    expected = torch.where(dropped.unconditional[:, None], uncond, expected)
    assert torch.equal(dropped.text_ids, expected)
    assert torch.equal(dropped.text_mask, plain.text_mask)
    boi = tokenizer.convert_tokens_to_ids(BEGIN_OF_IMAGE)
    for row in torch.nonzero(dropped.prompt_only).flatten().tolist():
        start = int(chain_start[row])
        assert torch.equal(dropped.text_ids[row, :start], plain.text_ids[row, :start])  # prompt
        assert (dropped.text_ids[row, start:-1] == pad).all() and dropped.text_ids[row, -1] == boi
        assert (dropped.labels[row] == -100).all()  # image loss only
    kept = ~(dropped.prompt_only | dropped.unconditional)
    assert torch.equal(dropped.labels[kept], plain.labels[kept])
    assert torch.equal(dropped.image_ids, plain.image_ids)
    rate = sum(prompt_only_dropped(0, i, 0.1, 0.1) for i in range(4000)) / 4000
    assert 0.08 < rate < 0.12
