"""The condition-reliance probe (benchmarks/condition_reliance.py): the same chains redrawn with
the prompt or the chain blanked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gotr1.policy.io import load_pretrained
from gotr1.policy.rollout import special_ids
from test_train_helpers import make_tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "condition_reliance.py"
_spec = importlib.util.spec_from_file_location("condition_reliance", SCRIPT)
assert _spec is not None and _spec.loader is not None
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a yellow circle"]


def test_condition_reliance_redraws_the_same_chains_with_a_part_blanked(tmp_path, monkeypatch):
    folder = make_tiny_model(tmp_path / "tiny")
    _, processor = load_pretrained(folder)
    special = special_ids(processor.tokenizer)
    seen: list[tuple[list[list[int]], int]] = []
    real_generate = probe.generate_image_tokens

    def recording(parts, ids, mask, sampling, special_, generator):
        rows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        seen.append((rows, int(generator.initial_seed())))
        return real_generate(parts, ids, mask, sampling, special_, generator)

    monkeypatch.setattr(probe, "generate_image_tokens", recording)
    result = probe.condition_reliance(
        folder, PROMPTS, images_per_prompt=2, seed=3, max_chain_tokens=24
    )

    assert list(result) == list(probe.CONDITIONS)
    for summary in result.values():
        assert set(summary) == {"single_object", "counting", "spatial", "overall"}
        assert all(0.0 <= value <= 1.0 for value in summary.values())
    # One batch: the three conditions, each drawn with the same image seed.
    assert len(seen) == 3 and len({image_seed for _, image_seed in seen}) == 1
    full, chain_only, prompt_only = (rows for rows, _ in seen)
    assert len(full) == 6
    for whole, no_prompt, no_chain in zip(full, chain_only, prompt_only, strict=True):
        assert len(whole) == len(no_prompt) == len(no_chain)  # positions are unchanged
        assert whole[-1] == special.begin_of_image == no_prompt[-1] == no_chain[-1]
        # chain_only: BOS, then pad over the prompt turn, then the chain exactly.
        prompt_length = next(i for i in range(1, len(no_prompt)) if no_prompt[i] != special.pad)
        assert no_prompt[0] == whole[0] == special.bos and prompt_length > 5
        assert no_prompt[prompt_length:] == whole[prompt_length:]
        # prompt_only: the prompt exactly, then pad over the chain, then <begin_of_image>.
        assert no_chain[:prompt_length] == whole[:prompt_length]
        assert set(no_chain[prompt_length:-1]) <= {special.pad}
