"""The world benchmark (`evaluate_world`, `gotr1 eval world`) and the world in the official layouts."""

from __future__ import annotations

import json
import random

import pytest
import torch

from gotr1.errors import UserError
from gotr1.eval import geneval
from gotr1.eval.generation import load_policy
from gotr1.eval.prompt_parsing import find_spatial_relation, parse_numeracy, parse_spatial
from gotr1.eval.scorers import WorldEvidenceScorer
from gotr1.eval.world_bench import (
    evaluate_world,
    paired_delta_standard_error,
    world_compbench_prompts,
    world_geneval_metadata,
    world_summary_markdown,
    write_world_results,
)
from gotr1.policy.rollout import SamplingConfig
from gotr1.world import (
    CATEGORIES,
    PromptSpec,
    benchmark_prompts,
    render_scene,
    sample_scene,
    score_image,
)
from test_eval_e2e import build_world_model_folder, run_cli

SAMPLING = SamplingConfig(max_chain_tokens=8, cfg_weight=3.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, one_thread):
    return build_world_model_folder(tmp_path_factory.mktemp("world-policy"), seed=1)


@pytest.fixture(scope="module")
def policy(model_dir):
    return load_policy(model_dir, device="cpu")


@pytest.fixture(scope="module")
def prompts():
    return benchmark_prompts("test", 12, seed=0)  # two per category


@pytest.fixture(scope="module")
def result(policy, prompts):
    return evaluate_world(
        policy, prompts, seed=3, num_generations=2, sampling=SAMPLING, prompts_per_batch=5
    )


def test_evaluate_world_scores_every_image_exactly(result, prompts):
    samples = result["samples"]
    assert len(samples) == 24
    assert [(s["prompt_index"], s["sample_index"]) for s in samples] == [
        (p, k) for p in range(12) for k in range(2)
    ]
    for sample in samples:
        text, spec = prompts[sample["prompt_index"]]
        assert sample["prompt"] == text and sample["category"] == spec.category
        score = score_image(spec, sample["image"])  # recomputed from the returned image
        assert sample["soft"] == pytest.approx(score.soft)
        assert sample["correct"] == score.correct
        # the world judge's R_PI is the same exact score of the same image
        assert sample["rewards"]["pi"] == pytest.approx(score.soft)
        assert set(sample["rewards"]) == {"sem", "spa", "ri", "pi", "total"}
        assert isinstance(sample["chain"], str) and sample["image"].size == (64, 64)
    for metric, key in (("soft", "soft"), ("accuracy", "correct")):
        table = result[metric]
        assert list(table) == [*CATEGORIES, "overall"]
        for category in CATEGORIES:
            values = [float(s[key]) for s in samples if s["category"] == category]
            assert table[category] == pytest.approx(sum(values) / len(values))
        assert table["overall"] == pytest.approx(sum(table[c] for c in CATEGORIES) / 6)
    assert result["images"] == dict.fromkeys(CATEGORIES, 4)
    assert result["settings"]["cfg_weight"] == 3.0 and result["settings"]["num_generations"] == 2
    assert 0.0 <= result["chains"]["truncated"] <= 1.0


def test_evaluate_world_is_reproducible_from_its_seed(policy, prompts, result):
    again = evaluate_world(
        policy,
        prompts,
        seed=3,
        num_generations=2,
        sampling=SAMPLING,
        prompts_per_batch=5,
        with_rewards=False,
    )
    assert [s["chain"] for s in again["samples"]] == [s["chain"] for s in result["samples"]]
    assert again["soft"] == result["soft"] and "rewards" not in again["samples"][0]
    other = evaluate_world(
        policy, prompts[:3], seed=4, num_generations=2, sampling=SAMPLING, with_rewards=False
    )
    assert [s["chain"] for s in other["samples"]] != [s["chain"] for s in result["samples"][:6]]


def test_evaluate_world_accepts_prompt_texts_and_rejects_others(policy):
    result = evaluate_world(
        policy, ["a red circle", "two blue squares"], sampling=SAMPLING, with_rewards=False
    )
    assert [s["category"] for s in result["samples"]] == ["single_object", "counting"]
    assert list(result["soft"]) == ["single_object", "counting", "overall"]
    with pytest.raises(ValueError, match="a green bench"):
        evaluate_world(policy, ["a green bench"], sampling=SAMPLING)
    with pytest.raises(ValueError, match="num_generations"):
        evaluate_world(policy, ["a red circle"], num_generations=0)


def _samples(category, scores):
    """Samples of one category: ``scores[p]`` lists prompt p's image scores."""
    return [
        {"category": category, "prompt_index": p, "soft": score}
        for p, images in enumerate(scores)
        for score in images
    ]


def test_paired_delta_standard_error_pairs_each_prompts_mean():
    # prompt differences of the image means: +0.5, +0.25, 0 -> sd 0.25 over sqrt(3) prompts
    before = _samples("spatial", [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]])
    after = _samples("spatial", [[0.5, 0.5], [1.0, 0.5], [1.0, 1.0]])
    errors = paired_delta_standard_error(before, after)
    assert errors["spatial"] == pytest.approx(0.25 / 3**0.5)
    assert errors["overall"] == pytest.approx(0.25 / 3**0.5)
    # a shift every prompt shares has no error; overall = sqrt(sum of squares) / categories
    shifted = _samples("counting", [[0.0], [0.5]]), _samples("counting", [[0.5], [1.0]])
    both = paired_delta_standard_error(before + shifted[0], after + shifted[1])
    assert both["counting"] == pytest.approx(0.0)
    assert both["overall"] == pytest.approx(0.25 / 3**0.5 / 2)
    # one prompt says nothing about the spread: None, and so is overall
    lone = paired_delta_standard_error(
        before + _samples("complex", [[0.0]]), after + _samples("complex", [[1.0]])
    )
    assert lone["complex"] is None and lone["overall"] is None
    # damaged rows are left out; nothing left means no error at all
    damaged = [
        {"category": "spatial", "prompt_index": 0},
        {"soft": 1.0},
        {**before[0], "soft": None},
    ]
    assert paired_delta_standard_error(before + damaged, after) == errors
    assert paired_delta_standard_error([], []) == {"overall": None}


def test_paired_delta_standard_error_of_a_real_evaluation(result):
    errors = paired_delta_standard_error(result["samples"], result["samples"])
    assert set(errors) == {*CATEGORIES, "overall"}
    assert all(error == pytest.approx(0.0) for error in errors.values())


def test_write_world_results_files(result, tmp_path):
    paths = write_world_results(result, tmp_path)
    summary = json.loads(paths["summary"].read_text())
    assert summary["soft"] == result["soft"] and "samples" not in summary
    assert summary["judged_by"].startswith("world")
    rows = [json.loads(line) for line in paths["samples"].read_text().splitlines()]
    assert len(rows) == 24
    from PIL import Image

    for row, sample in zip(rows, result["samples"], strict=True):
        assert row["chain"] == sample["chain"] and row["soft"] == sample["soft"]
        with Image.open(tmp_path / row["image"]) as image:
            assert image.size == (64, 64)
    markdown = paths["markdown"].read_text()
    assert markdown == world_summary_markdown(result)
    assert "judged by world" in markdown and "| spatial |" in markdown


def test_eval_world_command(model_dir, tmp_path):
    out = tmp_path / "w"
    argv = ["eval", "world", "--model", str(model_dir), "--out", str(out), "--limit", "2"]
    argv += ["--categories", "spatial", "counting", "--images-per-prompt", "2"]
    argv += ["--max-chain-tokens", "8", "--cfg-weight", "3", "--device", "cpu"]
    assert run_cli(*argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == {"counting": 4, "spatial": 4}
    assert summary["model"] == str(model_dir) and summary["settings"]["split"] == "test"
    assert len((out / "samples.jsonl").read_text().splitlines()) == 8
    assert summary["settings"]["plans"] == {"candidates": 1, "repair": False}

    planned = tmp_path / "planned"
    argv[argv.index(str(out))] = str(planned)
    assert run_cli(*argv, "--plan-candidates", "3", "--repair-plans") == 0
    summary = json.loads((planned / "summary.json").read_text())
    assert summary["settings"]["plans"] == {"candidates": 3, "repair": True}
    samples = [json.loads(line) for line in (planned / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8
    for sample in samples:  # the drawn plan is the best of three by the world judge's chain stage
        plan = sample["plan"]
        assert len(plan["candidate_scores"]) == 3
        assert plan["plan_score"] == max(plan["candidate_scores"])
        assert sample["chain"] == plan["sampled_chain"] or plan["repairs"]
    guided = tmp_path / "guided"
    argv[argv.index(str(planned))] = str(guided)
    assert run_cli(*argv, "--plan-cfg-weight", "5") == 0
    summary = json.loads((guided / "summary.json").read_text())
    assert summary["settings"]["plan_cfg_weight"] == 5.0
    with pytest.raises(UserError, match="plan candidates must be >= 1"):
        run_cli(*argv, "--plan-candidates", "0")
    with pytest.raises(UserError, match="unknown world category colour"):
        run_cli("eval", "world", "--model", str(model_dir), "--categories", "colour")
    with pytest.raises(UserError, match="nope"):
        run_cli("eval", "world", "--model", str(tmp_path / "nope"), "--out", str(out))


# --------------------------------------------------------------------------- official layouts


def _mirrored(spec: PromptSpec) -> PromptSpec:
    opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}
    return PromptSpec(spec.category, spec.objects, opposite[spec.relation])


def test_geneval_metadata_of_world_prompts_agrees_with_the_world_judge():
    """GenEval's rules over the world scorer's detections rate right scenes right and scenes with
    the relation mirrored wrong, exactly as the world's own judge does."""
    prompts = benchmark_prompts("test", 60, seed=11)
    metadata = world_geneval_metadata(prompts)
    scorer = WorldEvidenceScorer()
    rng = random.Random(1)
    mirrored = 0
    for (text, spec), meta in zip(prompts, metadata, strict=True):
        assert meta["prompt"] == text
        geneval.validate_metadata(meta)
        scenes = [sample_scene(spec, rng)]
        if spec.relation is not None:
            scenes.append(sample_scene(_mirrored(spec), rng))
            mirrored += 1
        for scene in scenes:
            image = render_scene(scene, 64)
            row = geneval.evaluate_image(scorer, image, meta)
            assert row["correct"] == score_image(spec, image).correct, (text, row["reason"])
        if spec.relation is not None:
            assert not geneval.evaluate_image(scorer, render_scene(scenes[1], 64), meta)["correct"]
    assert mirrored >= 15
    tags = {m["tag"] for m in metadata}
    assert tags <= {
        "single_object",
        "colors",
        "two_object",
        "color_attr",
        "counting",
        "position",
        "complex",
    }
    counting = next(m for m in metadata if m["tag"] == "counting")
    assert counting["exclude"] == [
        {"class": counting["include"][0]["class"], "count": counting["include"][0]["count"] + 1}
    ]


def test_compbench_phrasing_of_world_prompts_parses_with_the_official_rules():
    prompts = benchmark_prompts("test", 60, seed=2)
    phrased = world_compbench_prompts(prompts)
    assert set(phrased) == {"non_spatial", "color", "numeracy", "spatial", "complex"}
    official = {
        "left": "on the left of",
        "right": "on the right of",
        "above": "on the top of",
        "below": "on the bottom of",
    }
    specs = {}
    for text, spec in prompts:
        ((category, [p]),) = world_compbench_prompts([(text, spec)]).items()
        specs[p] = spec
    for text in phrased["spatial"]:
        spec = specs[text]
        assert find_spatial_relation(text) == official[spec.relation]
        parsed = parse_spatial(text)
        assert (parsed.obj1, parsed.obj2) == (spec.objects[0].shape, spec.objects[1].shape)
    for text in phrased["numeracy"]:
        (item,) = parse_numeracy(text)
        assert (item.noun, item.count) == (
            specs[text].objects[0].shape,
            specs[text].objects[0].count,
        )
