"""`gotr1 demo` / `gotr1 ablate`: settings, caching, report pieces, and (slow) a real quick run."""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from gotr1.cli import UserError
from gotr1.demo import ablate, commands, report
from gotr1.demo.config import DEMO_PRESET, DemoConfig
from gotr1.demo.pipeline import Stages, fingerprint, seed_markdown, seed_summary
from gotr1.world import CATEGORIES, sample_examples, write_chain

ROOT = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gotr1")
    commands.register(parser.add_subparsers(dest="command"))
    return parser


def test_registration_does_not_import_torch():
    code = (
        "import sys, argparse\n"
        "from gotr1.demo import commands\n"
        "p = argparse.ArgumentParser(); commands.register(p.add_subparsers())\n"
        "assert 'torch' not in sys.modules, 'registering imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_parses_demo_and_ablate(tmp_path):
    args = _parser().parse_args(["demo", "--out", str(tmp_path), "--quick", "--seed", "3"])
    assert args.func is commands.run_demo_command and args.quick and args.seed == 3
    config = commands._demo_config(args)
    assert config.quick and config.seed == 3 and config.out == str(tmp_path)
    assert config.eval_prompts < DemoConfig.full().eval_prompts
    args = _parser().parse_args(["ablate", "--out", str(tmp_path), "--arms", "sum", "ri_only"])
    assert args.func is commands.run_ablate_command
    assert [a.name for a in ablate.resolve_arms(args.arms)] == ["sum", "ri_only"]


def test_full_settings_score_the_whole_benchmark():
    assert DemoConfig.full().eval_prompts >= 300


@pytest.mark.parametrize(
    "field, value",
    [("sft_steps", 0), ("grpo_num_generations", 1), ("mixed_precision", "fp8"), ("threads", 0)],
)
def test_bad_settings_name_the_field(field, value):
    config = DemoConfig.full(**{field: value})
    with pytest.raises(UserError, match=field.split("_")[0]):
        config.validate()


def test_unknown_arm_is_a_user_error():
    with pytest.raises(UserError, match="nope"):
        ablate.resolve_arms(["product", "nope"])


def test_preset_yaml_mirrors_the_code():
    from gotr1.policy.presets import get_preset, preset_from_dict

    from_yaml = get_preset(str(ROOT / "configs" / "world-demo.yaml"))
    assert from_yaml == preset_from_dict(DEMO_PRESET)
    assert from_yaml.image_grid == 8 and from_yaml.image_size == 32
    assert yaml.safe_load((ROOT / "configs" / "world-demo.yaml").read_text()) == DEMO_PRESET


def test_stages_skip_finished_work_and_rerun_changed_settings(tmp_path):
    calls = []

    def work(folder):
        calls.append(folder.name)
        (folder / "out.txt").write_text("done")
        return {"value": len(calls)}

    messages = []
    stages = Stages(messages.append)
    first = stages.run("sft", tmp_path / "sft", {"steps": 3}, work)
    assert not first["cached"] and first["result"] == {"value": 1}
    again = Stages(messages.append).run("sft", tmp_path / "sft", {"steps": 3}, work)
    assert again["cached"] and again["result"] == {"value": 1} and calls == ["sft"]
    assert "cached" in messages[-1]
    changed = Stages(messages.append).run("sft", tmp_path / "sft", {"steps": 4}, work)
    assert not changed["cached"] and changed["result"] == {"value": 2}
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})


def test_an_unfinished_stage_is_rerun(tmp_path):
    folder = tmp_path / "grpo"
    folder.mkdir()
    (folder / "half-written").write_text("x")  # no marker: a killed run
    record = Stages(lambda _: None).run("grpo", folder, {}, lambda f: {"ok": True})
    assert not record["cached"] and not (folder / "half-written").exists()


def test_every_world_chain_sentence_matches_the_templates():
    pattern = report.template_sentence_pattern()
    for example in sample_examples(120, seed=5):
        for sentence in report.split_sentences(example.chain):
            assert pattern.match(sentence), sentence
    rng = random.Random(0)
    for example in sample_examples(30, seed=6, split="test"):
        for sentence in report.split_sentences(write_chain(example.spec, example.scene, rng)):
            assert pattern.match(sentence), sentence


def test_new_phrasing_is_counted_as_novel():
    pattern = report.template_sentence_pattern()
    chain = (
        "The scene contains two shapes. Put a <|obj_start|>red circle<|obj_end|> "
        "<|box_start|>(0,0),(300,300)<|box_end|> far left. There is a <|obj_start|>blue square"
        "<|obj_end|> <|box_start|>(600,0),(900,300)<|box_end|> in the upper right part."
    )
    sentences = report.split_sentences(chain)
    assert [bool(pattern.match(s)) for s in sentences] == [True, False, True]


def _sample(prompt, chain, objects, **extra):
    return {"prompt": prompt, "chain": chain, "objects": objects, **extra}


def test_chain_statistics_measure_boxes_relations_and_phrasing():
    left = {"name": "red circle", "box": [0, 0, 200, 200]}
    right = {"name": "blue square", "box": [600, 0, 1000, 400]}
    good = _sample(
        "a red circle to the left of a blue square",
        "The scene contains two shapes. So the red circle appears left of the blue square.",
        [left, right],
    )
    bad = _sample(
        "a red circle to the right of a blue square",
        "Red goes here. The scene contains two shapes.",
        [left, {**left, "name": "blue square"}],
        chain_errors=["x"],
        truncated=True,
    )
    stats = report.chain_statistics([good, bad])
    assert stats["mean_objects"] == 2
    assert stats["planned_relation_holds"] == 0.5  # left-of holds; right-of does not
    assert stats["mean_pair_iou"] == pytest.approx((0.0 + 1.0) / 2)
    assert stats["mean_box_width"] == pytest.approx((200 + 400 + 200 + 200) / 4)
    assert stats["novel_sentence_fraction"] == pytest.approx(1 / 4)
    assert stats["novel_sentence_examples"] == ["Red goes here."]
    assert stats["with_parse_errors"] == 0.5 and stats["truncated"] == 0.5


def test_curves_png_draws_every_reward_component(tmp_path):
    rows = [
        {"stage": "sft", "step": s, "chain_loss": 3 / s, "image_loss": 5 / s} for s in (1, 2, 3)
    ]
    rows += [
        {
            "stage": "grpo",
            "step": s,
            "reward": 0.1 * s,
            "rewards/sem/mean": 0.5,
            "rewards/spa/mean": 0.4,
            "rewards/ri/mean": 0.05 * s,
            "rewards/pi/mean": None,
        }
        for s in range(1, 6)
    ]
    path = report.draw_curves(rows, tmp_path / "curves.png")
    image = Image.open(path).convert("RGB")
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    for colour in report.CURVE_COLOURS[:4]:  # total, R_sem, R_spa, R_RI are drawn
        assert colour in colours
    assert report.CURVE_COLOURS[4] not in colours  # R_PI had no finite value


def _metrics(sft, grpo):
    return {
        "sft": sft,
        "grpo": grpo,
        "sft_accuracy": sft,
        "grpo_accuracy": grpo,
        "seconds": 10.0,
        "cpu_seconds": 15.0,
    }


def test_seed_summary_checks_the_headline():
    base = dict.fromkeys(CATEGORIES, 0.5)
    results = {}
    for seed, gain in ((0, 0.15), (1, 0.10), (2, 0.08)):
        grpo = {k: v + gain for k, v in base.items()}
        grpo["counting"] = 0.49
        sft_overall = sum(base.values()) / len(base)
        grpo_overall = sum(grpo.values()) / len(grpo)
        results[seed] = _metrics(
            {**base, "overall": sft_overall}, {**grpo, "overall": grpo_overall}
        )
    summary = seed_summary(results)
    assert summary["mean_delta"]["spatial"] == pytest.approx(0.11)
    assert summary["checks"]["spatial_improves"] and summary["checks"]["color_binding_improves"]
    assert summary["checks"]["worst_category_change"] == pytest.approx(-0.01)
    assert summary["checks"]["no_category_loses_more_than_0.02"]
    overall = summary["mean_delta"]["overall"]
    assert summary["checks"]["overall_gain_at_least_0.10"] == (overall >= 0.10)
    text = seed_markdown(summary)
    assert "| mean | Δ |" in text and text.count("| 1 |") == 2


def test_ablation_markdown_has_the_paper_layout():
    soft = {**dict.fromkeys(CATEGORIES, 0.4), "overall": 0.4}
    results = {
        name: {"soft": {k: v + 0.01 * i for k, v in soft.items()}}
        for i, name in enumerate(["sft", "ri_only", "pi_only", "product", "sum"])
    }
    summary = {
        "seed": 0,
        "quick": False,
        "budget": {"grpo_steps": 5, "num_prompts": 2, "num_generations": 2},
        "benchmark": {"prompts": 300},
        "results": results,
        "comparison": ablate.compare_with_paper(results),
    }
    text = ablate.ablation_markdown(summary)
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0] == "| rewards | " + " | ".join(soft) + " |"
    labels = [line.split(" | ")[0][2:] for line in table[1:6]]
    assert labels == [
        "none (SFT only)",
        "R_RI only",
        "R_PI only",
        "all four, product: R_PI·(R_sem+R_spa)·R_RI",
        "all four, sum instead of product",
    ]
    claims = {row["claim"]: row for row in summary["comparison"]}
    assert claims["the product of the four rewards beats their sum"]["world_agrees"] is False
    assert claims["R_RI alone collapses below SFT"]["world_agrees"] is False
    assert "DISAGREES" in text and "paper +0.0" in text


def test_metrics_json_of_a_finished_run_is_rewritten_from_cache(tmp_path):
    # json round trip of the summary table input (no torch): the table prints every category
    from gotr1.demo.pipeline import summary_table

    soft = {**dict.fromkeys(CATEGORIES, 0.25), "overall": 0.25}
    metrics = {
        **_metrics(soft, {k: v + 0.1 for k, v in soft.items()}),
        "benchmark": {"prompts": 300},
        "seed": 0,
        "quick": False,
        "stages": {"sft": {"seconds": 1.0, "cpu_seconds": 2.0, "cached": True}},
    }
    text = summary_table(json.loads(json.dumps(metrics)))
    for category in CATEGORIES:
        assert category in text
    assert "+0.100" in text and "(cached)" in text
