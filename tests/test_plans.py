"""Plan-aware generation: the best of several plans by the chain stage, geometric repair of the
plan, and drawing the image from the chosen plan (`gotr1.eval.plans`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gotr1.boxes import relative_position
from gotr1.chain import format_chain, parse_chain
from gotr1.errors import UserError
from gotr1.eval.plans import (
    MIN_BOX,
    PlanOptions,
    draw_from_chains,
    plan_aware_rollout,
    prompt_relations,
    repair_boxes,
    repair_chain,
)
from gotr1.policy.rollout import SamplingConfig
from gotr1.rewards.protocol import JudgeScores


def test_relations_come_from_world_and_compbench_prompts():
    assert prompt_relations("a red circle left of a blue square") == [
        ("circle", "left of", "square")
    ]
    assert prompt_relations("a dog on the top of a bench") == [("dog", "above", "bench")]
    assert prompt_relations("a cat next to a lamp") == [("cat", "next to", "lamp")]
    assert prompt_relations("a red circle") == [] and prompt_relations("a cat and a dog") == []


def test_repair_makes_the_stated_relation_hold_and_keeps_sizes():
    names = ["red circle", "blue square"]
    boxes = [(600, 300, 800, 500), (100, 300, 300, 500)]  # the circle is right of the square
    assert "left of" not in relative_position(boxes[0], boxes[1])
    fixed, repairs = repair_boxes(names, boxes, [("circle", "left of", "square")])
    assert "left of" in relative_position(fixed[0], fixed[1])
    assert [b[2] - b[0] for b in fixed] == [200, 200] and [b[1] for b in fixed] == [300, 300]
    assert repairs == ["made 'red circle' left of 'blue square'"]
    same, none = repair_boxes(names, fixed, [("circle", "left of", "square")])
    assert same == fixed and none == []  # a plan that already holds is left alone


@pytest.mark.parametrize(
    ("relation", "axis"), [("above", 1), ("below", 1), ("right of", 0), ("next to", 0)]
)
def test_repair_holds_every_relation(relation, axis):
    boxes = [(400, 400, 600, 600), (420, 410, 620, 610)]  # on top of each other
    fixed, _ = repair_boxes(["a", "b"], boxes, [("a", relation, "b")])
    found = relative_position(fixed[0], fixed[1])
    assert (found & {"left of", "right of"}) if relation == "next to" else relation in found
    assert fixed[0][axis + 2] <= fixed[1][axis] or fixed[1][axis + 2] <= fixed[0][axis]


def test_repair_clamps_gives_a_minimum_size_and_separates_distinct_objects():
    names = ["red circle", "green square", "green square"]
    boxes = [(-50, 990, 30, 1200), (300, 300, 700, 700), (320, 320, 680, 680)]
    fixed, repairs = repair_boxes(names, boxes, [])
    assert all(0 <= v <= 1000 for box in fixed for v in box)
    assert all(b[2] - b[0] >= MIN_BOX and b[3] - b[1] >= MIN_BOX for b in fixed)
    assert fixed[2] == [320, 320, 680, 680]  # two objects of one name may overlap (a count)
    assert repairs[0] == "clamped 'red circle'"
    overlapping = [(300, 300, 700, 700), (310, 320, 690, 680)]
    apart, repairs = repair_boxes(["red circle", "blue square"], overlapping, [])
    assert repairs == ["separated 'red circle' and 'blue square'"]
    assert apart[0][2] <= apart[1][0] or apart[1][2] <= apart[0][0]


def test_repair_chain_changes_only_coordinates():
    text = format_chain(
        [("red circle", (600, 300, 800, 500)), ("blue square", (100, 300, 300, 500))],
        ["Here is a {object} on the right,", "and a {object}."],
    )
    repaired, repairs = repair_chain(parse_chain(text), "a red circle left of a blue square")
    assert repairs and repaired != text
    chain = parse_chain(repaired)
    assert chain.names == ["red circle", "blue square"] and not chain.errors
    assert "left of" in relative_position(chain.boxes[0], chain.boxes[1])
    assert repaired.startswith("Here is a ") and repaired.endswith(".")
    broken = text.replace("<|box_end|>", "", 1)  # a chain with a parse error is left alone
    assert repair_chain(parse_chain(broken), "a red circle left of a blue square") == (broken, [])


class LengthJudge:
    """A chain-stage judge that prefers longer chains (R_sem) and says R_spa = 0: plan scores
    known in advance, whatever a random model writes."""

    def semantic(self, prompts, chains):
        return JudgeScores(
            np.array([min(len(c.text), 500) / 500 for c in chains]), np.zeros(len(chains), bool)
        )

    def layout(self, prompts, chains, layout_images=None):
        return JudgeScores(np.zeros(len(chains)), np.zeros(len(chains), bool))


@pytest.fixture(scope="module")
def policy():
    from gotr1.policy.policy import Policy
    from test_rollout import make_policy

    torch.set_num_threads(1)
    return Policy(*make_policy())


def test_the_best_of_the_candidate_plans_is_drawn(policy):
    sampling = SamplingConfig(max_chain_tokens=16, cfg_weight=3.0)
    prompts = ["a red circle", "a blue square to the left of a green triangle"]
    generator = torch.Generator().manual_seed(0)
    rollouts, records = plan_aware_rollout(
        policy, prompts, 2, sampling, generator, PlanOptions(candidates=4), LengthJudge()
    )
    assert len(rollouts) == 4 and rollouts.group_ids.tolist() == [0, 0, 1, 1]
    assert rollouts.prompts == [p for p in prompts for _ in range(2)]
    assert len(rollouts.images) == 4 and rollouts.image_ids.shape == (4, 64)
    for row, record in enumerate(records):
        assert len(record.candidate_scores) == 4
        assert record.plan_score == max(record.candidate_scores)
        first_best = record.candidate_scores.index(record.plan_score)
        assert record.candidate_index == first_best  # ties: the earliest sampled
        assert rollouts.chain_texts[row] == record.sampled_chain
    again, _ = plan_aware_rollout(
        policy, prompts, 2, sampling, torch.Generator().manual_seed(0),
        PlanOptions(candidates=4), LengthJudge(),
    )  # fmt: skip
    assert torch.equal(again.image_ids, rollouts.image_ids)
    with pytest.raises(UserError, match="need a judge"):
        plan_aware_rollout(policy, prompts, 1, sampling, None, PlanOptions(candidates=2))


def test_an_image_is_drawn_from_the_given_plan(policy):
    chain = format_chain([("red circle", (100, 100, 400, 400))])
    sampling = SamplingConfig(cfg_weight=3.0)
    drawn = draw_from_chains(policy, ["a red circle"] * 2, [chain, chain], sampling,
                             torch.Generator().manual_seed(1))  # fmt: skip
    assert drawn.chain_texts == [chain, chain] and drawn.chains[0].names == ["red circle"]
    ids = policy.tokenizer.encode(chain, add_special_tokens=False)
    real = drawn.chain_mask[0].bool()
    assert drawn.chain_ids[0][real].tolist() == ids + [policy.special.begin_of_image]
    assert (drawn.image_logprobs < 0).all() and len(drawn.images) == 2
    assert not torch.equal(drawn.image_ids[0], drawn.image_ids[1])  # two samples, not one copy


def _choices(records):
    return [record.candidate_index for record in records]


def test_judge_noise_zero_chooses_as_before_and_large_noise_reproducibly_changes_choices(policy):
    """The noised choice uses the judge's scores plus seeded Gaussian noise; records keep the
    judge's own scores, and the noise stream leaves the sampled plans unchanged."""
    from gotr1.eval.plans import judge_noise_generator

    sampling = SamplingConfig(max_chain_tokens=16, cfg_weight=3.0)
    prompts = ["a red circle", "a blue square to the left of a green triangle"]

    def run(options, noise_seed=0):
        return plan_aware_rollout(
            policy, prompts, 2, sampling, torch.Generator().manual_seed(0), options,
            LengthJudge(), judge_noise_generator(noise_seed),
        )  # fmt: skip

    plain, plain_records = run(PlanOptions(candidates=4))
    zero, zero_records = run(PlanOptions(candidates=4, judge_noise=0.0))
    assert [r.to_dict() for r in zero_records] == [r.to_dict() for r in plain_records]
    assert torch.equal(zero.image_ids, plain.image_ids)
    assert "noised_scores" not in plain_records[0].to_dict()

    noisy, noisy_records = run(PlanOptions(candidates=4, judge_noise=10.0))
    assert _choices(noisy_records) != _choices(plain_records)  # the choice changed for a row
    for record, before in zip(noisy_records, plain_records, strict=True):
        assert record.candidate_scores == before.candidate_scores  # the judge's own, un-noised
        assert len(record.noised_scores) == 4
        assert record.candidate_index == record.noised_scores.index(max(record.noised_scores))
        assert record.plan_score == record.candidate_scores[record.candidate_index]
    again, again_records = run(PlanOptions(candidates=4, judge_noise=10.0))
    assert [r.to_dict() for r in again_records] == [r.to_dict() for r in noisy_records]
    assert torch.equal(again.image_ids, noisy.image_ids)  # the same seed repeats exactly
    _, other_records = run(PlanOptions(candidates=4, judge_noise=10.0), noise_seed=1)
    assert [r.noised_scores for r in other_records] != [r.noised_scores for r in noisy_records]


def test_judge_noise_is_recorded_only_when_set_and_refused_when_meaningless():
    assert PlanOptions(candidates=2).to_dict() == {"candidates": 2, "repair": False}
    noisy = PlanOptions(candidates=2, judge_noise=0.15).to_dict()
    assert noisy == {"candidates": 2, "repair": False, "judge_noise": 0.15}
    assert PlanOptions(**noisy) == PlanOptions(candidates=2, judge_noise=0.15)
    for sigma in (-0.1, float("nan"), float("inf")):
        with pytest.raises(UserError, match="judge noise must be a finite sigma >= 0"):
            PlanOptions(candidates=2, judge_noise=sigma)
    with pytest.raises(UserError, match="needs plan candidates > 1"):
        PlanOptions(judge_noise=0.1)
