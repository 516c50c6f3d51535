"""The embedded world: grammar round-trips, splits, scenes, detector accuracy and exact scoring."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

import pytest

from gotr1.chain import parse_chain
from gotr1.world import (
    CATEGORIES,
    COLORS,
    HELD_OUT_PAIRS,
    HELD_OUT_RELATIONS,
    RL_ONLY_PAIRS,
    RL_ONLY_RELATIONS,
    SHAPES,
    ObjectSpec,
    PromptSpec,
    Scene,
    SceneObject,
    benchmark_prompts,
    detect,
    parse_prompt,
    relation_holds,
    render_scene,
    sample_examples,
    sample_prompt,
    sample_scene,
    score_image,
    summarize,
)
from gotr1.world.detector_check import detector_accuracy


def test_every_sampled_prompt_parses_back_to_its_spec() -> None:
    rng = random.Random(0)
    for split in ("train", "test"):
        for category in CATEGORIES:
            for _ in range(150):
                prompt, spec = sample_prompt(rng, category, split)
                assert parse_prompt(prompt) == spec, prompt
                assert spec.category == category


def test_parse_prompt_reads_phrasings_and_rejects_foreign_text() -> None:
    assert parse_prompt("a red circle to the left of a blue square") == PromptSpec(
        "spatial", (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")), "left"
    )
    assert parse_prompt("A circle beneath a triangle.").relation == "below"
    assert parse_prompt("three green squares") == PromptSpec(
        "counting", (ObjectSpec("square", "green", 3),)
    )
    assert parse_prompt("a red circle and a blue circle").category == "color_binding"
    assert parse_prompt("a circle and a blue square").category == "two_objects"
    complex_spec = parse_prompt("a red circle on top of a square, and a yellow triangle")
    assert complex_spec.category == "complex" and len(complex_spec.objects) == 3
    for bad in ("a dog", "three circle", "one circles", "", "a red circle left of"):
        with pytest.raises(ValueError):
            parse_prompt(bad)


def test_world_has_the_required_vocabulary() -> None:
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert len(COLORS) >= 5
    colours = list(COLORS.values())
    gaps = [
        sum((a - b) ** 2 for a, b in zip(c1, c2, strict=True)) ** 0.5
        for i, c1 in enumerate(colours)
        for c2 in colours[i + 1 :]
    ]
    assert min(gaps) > 100  # well separated


def test_splits_hold_out_compositions_deterministically() -> None:
    train = sample_examples(2000, seed=3, split="train")
    test = benchmark_prompts("test", n=300, seed=0)
    assert len(test) == 300
    assert all(not e.spec.is_unseen for e in train)
    assert all(spec.is_unseen for _, spec in test)
    train_pairs = {(o.color, o.shape) for e in train for o in e.spec.objects if o.color}
    assert not train_pairs & HELD_OUT_PAIRS
    test_pairs = {(o.color, o.shape) for _, s in test for o in s.objects if o.color}
    test_triples = {
        (s.objects[0].shape, s.relation, s.objects[1].shape) for _, s in test if s.relation
    }
    assert test_pairs & HELD_OUT_PAIRS and test_triples & HELD_OUT_RELATIONS
    mirror = {"left": "right", "right": "left", "above": "below", "below": "above"}
    train_triples = {
        (e.spec.objects[0].shape, e.spec.relation, e.spec.objects[1].shape)
        for e in train
        if e.spec.relation
    }
    held_out_mirrors = {(b, mirror[r], a) for a, r, b in HELD_OUT_RELATIONS}
    assert train_triples and not train_triples & (HELD_OUT_RELATIONS | held_out_mirrors)
    assert benchmark_prompts("test", n=300, seed=0) == test
    assert benchmark_prompts("test", n=300, seed=1) != test
    assert {spec.category for _, spec in test} == set(CATEGORIES)


def _pairs_and_triples(specs: list[PromptSpec]) -> tuple[set[tuple], set[tuple]]:
    """Colour–shape pairs and (shape, relation, shape) triples, mirrors included."""
    mirror = {"left": "right", "right": "left", "above": "below", "below": "above"}
    pairs = {(o.color, o.shape) for s in specs for o in s.objects if o.color}
    triples = set()
    for s in specs:
        if s.relation:
            first, second = s.objects[0].shape, s.objects[1].shape
            triples |= {(first, s.relation, second), (second, mirror[s.relation], first)}
    return pairs, triples


def test_sft_split_leaves_out_the_rl_only_compositions_that_train_holds() -> None:
    sft = [e.spec for e in sample_examples(2000, seed=3, split="sft")]
    train = [e.spec for e in sample_examples(2000, seed=3, split="train")]
    assert not any(s.is_unseen or s.is_rl_only for s in sft)
    sft_pairs, sft_triples = _pairs_and_triples(sft)
    train_pairs, train_triples = _pairs_and_triples(train)
    assert not sft_pairs & (RL_ONLY_PAIRS | HELD_OUT_PAIRS)
    assert not sft_triples & (RL_ONLY_RELATIONS | HELD_OUT_RELATIONS)
    assert train_pairs >= RL_ONLY_PAIRS and train_triples >= RL_ONLY_RELATIONS
    assert not RL_ONLY_PAIRS & HELD_OUT_PAIRS
    # Every colour and every shape is still drawn in SFT, only in fewer combinations.
    assert {c for c, _ in sft_pairs} == set(COLORS) and {s for _, s in sft_pairs} == set(SHAPES)
    assert {s.category for s in sft} == set(CATEGORIES)
    # The train and test splits draw exactly what they drew before the sft split existed
    # (digests taken with the code before it).
    train_prompts = "|".join(e.prompt for e in sample_examples(300, seed=3, split="train"))
    test_prompts = "|".join(p for p, _ in benchmark_prompts("test", n=300, seed=0))
    assert hashlib.sha256(train_prompts.encode()).hexdigest()[:16] == "4cc6f5b2a44282c5"
    assert hashlib.sha256(test_prompts.encode()).hexdigest()[:16] == "36bd61f438c60051"


def test_examples_chains_name_every_object_with_its_true_box() -> None:
    for example in sample_examples(300, seed=0):
        chain = parse_chain(example.chain)
        assert chain.errors == []
        assert chain.boxes == [o.box for o in example.scene.objects]
        wanted = [o.name for o in example.spec.objects for _ in range(o.count)]
        assert chain.names == wanted
    phrasings = {e.chain.split(".")[0].split()[0] for e in sample_examples(100, seed=1)}
    assert len(phrasings) >= 3


def test_drawn_colour_chains_name_each_object_as_drawn_and_change_nothing_else() -> None:
    """chain_colors="drawn": the same prompts, scenes and boxes, every object named with the
    colour it is drawn in, so the chains name held-out colour-shape pairs the prompts never do."""
    by_prompt = sample_examples(600, seed=0)
    drawn = sample_examples(600, seed=0, chain_colors="drawn")
    assert [(e.prompt, e.scene) for e in drawn] == [(e.prompt, e.scene) for e in by_prompt]
    named_held_out = 0
    for example in drawn:
        chain = parse_chain(example.chain)
        assert chain.errors == []
        assert chain.names == [o.name for o in example.scene.objects]
        assert chain.boxes == [o.box for o in example.scene.objects]
        named_held_out += sum((o.color, o.shape) in HELD_OUT_PAIRS for o in example.scene.objects)
        assert not example.spec.is_unseen  # the prompts still hold none out
    assert named_held_out > 50
    colourless = [e for e in by_prompt if any(o.color is None for o in e.spec.objects)]
    assert colourless and any(e.chain != d.chain for e, d in zip(by_prompt, drawn, strict=True))
    with pytest.raises(ValueError, match="colors must be one of"):
        sample_examples(1, seed=0, chain_colors="random")


def test_sampled_scenes_satisfy_relations_and_objects_are_large_enough() -> None:
    rng = random.Random(5)
    for _ in range(200):
        _, spec = sample_prompt(rng, "spatial")
        scene = sample_scene(spec, rng)
        assert relation_holds(spec.relation, scene.objects[0].box, scene.objects[1].box)
        for obj in scene.objects:
            side = obj.box[2] - obj.box[0]
            assert side >= 200  # >= 12.8 px of 64: more than one 8-px token each way


def test_detector_exact_on_1000_clean_scenes_and_robust_to_degradation() -> None:
    report = detector_accuracy(scenes=1000, seed=0)
    assert report["clean_recall_iou0.9"] == 1.0
    assert report["clean_spurious"] == 0
    assert report["degraded_recall_iou0.7"] >= 0.98
    assert 0.5 < report["degraded_recall_iou0.9"] <= report["degraded_recall_iou0.7"]
    assert report["degraded_spurious"] <= 0.01 * report["objects"]


def test_detector_renders_at_other_sizes() -> None:
    scene = Scene((SceneObject("triangle", "blue", (0, 0, 500, 500)),))
    (detection,) = detect(render_scene(scene, 192))
    assert (detection.shape, detection.color, detection.box) == (
        "triangle",
        "blue",
        (0, 0, 500, 500),
    )
    assert 0.5 <= detection.confidence <= 1.0


def test_ground_truth_scores_one_on_every_category() -> None:
    rng = random.Random(11)
    for prompt, spec in benchmark_prompts("test", n=120, seed=2):
        result = score_image(prompt, render_scene(sample_scene(spec, rng)))
        assert result.correct and result.soft == 1.0, (prompt, result)


def _scene_for(prompt: str, seed: int = 0) -> tuple[PromptSpec, Scene]:
    spec = parse_prompt(prompt)
    return spec, sample_scene(spec, random.Random(seed))


def test_wrong_colour_lowers_the_score() -> None:
    spec, scene = _scene_for("a red circle and a blue square")
    wrong = Scene((replace(scene.objects[0], color="green"), scene.objects[1]))
    result = score_image(spec, render_scene(wrong))
    assert not result.correct and 0 < result.soft < 1


def test_wrong_count_lowers_the_score() -> None:
    spec, scene = _scene_for("three yellow triangles")
    too_few = Scene(scene.objects[:2])
    _, too_many = _scene_for("four yellow triangles")
    for wrong in (too_few, too_many):
        result = score_image(spec, render_scene(wrong))
        assert not result.correct and result.soft < 1


def test_wrong_relation_lowers_the_score() -> None:
    spec, scene = _scene_for("a red circle to the left of a blue square")
    a, b = scene.objects
    swapped = Scene((replace(a, box=b.box), replace(b, box=a.box)))
    result = score_image(spec, render_scene(swapped))
    assert not result.correct and result.soft == pytest.approx(5 / 6)


def test_clutter_lowers_the_score() -> None:
    """One image holding every colour-shape combination must not pass for any prompt."""
    boxes = [(x, y, x + 150, y + 150) for y in (40, 360, 680) for x in (20, 215, 410, 605, 800)]
    every_object = Scene(
        tuple(
            SceneObject(shape, color, box)
            for (shape, color), box in zip(
                [(s, c) for s in SHAPES for c in COLORS], boxes, strict=True
            )
        )
    )
    image = render_scene(every_object, 128)
    assert len(detect(image)) == 15
    scores = [score_image(spec, image) for _, spec in benchmark_prompts("test", n=300, seed=0)]
    assert not any(score.correct for score in scores)
    assert sum(score.soft for score in scores) / len(scores) < 0.8
    spec, scene = _scene_for("a red circle")
    extra = SceneObject("square", "blue", (600, 600, 900, 900))
    assert score_image(spec, render_scene(Scene(scene.objects))).soft == 1.0
    cluttered = score_image(spec, render_scene(Scene((*scene.objects, extra))))
    assert not cluttered.correct and dict(cluttered.requirements)["only asked objects"] == 0.5


def test_a_copy_on_the_wrong_side_breaks_the_relation() -> None:
    spec = parse_prompt("a red circle to the left of a blue square")
    left = SceneObject("circle", "red", (50, 400, 250, 600))
    square = SceneObject("square", "blue", (400, 400, 600, 600))
    right = SceneObject("circle", "red", (750, 400, 950, 600))
    assert score_image(spec, render_scene(Scene((left, square)))).correct
    both_sides = dict(score_image(spec, render_scene(Scene((left, square, right)))).requirements)
    assert both_sides["red circle left blue square"] == 0.0


def test_missing_object_and_blank_image() -> None:
    spec, scene = _scene_for("a red circle on top of a square, and a yellow triangle")
    assert score_image(spec, render_scene(Scene(scene.objects[:2]))).soft < 1
    assert score_image(spec, render_scene(Scene(()))).soft == 0.0


def test_summarize_means_category_means() -> None:
    summary = summarize(["spatial", "spatial", "counting"], [1.0, 0.0, 1.0])
    assert summary == {"counting": 1.0, "spatial": 0.5, "overall": 0.75}


def test_world_preview_page_escapes_chains_and_links_its_images(tmp_path) -> None:
    import re

    from gotr1.cli import main

    assert main(["world", "preview", "--out", str(tmp_path), "--per-category", "1"]) == 0
    page = (tmp_path / "index.html").read_text()
    assert "&lt;|obj_start|&gt;" in page and "<|obj_start|>" not in page
    for category in CATEGORIES:
        assert f"train · {category}" in page and f"test · {category}" in page
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 2 * 2 * len(CATEGORIES)
    assert all((tmp_path / source).is_file() for source in sources)
    names = re.findall(r"&lt;\|obj_start\|&gt;([^&]+)&lt;\|obj_end\|&gt;", page)
    assert names and all(len(name.split()) == 2 for name in names)  # drawn colours by default
    words = tmp_path / "words"
    assert main(["world", "preview", "--out", str(words), "--chain-colors", "prompt"]) == 0
    named = re.findall(
        r"&lt;\|obj_start\|&gt;([^&]+)&lt;\|obj_end\|&gt;", (words / "index.html").read_text()
    )
    assert any(len(name.split()) == 1 for name in named)  # "a circle" stays `circle`
    assert main(["world", "preview", "--out", str(tmp_path), "--per-category", "0"]) == 2
