"""The world judge on hundreds of generated cases: truth scores 1.0, each corruption lowers its part."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from gotr1.chain import Chain, ChainObject, box_iou, format_chain, parse_chain
from gotr1.rewards import DualStageReward, RewardConfig, WorldJudge, match_boxes
from gotr1.rewards.world_judge import layout_score, parse_object_name, semantic_score
from gotr1.world import COLORS, Scene, parse_prompt, render_scene, sample_examples, sample_scene

N_CASES = 240


@pytest.fixture(scope="module")
def examples():
    return sample_examples(N_CASES, seed=11) + sample_examples(60, seed=12, split="test")


@pytest.fixture(scope="module")
def judge():
    return WorldJudge()


def _score(judge, prompts, chains, images, **config):
    return DualStageReward(judge, RewardConfig(**config)).score(prompts, chains, images)


def test_ground_truth_triples_score_one_everywhere(examples, judge):
    prompts = [e.prompt for e in examples]
    rewards = _score(judge, prompts, [e.chain for e in examples], [e.render() for e in examples])
    assert len(rewards) == len(examples) == 300
    for name in ("sem", "spa", "ri", "pi"):
        np.testing.assert_array_equal(rewards.component(name), 1.0, err_msg=name)
    np.testing.assert_array_equal(rewards.total, 2.0)  # R_PI * (R_sem + R_spa) * R_RI
    assert rewards.failure_counts == {"sem": 0, "spa": 0, "ri": 0, "pi": 0}
    # Larger renders of the same scenes are judged the same (boxes are fractions of the image).
    big = _score(
        judge,
        prompts[:30],
        [e.chain for e in examples[:30]],
        [e.render(128) for e in examples[:30]],
    )
    np.testing.assert_array_equal(big.total, 2.0)


def _other_colour(colour: str, rng: random.Random) -> str:
    return rng.choice([c for c in COLORS if c != colour])


def test_wrong_colour_in_chain_lowers_semantic_only_where_asked(examples, judge):
    rng = random.Random(0)
    prompts, chains, images = [], [], []
    for example in examples:
        chain = parse_chain(example.chain)
        coloured = [
            i for i, o in enumerate(chain.objects) if parse_object_name(o.name)[0] is not None
        ]
        if not coloured:
            continue
        index = rng.choice(coloured)
        colour, shape = parse_object_name(chain.objects[index].name)
        objects = list(chain.objects)
        objects[index] = ChainObject(f"{_other_colour(colour, rng)} {shape}", objects[index].box)
        prompts.append(example.prompt)
        chains.append(format_chain(objects))
        images.append(example.render())
    assert len(prompts) > 150
    rewards = _score(judge, prompts, chains, images)
    assert (rewards.sem < 1.0).all()
    np.testing.assert_array_equal(rewards.pi, 1.0)  # the image still matches the prompt


def test_missing_object_in_chain_lowers_semantic(examples, judge):
    rng = random.Random(1)
    chains = []
    for example in examples:
        objects = list(parse_chain(example.chain).objects)
        objects.pop(rng.randrange(len(objects)))
        chains.append(format_chain(objects) if objects else "I will draw nothing.")
    rewards = _score(judge, [e.prompt for e in examples], chains, [e.render() for e in examples])
    assert (rewards.sem < 1.0).all()
    # With fewer planned objects, fewer are placed: the layout also falls short.
    assert (rewards.spa < 1.0).all()


def test_extra_object_in_chain_is_a_contradiction(examples, judge):
    chains = []
    for example in examples:
        objects = list(parse_chain(example.chain).objects)
        objects.append(ChainObject("purple square", (0, 0, 10, 10)))
        objects.append(ChainObject("yellow triangle", (990, 990, 1000, 1000)))
        chains.append(format_chain(objects))
    rewards = _score(judge, [e.prompt for e in examples], chains, [e.render() for e in examples])
    assert (rewards.sem < 1.0).all()


def test_violated_relation_lowers_layout(examples, judge):
    cases = [e for e in examples if e.spec.relation is not None]
    assert len(cases) >= 80
    chains = []
    for example in cases:
        objects = list(parse_chain(example.chain).objects)
        first, second = objects[0], objects[1]  # chains list objects in the prompt's order
        objects[0], objects[1] = replace(first, box=second.box), replace(second, box=first.box)
        chains.append(format_chain(objects))
    rewards = _score(judge, [e.prompt for e in cases], chains, [e.render() for e in cases])
    assert (rewards.spa < 1.0).all()
    np.testing.assert_array_equal(rewards.sem, 1.0)  # the names are still right
    # The image still has its objects where the truth put them, not where the swapped plan says.
    assert (rewards.ri < 1.0).all()


def test_colliding_boxes_lower_layout(examples, judge):
    cases = [e for e in examples if len(e.scene.objects) >= 2]
    chains = []
    for example in cases:
        objects = list(parse_chain(example.chain).objects)
        objects[1] = replace(objects[1], box=objects[0].box)
        chains.append(format_chain(objects))
    rewards = _score(judge, [e.prompt for e in cases], chains, [e.render() for e in cases])
    assert (rewards.spa < 1.0).all()


def test_objects_elsewhere_than_planned_lower_region_reward(examples, judge):
    rng = random.Random(2)
    images = []
    for example in examples:
        while True:
            scene = sample_scene(example.spec, rng)
            if all(
                a.box != b.box for a, b in zip(scene.objects, example.scene.objects, strict=True)
            ):
                break
        # Same shapes and colours as planned, other places.
        moved = Scene(
            tuple(
                replace(o, box=n.box)
                for o, n in zip(example.scene.objects, scene.objects, strict=True)
            )
        )
        images.append(render_scene(moved))
    rewards = _score(judge, [e.prompt for e in examples], [e.chain for e in examples], images)
    assert (rewards.ri < 1.0).all()
    np.testing.assert_array_equal(rewards.sem, 1.0)
    np.testing.assert_array_equal(rewards.spa, 1.0)


def test_image_that_misses_the_prompt_lowers_image_reward(examples, judge):
    rng = random.Random(3)
    images = []
    for example in examples:
        objects = list(example.scene.objects)
        index = rng.randrange(len(objects))
        if rng.random() < 0.5 or len(objects) == 1:
            spec_object = next(
                o
                for o in example.spec.objects
                if o.shape == objects[index].shape
                and (o.color is None or o.color == objects[index].color)
            )
            if spec_object.color is None:  # any colour would do: change the shape instead
                new_shape = next(
                    s for s in ("circle", "square", "triangle") if s != objects[index].shape
                )
                objects[index] = replace(objects[index], shape=new_shape)
            else:
                objects[index] = replace(
                    objects[index], color=_other_colour(objects[index].color, rng)
                )
        else:
            objects.pop(index)
        images.append(render_scene(Scene(tuple(objects))))
    rewards = _score(judge, [e.prompt for e in examples], [e.chain for e in examples], images)
    assert (rewards.pi < 1.0).all()
    np.testing.assert_array_equal(rewards.sem, 1.0)


def test_two_objects_with_one_name_cannot_claim_one_detection(judge):
    prompt = "two red circles"
    chain = format_chain([("red circle", (0, 0, 250, 250)), ("red circle", (500, 500, 750, 750))])
    spec = parse_prompt(prompt)
    both = sample_scene(spec, random.Random(4))
    both = Scene(
        (
            replace(both.objects[0], box=(0, 0, 250, 250)),
            replace(both.objects[1], box=(500, 500, 750, 750)),
        )
    )
    one = Scene(both.objects[:1])
    rewards = _score(
        judge, [prompt, prompt], [chain, chain], [render_scene(both), render_scene(one)]
    )
    assert rewards.ri[0] == pytest.approx(1.0)
    assert rewards.ri[1] == pytest.approx(0.5)  # the one circle matches only one planned object


def test_copies_of_a_planned_object_do_not_raise_the_region_reward(judge):
    """The judge grounds a name without seeing the plan, so scattering copies in the hope that
    one lands on the planned box gains nothing."""
    from gotr1.world import SceneObject

    prompt = "a red circle"
    chain = format_chain([("red circle", (600, 600, 800, 800))])
    drawn = SceneObject("circle", "red", (0, 0, 400, 400))  # the main circle, elsewhere
    copies = [
        SceneObject("circle", "red", (x, y, x + 200, y + 200)) for x, y in ((600, 600), (600, 0))
    ]
    images = [render_scene(Scene((drawn,))), render_scene(Scene((drawn, *copies)))]
    rewards = _score(judge, [prompt] * 2, [chain] * 2, images)
    assert rewards.ri[0] == 0.0 and rewards.ri[1] == 0.0
    (answer,) = judge.ground(images[1:], [["red circle"]]).candidates[0][0]  # one planned, one box
    assert box_iou(answer, (0, 0, 400, 400)) > 0.9  # the largest: the main circle


def test_match_boxes_is_one_to_one_and_prefers_the_best_overlap():
    names = ["red circle", "red circle", "blue square"]
    planned = [(0, 0, 100, 100), (90, 0, 190, 100), (500, 500, 600, 600)]
    shared = [(95, 0, 195, 100)]  # overlaps both circles, best with the second
    ious = match_boxes(names, planned, [shared, shared, [(500, 500, 600, 600)]])
    assert ious[0] == 0.0
    assert ious[1] == pytest.approx(0.9047619, rel=1e-6)
    assert ious[2] == 1.0
    with pytest.raises(ValueError):
        match_boxes(names, planned[:2], [[], [], []])


def test_parse_object_name_reads_world_names():
    assert parse_object_name("red circle") == ("red", "circle")
    assert parse_object_name("Red Circles") == ("red", "circle")
    assert parse_object_name("circle") == (None, "circle")
    assert parse_object_name("red blue circle") == (None, None)
    assert parse_object_name("vase") == (None, None)


def test_scores_by_hand():
    spec = parse_prompt("a red circle")
    assert semantic_score(spec, ["red circle"]) == 1.0
    # present yes, colour no, and the blue circle fills no slot: 1 / (2 + 1)
    assert semantic_score(spec, ["blue circle"]) == pytest.approx(1 / 3)
    assert semantic_score(spec, []) == 0.0
    counting = parse_prompt("three squares")
    # present 3/3 (capped), exact count no, one extra: 1 / (2 + 1)
    assert semantic_score(counting, ["square"] * 4) == pytest.approx(1 / 3)
    spatial = parse_prompt("a red circle to the left of a blue square")
    left, right = (0, 400, 200, 600), (700, 400, 900, 600)
    assert layout_score(spatial, ["red circle", "blue square"], [left, right]) == 1.0
    # placed 1 + 1, no collision 1, relation 0
    assert layout_score(spatial, ["red circle", "blue square"], [right, left]) == pytest.approx(
        0.75
    )
    # a zero-area box is not drawn, so its object is not placed
    assert layout_score(spatial, ["red circle", "blue square"], [(5, 5, 5, 9), right]) < 0.75


def test_prompt_outside_the_grammar_is_a_counted_failure(examples, judge):
    prompts = [examples[0].prompt, "a photo of a cat on a sofa", examples[1].prompt]
    chains = [examples[0].chain, "a cat", examples[1].chain]
    images = [examples[0].render(), examples[1].render(), examples[1].render()]
    zero = _score(judge, prompts, chains, images)
    assert zero.failure_counts == {"sem": 1, "spa": 1, "ri": 0, "pi": 1}
    assert np.isnan(zero.sem[1]) and zero.total[1] == 0.0 and zero.keep.all()
    assert "not a world prompt" in zero.sample(1)["failure_reasons"]["sem"]
    dropped = _score(judge, prompts, chains, images, on_failure="drop")
    assert dropped.keep.tolist() == [True, False, True]
    assert np.isnan(dropped.total[1]) and dropped.total[0] == 2.0
    assert dropped.group_keep([0, 0, 1]).tolist() == [False, False, True]


def test_empty_and_garbage_chains_score_low_without_crashing(examples, judge):
    garbage = [
        "",
        "<|obj_start|>red circle<|obj_end|>",
        "<|box_start|>(1,2),(3,4)<|box_end|>",
        "\x00" * 30,
    ]
    prompts = [examples[i].prompt for i in range(len(garbage))]
    images = [examples[i].render() for i in range(len(garbage))]
    rewards = _score(judge, prompts, garbage, images)
    np.testing.assert_array_equal(rewards.ri, 0.0)
    np.testing.assert_array_equal(rewards.total, 0.0)
    assert (rewards.sem < 1).all() and not rewards.any_failed.any()


def test_chain_objects_accept_chain_instances(examples, judge):
    chains = [parse_chain(e.chain) for e in examples[:5]]
    assert all(isinstance(c, Chain) for c in chains)
    rewards = _score(
        judge, [e.prompt for e in examples[:5]], chains, [e.render() for e in examples[:5]]
    )
    np.testing.assert_array_equal(rewards.total, 2.0)


def test_clean_fraction_counts_what_the_prompt_did_not_ask_for():
    from gotr1.rewards.clean_image import CleanImageReward, clean_fraction, count_extra_objects
    from gotr1.world import (
        Scene,
        SceneObject,
        detect,
        parse_prompt,
        render_scene,
        sample_scene,
    )

    rng = random.Random(3)
    for prompt in ("a red circle and a blue square", "three green triangles", "a square"):
        spec = parse_prompt(prompt)
        scene = sample_scene(spec, rng)
        assert count_extra_objects(spec, detect(render_scene(scene, 32))) == 0
        assert clean_fraction(spec, detect(render_scene(scene, 32))) == 1.0
    spec = parse_prompt("a red circle")
    clutter = Scene(
        (
            SceneObject("circle", "red", (0, 0, 250, 250)),
            SceneObject("circle", "red", (500, 0, 750, 250)),  # a second red circle: extra
            SceneObject("square", "blue", (0, 500, 250, 750)),
            SceneObject("triangle", "green", (500, 500, 750, 750)),
        )
    )
    detections = detect(render_scene(clutter, 64))
    assert count_extra_objects(spec, detections) == 3
    assert clean_fraction(spec, detections) == pytest.approx(1 / 4)
    scores = CleanImageReward()(
        ["a red circle", "not a world prompt"], [render_scene(clutter, 64)] * 2
    )
    assert scores[0] == pytest.approx(0.25) and scores[1] != scores[1]  # NaN: a judge failure
