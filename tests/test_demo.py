"""`gotr1 demo` / `gotr1 ablate`: settings, caching, report pieces, and (slow) a real quick run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from gotr1.demo import ablate, commands, report
from gotr1.demo.config import DEMO_PRESET, DemoConfig
from gotr1.demo.pipeline import Stages, fingerprint, seed_markdown, seed_summary
from gotr1.errors import UserError
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
    [
        ("sft_steps", 0),
        ("grpo_num_generations", 1),
        ("mixed_precision", "fp8"),
        ("threads", 0),
        ("vq_foreground_margin", -1),
        ("report_examples", -1),
        ("eval_images_per_prompt", 0),
        ("grpo_min_lr_ratio", 1.5),
        ("grpo_update_rollouts", 0),
        ("sft_world_split", "test"),
        ("sft_chain_colors", "scene"),
        ("eval_plan_candidates", 0),
        ("eval_plan_judge_noise", -0.1),
        ("eval_plan_judge_noise", float("nan")),
    ],
)
def test_bad_settings_name_the_field(field, value):
    from gotr1.demo.pipeline import check_settings

    config = DemoConfig.full(**{field: value})
    with pytest.raises(UserError, match=field):
        check_settings(config)


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


def test_stage_identity_ignores_folders_and_progress_bars(tmp_path):
    from gotr1.demo import pipeline as P
    from gotr1.demo.config import DemoConfig

    def identity(out, progress):
        config = DemoConfig(out=str(out), progress=progress)
        grpo = P.grpo_config(config, out / "sft" / "final", out / "grpo")
        return P.fingerprint(P.stage_settings("upstream", grpo))

    assert identity(tmp_path / "a", True) == identity(tmp_path / "b", False)
    # a marker written while progress was part of the identity still matches
    settings = {"upstream": "u", "config": {"seed": 0}}
    old_marker = {
        "fingerprint": "0123",
        "settings": {"upstream": "u", "config": {"seed": 0, "progress": True}},
    }
    assert P.marker_matches(old_marker, settings)
    assert not P.marker_matches(old_marker, {"upstream": "u", "config": {"seed": 1}})
    assert not P.marker_matches(None, settings)
    changed = DemoConfig(out=str(tmp_path), grpo_steps=41)
    grpo = P.grpo_config(changed, tmp_path / "sft" / "final", tmp_path / "grpo")
    assert P.fingerprint(P.stage_settings("upstream", grpo)) != identity(tmp_path, True)


def test_sft_stage_identity_of_chain_colours(tmp_path):
    """The demo's SFT writes drawn-colour chains by default, a stage identity of its own; with
    sft_chain_colors=prompt its identity is that of the runs made before the setting existed."""
    from gotr1.demo import pipeline as P

    def settings(**overrides):
        config = DemoConfig(out=str(tmp_path), **overrides)
        sft = P.sft_config(config, tmp_path / "preset.yaml", tmp_path / "tok", tmp_path / "sft")
        return sft, P.stage_settings("tokenizer-print", sft)["config"]

    sft, drawn = settings()
    assert sft.world_chain_colors == "drawn" and drawn["world_chain_colors"] == "drawn"
    sft, prompt = settings(sft_chain_colors="prompt")
    assert sft.world_chain_colors == "prompt" and "world_chain_colors" not in prompt
    assert {k: v for k, v in drawn.items() if k != "world_chain_colors"} == prompt


def test_two_condition_settings_leave_the_stage_identities_of_earlier_runs(tmp_path):
    """sft_prompt_only_dropout and eval_plan_cfg_weight (and the SFTConfig/GRPOConfig fields
    behind them) are not part of any stage's identity at their defaults, so finished stages of
    runs made before they existed are found; set, they are."""
    from gotr1.demo import pipeline as P
    from gotr1.demo.config import parse_settings

    def identities(**overrides):
        config = DemoConfig(out=str(tmp_path), **overrides)
        sft = P.sft_config(config, tmp_path / "preset.yaml", tmp_path / "tok", tmp_path / "sft")
        grpo = P.grpo_config(config, tmp_path / "sft" / "final", tmp_path / "grpo")
        return (
            P.stage_settings("u", sft),
            P.grpo_stage_settings(config, "u", grpo),
            P.eval_settings(config),
            P.eval_settings(config, "train"),
        )

    sft, grpo, held_out, seen = identities()
    assert "prompt_only_dropout" not in sft["config"]
    assert "plan_cfg_weight" not in grpo["config"]
    assert "plan_cfg_weight" not in held_out and "plan_cfg_weight" not in seen
    assert identities(eval_plan_cfg_weight=None, sft_prompt_only_dropout=0.0) == (
        sft,
        grpo,
        held_out,
        seen,
    )
    changed = identities(
        **parse_settings(["sft_prompt_only_dropout=0.1", "eval_plan_cfg_weight=6"])
    )
    assert changed[0]["config"]["prompt_only_dropout"] == 0.1 and changed[1] == grpo
    assert changed[2] == {**held_out, "plan_cfg_weight": 6.0}
    config = DemoConfig(out=str(tmp_path), cfg_weight=2.0, eval_plan_cfg_weight=6.0)
    sampling = P.eval_sampling(config)
    assert (sampling.cfg_weight, sampling.plan_cfg_weight) == (2.0, 6.0)
    assert P.eval_sampling(DemoConfig(out=str(tmp_path))).plan_cfg_weight is None
    assert parse_settings(["eval_plan_cfg_weight=none"]) == {"eval_plan_cfg_weight": None}
    with pytest.raises(UserError, match="^demo setting eval_plan_cfg_weight must be >= 0"):
        P.check_settings(DemoConfig(out=str(tmp_path), eval_plan_cfg_weight=-1.0))
    with pytest.raises(UserError, match="^demo setting sft_prompt_only_dropout must be >= 0"):
        P.check_settings(DemoConfig(out=str(tmp_path), sft_prompt_only_dropout=-0.5))


def test_plan_settings_reach_the_evaluation_and_leave_default_identities_unchanged(
    tmp_path, monkeypatch
):
    """eval_plan_candidates, eval_repair_plans and eval_plan_judge_noise: at their defaults the
    benchmark stages' identities are the fingerprints of runs made before they existed; set,
    they join the identities, PlanOptions of the evaluation and metrics.json's benchmark."""
    from gotr1.demo import pipeline as P
    from gotr1.demo.config import parse_settings
    from gotr1.eval.plans import PlanOptions

    def identities(config):
        return [P.fingerprint(P.eval_settings(config, split)) for split in ("test", "train")]

    assert identities(DemoConfig.full()) == ["7cef3924fceb34f7", "c1bb0da3921334ef"]
    assert identities(DemoConfig.quick_settings()) == ["dd75c18d0e190a9b", "e5fa255b9b2dbb5a"]
    defaults = parse_settings(
        ["eval_plan_candidates=1", "eval_repair_plans=false", "eval_plan_judge_noise=0"]
    )
    assert identities(DemoConfig.full(**defaults)) == identities(DemoConfig.full())
    assert P.eval_plans(DemoConfig.full()) == PlanOptions()
    assert P.eval_plan_settings(DemoConfig.full()) == {}

    overrides = parse_settings(
        ["eval_plan_candidates=4", "eval_repair_plans=true", "eval_plan_judge_noise=0.2"]
    )
    assert overrides == {
        "eval_plan_candidates": 4,
        "eval_repair_plans": True,
        "eval_plan_judge_noise": 0.2,
    }
    config = DemoConfig(out=str(tmp_path), **overrides)
    P.check_settings(config)
    plans = PlanOptions(candidates=4, repair=True, judge_noise=0.2)
    assert P.eval_plans(config) == plans
    held_out = P.eval_settings(config)
    assert held_out == {**P.eval_settings(DemoConfig(out=str(tmp_path))), "plans": plans.to_dict()}
    assert identities(config) != identities(DemoConfig(out=str(tmp_path)))
    repair_only = DemoConfig(out=str(tmp_path), eval_repair_plans=True)
    assert P.eval_settings(repair_only)["plans"] == {"candidates": 1, "repair": True}

    seen = {}

    def evaluate_world(policy, **kwargs):
        seen.update(kwargs)
        return {}

    monkeypatch.setattr("gotr1.policy.policy.Policy.load", lambda folder: "policy")
    monkeypatch.setattr(P, "evaluate_world", evaluate_world)
    monkeypatch.setattr(P, "write_world_results", lambda result, folder: None)
    P.evaluate_model(dataclasses.replace(config, progress=False), tmp_path / "m", tmp_path / "e")
    assert seen["plans"] == plans
    P.evaluate_model(DemoConfig(out=str(tmp_path), progress=False), tmp_path / "m", tmp_path / "e")
    assert seen["plans"] == PlanOptions()

    with pytest.raises(UserError, match="^demo setting eval_plan_judge_noise: plan judge noise "):
        P.check_settings(DemoConfig(out=str(tmp_path), eval_plan_judge_noise=0.2))
    with pytest.raises(UserError, match="^demo setting eval_plan_candidates: plan candidates "):
        P.check_settings(DemoConfig(out=str(tmp_path), eval_plan_candidates=0))


def test_metrics_and_report_name_plan_settings_that_are_not_default(tmp_path):
    from gotr1.demo import pipeline as P

    soft = {**dict.fromkeys(CATEGORIES, 0.5), "overall": 0.5}
    result = {"soft": soft, "accuracy": soft, "images": {}}
    records = {"tokenizer": {"result": {}}, "sft": {}, "grpo": {}}
    evals = {"sft": {"result": result}, "grpo": {"result": result}}

    def benchmark(**overrides):
        config = DemoConfig(out=str(tmp_path), **overrides)
        return P.build_metrics(config, records, evals)["benchmark"]

    default = benchmark()
    assert "plans" not in default and "plan_cfg_weight" not in default
    assert report.plan_settings_text(default) == ""
    planned = benchmark(eval_plan_candidates=4, eval_plan_judge_noise=0.2, eval_repair_plans=True)
    assert planned["plans"] == {"candidates": 4, "repair": True, "judge_noise": 0.2}
    text = report.plan_settings_text(planned)
    assert (
        text == "best of 4 plans by the world judge (its scores noised, sigma 0.2), repaired plans"
    )
    guided = benchmark(eval_plan_cfg_weight=6.0)
    assert report.plan_settings_text(guided) == "two-condition guidance, plan weight 6.0"

    metrics = _fake_run(tmp_path, "A <|obj_start|>red circle<|obj_end|>")
    metrics["benchmark"]["plans"] = planned["plans"]
    page = report.write_report(tmp_path, metrics).read_text()
    assert f"the same sampling seed for both models · {text}" in page
    assert f"seed 0, quick, {text})" in P.summary_table(metrics).splitlines()[1]


def test_ablation_finds_the_shared_tokenizer_of_a_seeds_run(tmp_path, monkeypatch):
    from gotr1.demo.ablate import demo_tokenizer_folder

    seed = tmp_path / "run" / "seed-0"
    seed.mkdir(parents=True)
    assert demo_tokenizer_folder(seed) == seed / "tokenizer"  # nothing recorded
    (tmp_path / "run" / "tokenizer").mkdir()
    settings = {"settings": {"tokenizer_dir": "run/tokenizer"}}
    (seed / "metrics.json").write_text(json.dumps(settings))
    monkeypatch.chdir(tmp_path)
    assert demo_tokenizer_folder(seed) == Path("run/tokenizer")
    monkeypatch.chdir(seed)  # the recorded relative path does not resolve from here
    assert demo_tokenizer_folder(seed) == tmp_path / "run" / "tokenizer"
    (seed / "metrics.json").write_text("{not json")
    assert demo_tokenizer_folder(seed) == seed / "tokenizer"


def test_an_unfinished_stage_is_rerun(tmp_path):
    from gotr1.demo import pipeline as P

    folder = tmp_path / "grpo"
    folder.mkdir()
    (folder / P.STARTED_MARKER).write_text("{}")  # a killed run of unknown settings
    (folder / "half-written").write_text("x")
    record = Stages(lambda _: None).run("grpo", folder, {}, lambda f: {"ok": True})
    assert not record["cached"] and not (folder / "half-written").exists()


TINY_DEMO_SETTINGS = dict(
    vq_steps=3,
    sft_steps=3,
    grpo_steps=1,
    grpo_num_prompts=2,
    grpo_num_generations=2,
    eval_prompts=6,
    max_chain_tokens=24,
)
"""The settings of `tiny_demo_config` beyond --quick's: every stage runs for a step or three."""


def test_an_unfinished_stage_of_the_same_settings_is_resumed(tmp_path):
    from gotr1.demo import pipeline as P

    folder = tmp_path / "sft"

    def killed(folder):
        (folder / "checkpoint-2").mkdir()
        raise KeyboardInterrupt  # stopped part-way, after its first checkpoint

    with pytest.raises(KeyboardInterrupt):
        Stages(lambda _: None).run("sft", folder, {"steps": 4}, killed)
    assert P.read_marker(folder) is None
    assert P.read_marker(folder, P.STARTED_MARKER)["fingerprint"] == fingerprint({"steps": 4})

    seen = []
    messages = []
    record = Stages(messages.append).run(
        "sft", folder, {"steps": 4}, lambda f: seen.append(sorted(p.name for p in f.iterdir()))
    )
    assert seen == [["checkpoint-2", P.STARTED_MARKER]]  # the checkpoint was kept
    assert record["resumed"] and not record["cached"] and "resuming" in messages[-1]
    assert P.read_marker(folder)["resumed"] is True

    (folder / P.STAGE_MARKER).unlink()  # unfinished again, now rerun with other settings
    other = Stages(lambda _: None).run(
        "sft", folder, {"steps": 5}, lambda f: sorted(p.name for p in f.iterdir())
    )
    assert other["result"] == [P.STARTED_MARKER] and not other["resumed"]


def test_checkpoint_cadence_is_not_part_of_a_stage_identity(tmp_path):
    from gotr1.demo import pipeline as P
    from gotr1.demo.config import DemoConfig

    def identity(**overrides):
        config = DemoConfig(out=str(tmp_path), **overrides)
        sft = P.sft_config(config, tmp_path / "preset.yaml", tmp_path / "tok", tmp_path / "sft")
        grpo = P.grpo_config(config, tmp_path / "sft" / "final", tmp_path / "grpo")
        return P.stage_settings("u", sft), P.stage_settings("u", grpo)

    assert identity() == identity(sft_save_steps=7, grpo_save_steps=3)
    # markers of runs made before the cadence was configurable (save_steps = steps + 1) match
    sft, grpo = identity()
    for settings, steps in ((sft, 3000), (grpo, 48)):
        stored = {**settings, "config": {**settings["config"], "save_steps": steps + 1}}
        marker = {"fingerprint": fingerprint(stored), "settings": stored}
        assert P.marker_matches(marker, settings)


@pytest.mark.slow
def test_a_killed_demo_resumes_its_sft_stage_exactly(tmp_path):
    """SIGKILL during SFT (after a checkpoint), then the same command again: the SFT stage resumes
    from the checkpoint, logs every step once and ends with the weights of a run never stopped."""
    import os
    import signal
    import time

    from safetensors.torch import load_file

    def command(out, *extra):
        settings = {
            **TINY_DEMO_SETTINGS,
            "sft_steps": 40,
            "sft_batch_size": 2,
            "sft_save_steps": 10,
        }
        sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
        base = [sys.executable, "-m", "gotr1", "demo", "--out", str(out), "--quick"]
        return base + ["--threads", "1", "--no-progress", *sets, *extra]

    killed = tmp_path / "killed"
    run = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "sft" / "checkpoint-10" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file():
        assert run.poll() is None and time.monotonic() < deadline, "no SFT checkpoint appeared"
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert not (killed / "sft" / "demo_stage.json").exists(), "SFT finished before the kill"
    before = [r for r in report.read_jsonl(killed / "sft" / "train_log.jsonl") if r["step"] <= 10]

    resumed = subprocess.run(command(killed), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[2/7] SFT" in resumed.stdout and "resuming the unfinished run" in resumed.stdout
    steps = [r["step"] for r in report.read_jsonl(killed / "sft" / "train_log.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 40
    after = report.read_jsonl(killed / "sft" / "train_log.jsonl")[: len(before)]
    assert len(before) == 10 and after == before  # steps 1-10 (their times too) were not rerun

    fresh = tmp_path / "fresh"
    tokenizer = ["--set", f"tokenizer_dir={killed / 'tokenizer'}"]
    done = subprocess.run(command(fresh, *tokenizer), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = [
        load_file(str(run / "sft" / "final" / "model.safetensors")) for run in (killed, fresh)
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["stages"]["sft"]["resumed"] is True


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
    # Both chains name both objects (the bad one only misplaces them).
    assert stats["coloured_objects_named"] == 1.0 and stats["mean_semantic"] == 1.0
    assert stats["held_out_pairs_named"] == 1.0  # "blue square" is one


def test_chain_statistics_count_held_out_pairs_the_chain_renames():
    """A tiny LM plans a held-out "red triangle" as the "red circle" it saw in training."""
    renamed = _sample(
        "a red triangle and a blue circle",
        "The scene contains two shapes.",
        [{"name": "red circle", "box": [0, 0, 200, 200]},
         {"name": "blue circle", "box": [600, 0, 800, 200]}],
    )  # fmt: skip
    stats = report.chain_statistics([renamed])
    assert stats["coloured_objects_named"] == 0.5 and stats["held_out_pairs_named"] == 0.0
    assert stats["seen_pairs_named"] == 1.0
    # R_sem: circle present, blue circle colour (2 of 2); triangle present, red triangle colour
    # (0 of 2); the red circle fills no prompt slot (+1 requirement): 2 / 5.
    assert stats["mean_semantic"] == pytest.approx(2 / 5)


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


def test_seed_summary_means_the_seeds_and_adds_their_errors():
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
    assert summary["checks"]["worst_category_change"] == pytest.approx(-0.01)
    overall = summary["mean_delta"]["overall"]
    assert summary["checks"]["overall_gain"] == pytest.approx(overall)
    assert summary["per_seed"]["1"]["grpo"]["spatial"] == pytest.approx(0.6)
    text = seed_markdown(summary)
    assert "| mean | Δ |" in text and text.count("| 1 |") == 2 and text.count("| mean |") == 3
    assert "worst category change -0.010" in text
    assert "overall_gain_standard_error" not in summary["checks"]  # no errors given
    for seed, error in zip(results, (0.03, 0.04, 0.12), strict=True):
        results[seed]["delta_standard_error"] = {"overall": error}
    summary = seed_summary(results)  # the mean of three independent gains: sqrt(sum e^2) / 3
    assert summary["checks"]["overall_gain_standard_error"] == pytest.approx(0.13 / 3)
    text = seed_markdown(summary)
    assert f"{overall:+.3f} ± 0.043" in text and "seed 2 0.120" in text


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
    assert table[0] == "| rewards | " + " | ".join(soft) + " | Δ overall vs SFT | s.e. |"
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
    assert table[4].endswith(" | +0.0300 |  |")  # product: Δ vs SFT, no error without samples

    # with the arms' samples: each difference gets its paired standard error and a verdict
    def samples(shift: float, spread: float) -> list[dict]:
        return [
            {"category": c, "prompt_index": p, "soft": 0.4 + shift + spread * (p % 2)}
            for c in CATEGORIES
            for p in range(10)
        ]

    arms = {"sft": samples(0, 0), "sum": samples(0.01, 0.2), "product": samples(0.01, 0.0)}
    arms.update(ri_only=samples(-0.2, 0.0), pi_only=samples(0.0, 0.0))
    rows = {row["claim"]: row for row in ablate.compare_with_paper(results, arms)}
    noisy = rows["the product of the four rewards beats their sum"]
    assert noisy["standard_error"] > 0.01 and noisy["verdict"] == "within noise"
    collapse = rows["R_RI alone collapses below SFT"]
    assert collapse["standard_error"] == pytest.approx(0.0) and collapse["verdict"] == "DISAGREES"


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
    metrics["delta_standard_error"] = {**dict.fromkeys(CATEGORIES, 0.04), "overall": 0.0123}
    metrics["benchmark"]["images_per_prompt"] = 4
    lines = summary_table(metrics).splitlines()
    assert "300 prompts x 4 images" in lines[1] and lines[2].split()[-1] == "s.e."
    overall = next(line for line in lines if line.startswith("overall"))
    assert overall.split()[-2:] == ["+0.100", "0.012"]


def _fake_run(tmp_path, chain):
    soft = {**dict.fromkeys(CATEGORIES, 0.5), "overall": 0.5}
    for stage in ("sft", "grpo"):
        folder = tmp_path / "eval" / stage / "images"
        folder.mkdir(parents=True)
        Image.new("RGB", (32, 32), (240, 240, 240)).save(folder / "0000_00.png")
        row = {
            "prompt_index": 0,
            "sample_index": 0,
            "prompt": "a red circle",
            "category": "single_object",
            "chain": chain,
            "objects": [{"name": "red circle", "box": [0, 0, 500, 500]}],
            "chain_errors": [],
            "truncated": False,
            "correct": stage == "grpo",
            "soft": 1.0 if stage == "grpo" else 0.5,
            "requirements": {"circle present": 1.0, "red circle colour": float(stage == "grpo")},
            "rewards": {"sem": 1.0, "spa": 1.0, "ri": 0.5, "pi": 0.5, "total": 1.0},
            "image": "images/0000_00.png",
        }
        (tmp_path / "eval" / stage / "samples.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "train_log.jsonl").write_text(
        json.dumps({"stage": "grpo", "step": 1, "reward": 0.2, "rewards/pi/mean": 0.4}) + "\n"
    )
    return {
        **_metrics(soft, {**soft, "overall": 0.6}),
        "seed": 0,
        "quick": True,
        "benchmark": {"prompts": 1, "images": {"single_object": 1}, "images_per_prompt": 1},
        "stages": {"sft": {"seconds": 1.0, "cpu_seconds": 1.0, "cached": False}},
        "settings": {"report_examples": 4},
    }


def test_report_examples_show_each_prompts_first_image_first():
    samples = [
        {"prompt_index": p, "sample_index": k, "category": category}
        for p, category in enumerate(["spatial", "spatial", "counting"])
        for k in range(2)
    ]
    chosen = report.pick_examples(samples, samples, 4)
    keys = [(a["prompt_index"], a["sample_index"]) for a, b in chosen]
    assert keys == [(0, 0), (2, 0), (1, 0), (2, 1)]
    assert all(a is b for a, b in chosen)


def test_report_escapes_what_the_model_wrote(tmp_path):
    chain = (
        "A <|obj_start|>red circle<|obj_end|> <|box_start|>(0,0),(500,500)<|box_end|> sits in "
        "the upper left part. <script>alert(1)</script> & <b>bold</b>"
    )
    metrics = _fake_run(tmp_path, chain)
    metrics["seen_compositions"] = {
        "sft": {"overall": 0.6},
        "grpo": {"overall": 0.65},
        "delta": {"overall": 0.05},
        "rewards": {"sft": {"total": 0.2}, "grpo": {"total": 0.25}},
    }
    metrics["delta_standard_error"] = {"single_object": 0.031, "overall": 0.0123}
    page = report.write_report(tmp_path, metrics).read_text()
    assert "SFT 0.600 → GRPO 0.650 (+0.050); the optimised reward 0.200 → 0.250" in page
    assert "(<b>+0.100</b> ± 0.012 standard error)" in page and "<td>0.031</td>" in page
    assert "<script>" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;|obj_start|&gt;red circle" in page
    assert (
        'src="eval/sft/images/0000_00.png"' in page and 'src="eval/grpo/images/0000_00.png"' in page
    )
    assert (tmp_path / "report" / "curves.png").is_file()
    assert (tmp_path / "report" / "layout-grpo-000.png").is_file()
    with Image.open(tmp_path / "report" / "examples.png") as figure:  # plan + image, both models
        assert figure.width == 4 * 168 + 8 and 'src="report/examples.png"' in page
    stats = json.loads((tmp_path / "report" / "chain_statistics.json").read_text())
    assert stats["grpo"]["novel_sentence_fraction"] == pytest.approx(1 / 2)


# ----------------------------------------------------------------------------------------------
# Real runs (slow): the shipped --quick demo end to end, then a tiny ablation
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_demo_end_to_end_and_cached_rerun(tmp_path, capsys):
    out = tmp_path / "demo"
    args = _parser().parse_args(["demo", "--out", str(out), "--quick", "--threads", "1"])
    assert args.func(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("sft", "grpo"):
        assert list(metrics[stage]) == [*CATEGORIES, "overall"]
        assert all(0.0 <= v <= 1.0 for v in metrics[stage].values())
        assert list(metrics[f"{stage}_accuracy"]) == [*CATEGORIES, "overall"]
        overall = sum(metrics[stage][c] for c in CATEGORIES) / len(CATEGORIES)
        assert metrics[stage]["overall"] == pytest.approx(overall)
    assert metrics["seed"] == 0 and metrics["quick"] is True and metrics["seconds"] > 0
    assert metrics["delta_standard_error"]["overall"] >= 0
    assert metrics["benchmark"]["prompts"] == DemoConfig.quick_settings().eval_prompts
    assert "quick" in metrics["benchmark"]["note"]
    from gotr1.train.precision import cpu_native_bf16

    precision = metrics["mixed_precision"]  # auto, resolved for this CPU and recorded
    assert precision["asked"] == "auto" and precision["device"] == "cpu"
    assert precision["chosen"] == ("bf16" if cpu_native_bf16()[0] else "no")
    assert metrics["settings"]["mixed_precision"] == precision["chosen"]
    rows = report.read_jsonl(out / "train_log.jsonl")
    assert {"sft", "grpo"} == {r["stage"] for r in rows}
    assert any("rewards/pi/mean" in r for r in rows if r["stage"] == "grpo")
    page = (out / "report.html").read_text()
    assert "<|obj_start|>" not in page  # model text is escaped
    assert page.count('class="pair"') == DemoConfig.quick_settings().report_examples
    printed = capsys.readouterr().out
    assert "[3/7] GRPO" in printed and "[7/7] seen compositions" in printed and "overall" in printed
    assert set(metrics["grpo_reward_trend"]) == {"first", "last", "steps"}
    assert metrics["images"]["sft"]["mean_detected_objects"] is not None
    assert isinstance(metrics["diagnosis"], list)
    seen = metrics["seen_compositions"]
    assert seen["split"] == "train" and list(seen["grpo"]) == [*CATEGORIES, "overall"]
    assert seen["delta"]["overall"] == pytest.approx(
        seen["grpo"]["overall"] - seen["sft"]["overall"]
    )
    assert seen["sft"] != metrics["sft"]  # other prompts than the held-out benchmark's
    assert "seen (train)" in printed and "train-split prompts" in page
    sensitivity = metrics["plan_sensitivity"]["sft"]
    assert sensitivity["image_loss"] > 0 and sensitivity["image_loss_boxes_swapped"] > 0

    first = metrics
    assert args.func(args) == 0  # every stage is cached now
    again = json.loads((out / "metrics.json").read_text())
    assert again["sft"] == first["sft"] and again["grpo"] == first["grpo"]
    assert all(stage["cached"] for stage in again["stages"].values())
    assert again["run_seconds"] < first["run_seconds"]


def tiny_demo_config(out: Path, **overrides) -> DemoConfig:
    """Demo settings small enough for a test: every stage runs for a step or three."""
    values = dict(out=str(out), threads=1, progress=False, **TINY_DEMO_SETTINGS)
    return DemoConfig.quick_settings(**{**values, **overrides})


@pytest.mark.slow
def test_tiny_ablation_writes_the_paper_table(tmp_path):
    config = tiny_demo_config(tmp_path / "ablate")
    summary = ablate.run_ablation(config, log=lambda _: None)
    assert set(summary["results"]) == {"sft", *ablate.ARM_NAMES}
    for result in summary["results"].values():
        assert list(result["soft"]) == [*CATEGORIES, "overall"]
    text = (tmp_path / "ablate" / "ablation.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header = " | ".join([*CATEGORIES, "overall", "Δ overall vs SFT", "s.e."])
    assert rows[0] == f"| rewards | {header} |"
    assert len(rows) == 1 + 1 + len(ablate.ARMS) + 1 + 6  # header, SFT, arms, paper header+rows
    saved = json.loads((tmp_path / "ablate" / "ablation.json").read_text())
    assert [c["claim"] for c in saved["comparison"]] == [c for _, _, c in ablate.PAPER_CLAIMS]
    # every arm trained from the same SFT model with the same budget, only the reward differs
    configs = [
        yaml.safe_load((tmp_path / "ablate" / "arms" / a / "grpo" / "config.yaml").read_text())
        for a in ablate.ARM_NAMES
    ]
    differing = {k for c in configs for k in c if c[k] != configs[0][k]}
    # (the clean-image factor is part of the reward: off in the arms without R_PI)
    assert differing == {
        "output_dir",
        "reward_components",
        "reward_combination",
        "world_clean_image",
    }

    # another ablation (another folder) reuses this one's tokenizer and SFT stages
    messages: list[str] = []
    reused = dataclasses.replace(config, out=str(tmp_path / "again"))
    again = ablate.run_ablation(
        reused, arms=["pi_only"], from_demo=tmp_path / "ablate", log=messages.append
    )
    assert any("[2/7]" in m and "cached" in m for m in messages)
    assert again["results"]["sft"]["soft"] == summary["results"]["sft"]["soft"]


def test_demo_reward_multiplies_the_clean_factor_into_the_product():
    from gotr1.chain import parse_chain
    from gotr1.demo.rewards import make_demo_reward
    from gotr1.world import Scene, SceneObject, render_scene

    chain = parse_chain(
        "A <|obj_start|>red circle<|obj_end|> <|box_start|>(0,0),(250,250)<|box_end|> sits here."
    )
    alone = Scene((SceneObject("circle", "red", (0, 0, 250, 250)),))
    crowded = Scene((*alone.objects, SceneObject("square", "blue", (500, 500, 750, 750))))
    images = [render_scene(alone, 64), render_scene(crowded, 64)]
    plain = make_demo_reward(["sem", "spa", "ri", "pi"], "product", clean_factor=False)
    clean = make_demo_reward(["sem", "spa", "ri", "pi"], "product", clean_factor=True)
    a = plain.score(["a red circle"] * 2, [chain, chain], images)
    b = clean.score(["a red circle"] * 2, [chain, chain], images)
    # R_PI counts clutter as one requirement of three (only asked objects: 1/2 here)
    assert a.total[1] == pytest.approx(a.total[0] * (1 + 1 + 0.5) / 3) and a.total[0] > 0
    assert b.total[0] == pytest.approx(a.total[0])
    assert b.total[1] == pytest.approx(a.total[1] / 2)  # one asked, one extra


def test_reward_trend_compares_the_first_and_last_tenth_of_steps():
    from gotr1.demo.diagnostics import reward_trend

    rows = [{"reward": float(step)} for step in range(20)] + [{"loss": 1.0}]
    assert reward_trend(rows) == {"first": 0.5, "last": 18.5, "steps": 20}
    assert reward_trend([{"reward": 2.0}]) == {"first": 2.0, "last": 2.0, "steps": 1}
    assert reward_trend([]) is None


def test_diagnosis_flags_a_flat_reward_and_clutter():
    from gotr1.demo.diagnostics import diagnose

    rising = {"first": 0.1, "last": 0.2, "steps": 40}
    clean = {"sft": {"mean_extra_objects": 1.0}, "grpo": {"mean_extra_objects": 1.2}}
    assert diagnose(0.1, rising, clean) == []
    flat = {"first": 0.2, "last": 0.19, "steps": 40}
    cluttered = {"sft": {"mean_extra_objects": 1.0}, "grpo": {"mean_extra_objects": 4.0}}
    notes = diagnose(0.15, flat, cluttered)
    assert len(notes) == 2 and "did not rise" in notes[0] and "1.00 -> 4.00" in notes[1]
    assert diagnose(0.1, None, {"sft": {}, "grpo": {}}) == []
    ignored = {"image_loss": 1.0, "image_loss_boxes_swapped": 1.01, "plan_sensitivity": 0.01}
    followed = {"image_loss": 1.0, "image_loss_boxes_swapped": 1.5, "plan_sensitivity": 0.5}
    assert "ignore the planned boxes" in diagnose(0.1, rising, clean, {"sft": ignored})[0]
    assert diagnose(0.1, rising, clean, {"sft": followed, "grpo": None}) == []
    astray = {"sft": {"planned_objects_at_box": 0.06, "planned_objects_named_at_box": 0.01}}
    (note,) = diagnose(0.1, rising, astray)
    assert "draws 6% of its planned objects" in note and "1% as named" in note
    assert diagnose(0.1, rising, {"sft": {"planned_objects_at_box": 0.8}}) == []
    # The 3,000-step SFT model of the README's table (50% at box) is not flagged; 2,000 steps' 17% is.
    assert diagnose(0.1, rising, {"sft": {"planned_objects_at_box": 0.496}}) == []
    assert len(diagnose(0.1, rising, {"sft": {"planned_objects_at_box": 0.17}})) == 1

    # the held-out score did not rise: what happened where GRPO trained (seen compositions)
    def seen(delta: float, before: float, after: float) -> dict:
        rewards = {"sft": {"total": before}, "grpo": {"total": after}}
        return {"delta": {"overall": delta}, "rewards": rewards}

    (note,) = diagnose(-0.02, rising, clean, None, seen(0.01, 0.236, 0.254))
    assert "+0.010 and its reward from 0.236 to 0.254" in note and "did not carry over" in note
    (note,) = diagnose(-0.02, rising, clean, None, seen(-0.01, 0.24, 0.2))
    assert "did not improve where it trained either" in note
    assert diagnose(0.05, rising, clean, None, seen(0.01, 0.2, 0.3)) == []

    # plans that rename unseen colour-shape pairs to seen ones
    renaming = {
        "sft": {"held_out_pairs_named": 0.41, "seen_pairs_named": 0.91},
        "grpo": {"held_out_pairs_named": 0.49, "seen_pairs_named": 0.93},
    }
    (note,) = diagnose(0.05, rising, clean, None, None, renaming)
    assert "exactly for 41% of them" in note and "seen in training" in note
    assert "91%), GRPO's 49%" in note and "before any image is drawn" in note
    faithful = {"sft": {"held_out_pairs_named": 0.85, "seen_pairs_named": 0.95}}
    assert diagnose(0.05, rising, clean, None, None, faithful) == []
    assert diagnose(0.05, rising, clean, None, None, {"sft": {"held_out_pairs_named": None}}) == []


def test_swapped_boxes_keep_the_prose_and_names():
    from gotr1.chain import parse_chain
    from gotr1.demo.diagnostics import swap_boxes
    from gotr1.world import sample_examples

    chains = [e.chain for e in sample_examples(20, seed=1, split="train")]
    swapped = swap_boxes(chains, seed=0)
    assert len(swapped) == len(chains) and swapped != chains
    for before, after in zip(chains, swapped, strict=True):
        a, b = parse_chain(before), parse_chain(after)
        assert [o.name for o in a.objects] == [o.name for o in b.objects] and not b.errors
    assert swap_boxes(["no boxes here"]) == ["no boxes here"]


def test_the_clean_factor_only_applies_beside_r_pi():
    from gotr1.chain import parse_chain
    from gotr1.demo.rewards import make_demo_reward, uses_clean_factor
    from gotr1.world import Scene, SceneObject, render_scene

    assert uses_clean_factor(["sem", "spa", "ri", "pi"], True)
    assert not uses_clean_factor(["sem", "spa"], True)  # it would reward a blank image
    assert not uses_clean_factor(["pi"], False)
    chain = parse_chain(
        "A <|obj_start|>red circle<|obj_end|> <|box_start|>(0,0),(250,250)<|box_end|> sits here."
    )
    blank = render_scene(Scene(()), 64)
    crowded = render_scene(
        Scene(
            (
                SceneObject("circle", "red", (0, 0, 250, 250)),
                SceneObject("square", "blue", (500, 500, 750, 750)),
            )
        ),
        64,
    )
    chain_only = make_demo_reward(["sem", "spa"], "product", clean_factor=True)
    scores = chain_only.score(["a red circle"] * 2, [chain, chain], [blank, crowded])
    assert scores.total[0] == pytest.approx(scores.total[1])  # the image does not matter


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the stage trains in one process")
def test_grpo_stage_in_two_processes(tmp_path):
    """grpo_processes=2: the GRPO stage runs under torchrun in two gloo processes (each saves its
    own RNG state), its settings say so, and a failing launch is a one-line error."""
    from gotr1.demo import pipeline as P

    config = tiny_demo_config(
        tmp_path / "demo",
        grpo_steps=2,
        grpo_processes=2,
        eval_prompts=12,  # two a category: enough for a standard error
        eval_images_per_prompt=2,
    )
    metrics = P.run_demo(config, log=lambda _: None)
    assert metrics["benchmark"]["images_per_prompt"] == 2
    assert sum(metrics["benchmark"]["images"].values()) == 2 * config.eval_prompts
    errors = metrics["delta_standard_error"]
    assert set(errors) == {*CATEGORIES, "overall"} and errors["overall"] >= 0
    grpo = tmp_path / "demo" / "grpo"
    assert (grpo / "checkpoint-2" / "rng-0.json").is_file()
    assert (grpo / "checkpoint-2" / "rng-1.json").is_file()
    assert json.loads((grpo / "demo_stage.json").read_text())["settings"]["processes"] == 2
    assert list(metrics["grpo"]) == [*CATEGORIES, "overall"]
    assert len(report.read_jsonl(grpo / "train_log.jsonl")) == 2

    broken = P.grpo_config(config, tmp_path / "no-such-model", tmp_path / "broken")
    with pytest.raises(UserError, match=r"grpo in 2 processes failed \(exit status"):
        P.run_training("grpo", broken, processes=2)


def test_demo_settings_from_the_command_line(tmp_path: Path) -> None:
    """--set FIELD=VALUE reaches DemoConfig typed; bad names, values and combinations are one-line
    errors before anything trains."""
    from gotr1.demo.commands import _demo_config
    from gotr1.demo.config import parse_settings
    from gotr1.errors import UserError

    args = _parser().parse_args(
        ["demo", "--out", str(tmp_path / "run"), "--quick", "--set", "grpo_steps=24",
         "--set", "grpo-num-prompts=32", "--set", "reward_components=sem, pi",
         "--set", "clean_image_factor=false", "--set", "grpo_learning_rate=1e-4",
         "--set", "tokenizer_dir=none"]
    )  # fmt: skip
    config = _demo_config(args)
    assert config.quick and config.grpo_steps == 24 and config.grpo_num_prompts == 32
    assert config.reward_components == ["sem", "pi"] and config.clean_image_factor is False
    assert config.grpo_learning_rate == 1e-4 and config.tokenizer_dir is None
    assert config.eval_prompts == 60  # the other quick settings stay
    for bad, message in (
        (["nope=1"], "expected FIELD=VALUE"),
        (["grpo_steps"], "expected FIELD=VALUE"),
        (["seed=3"], "expected FIELD=VALUE"),  # has its own option
        (["grpo_steps=many"], "expected an integer, got 'many'"),
        (["clean_image_factor=maybe"], "expected true or false, got 'maybe'"),
        (["cfg_weight=x"], "expected a number, got 'x'"),
    ):
        with pytest.raises(UserError, match=message):
            parse_settings(bad)
    for bad, message in (
        ("reward_combination=average", "reward_combination must be one of"),
        ("reward_components=sem,xx", "reward_components must be a non-empty subset"),
        ("grpo_steps=0", "grpo_steps must be >= 1"),
        ("grpo_processes=3", "must be a multiple of grpo_processes"),
        ("grpo_processes=0", "grpo_processes must be >= 1"),
    ):
        args = _parser().parse_args(["demo", "--out", str(tmp_path / "bad"), "--set", bad])
        with pytest.raises(UserError, match=message):
            args.func(args)
    assert not (tmp_path / "bad").exists()  # refused before any stage ran


def test_the_grpo_stage_config_records_its_reward(tmp_path: Path) -> None:
    """The demo's GRPO reward is the one its config.yaml describes (gotr1 grpo-signal and gotr1
    grpo rebuild it from there): the clean-image factor is on exactly beside R_PI."""
    from gotr1.demo import pipeline as P
    from gotr1.demo.config import DemoConfig

    def grpo(config: DemoConfig, **overrides):
        return P.grpo_config(config, tmp_path / "sft", tmp_path / "grpo", **overrides)

    assert grpo(DemoConfig()).world_clean_image
    assert not grpo(DemoConfig(), reward_components=["sem", "spa"]).world_clean_image
    assert not grpo(DemoConfig(clean_image_factor=False)).world_clean_image


def test_image_statistics_count_planned_objects_drawn_at_their_box(tmp_path: Path) -> None:
    from gotr1.world.scene import Scene, SceneObject, render_scene

    red_square = SceneObject("square", "red", (0, 0, 250, 250))
    blue_circle = SceneObject("circle", "blue", (500, 500, 750, 750))
    render_scene(Scene((red_square, blue_circle)), 64).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    samples = [
        {
            "prompt": "a red square and a blue circle",
            "image": "a.png",
            "objects": [
                {"name": "red square", "box": [0, 0, 250, 250]},  # drawn there, as named
                {"name": "green circle", "box": [500, 500, 750, 750]},  # a blue circle there
                {"name": "red triangle", "box": [750, 0, 1000, 250]},  # nothing there
                {"name": "red square", "box": "not a box"},  # malformed: not counted
                "not an object",  # malformed: not counted
            ],
        },
        {"prompt": "a red square", "image": "broken.png", "objects": []},
    ]
    stats = report.image_statistics(samples, tmp_path)
    assert stats["planned_objects_at_box"] == pytest.approx(2 / 3)
    assert stats["planned_objects_named_at_box"] == pytest.approx(1 / 3)
    assert stats["unreadable"] == 1
    assert stats["mean_detected_objects"] == 2


def test_grpo_stage_trains_in_one_process_where_cuda_is_available(tmp_path, monkeypatch):
    """With CUDA the GRPO stage trains on the GPU in this process whatever grpo_processes says,
    and its identity says one process; on CPU it says the processes it starts."""
    from gotr1.demo import pipeline as P

    config = tiny_demo_config(tmp_path / "demo", grpo_processes=2)
    grpo = P.grpo_config(config, tmp_path / "sft" / "final", tmp_path / "grpo")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert P.grpo_training_processes(config) == 2
    assert P.grpo_stage_settings(config, "sft-print", grpo)["processes"] == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert P.grpo_training_processes(config) == 1
    assert "processes" not in P.grpo_stage_settings(config, "sft-print", grpo)


def test_a_terminated_demo_stops_its_training_launcher(tmp_path):
    """SIGTERM to a process waiting in run_child stops the child it started (torchrun, in a demo)
    before exiting: no orphan keeps writing into a stage folder."""
    import os
    import signal
    import time

    child_pid = tmp_path / "child.pid"
    sleeper = (
        "import os, pathlib, time; "
        f"pathlib.Path({str(child_pid)!r}).write_text(str(os.getpid())); time.sleep(120)"
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys; from gotr1.demo.pipeline import run_child; "
            f"run_child([sys.executable, '-c', {sleeper!r}], dict(os.environ))",
        ]
    )
    deadline = time.monotonic() + 60
    while not child_pid.is_file() or not child_pid.read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.1)
    pid = int(child_pid.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_grpo_update_passes_hold_at_most_grpo_update_rollouts(tmp_path, monkeypatch):
    """The demo's GRPO update takes its rollouts in passes of at most grpo_update_rollouts each
    (per process: with CUDA one process holds them all), and only as many passes as that needs."""
    from gotr1.demo import pipeline as P
    from gotr1.demo.config import DemoConfig

    def accumulation(config: DemoConfig) -> int:
        return P.grpo_config(
            config, tmp_path / "sft", tmp_path / "grpo"
        ).gradient_accumulation_steps

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accumulation(DemoConfig()) == 8  # 64 prompts x 8 / 2 processes = 256 = 8 x 32
    assert accumulation(DemoConfig(grpo_update_rollouts=100)) == 3  # 100 + 100 + 56
    assert accumulation(DemoConfig(grpo_update_rollouts=1000)) == 1
    assert accumulation(tiny_demo_config(tmp_path / "demo")) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert accumulation(DemoConfig()) == 16
