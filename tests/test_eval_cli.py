"""`gotr1 eval ...` registration, defaults and the errors that need no model."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from gotr1.cli import UserError, build_parser, main
from gotr1.eval.commands import build_scorer, compbench_prompts, register


def parse(argv):
    parser = argparse.ArgumentParser(prog="gotr1")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_registration_does_not_import_torch():
    code = (
        "import argparse, sys\n"
        "from gotr1.eval.commands import register\n"
        "p = argparse.ArgumentParser(); register(p.add_subparsers())\n"
        "import gotr1.eval.scorers, gotr1.eval.generation, gotr1.eval.world_bench\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_defaults_follow_the_paper_and_the_official_protocols():
    args = parse(["eval", "compbench", "--model", "M", "--out", "O"])
    assert (args.cfg_weight, args.temperature, args.image_temperature) == (5.0, 1.0, 1.0)
    assert (args.images_per_prompt, args.max_chain_tokens, args.seed) == (10, 600, 42)
    assert args.scorer == ["qwen"] and args.categories is None and args.limit is None
    assert args.judge_model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert args.func.__name__ == "run_compbench"
    args = parse(["eval", "geneval", "--model", "M", "--out", "O", "--scorer", "world", "openai"])
    assert args.images_per_prompt == 4 and args.scorer == ["world", "openai"]
    assert args.func.__name__ == "run_geneval"
    args = parse(["eval", "world", "--model", "M"])
    assert (args.images_per_prompt, args.num_prompts, args.split) == (1, 300, "test")
    assert str(args.out) == "eval-world" and args.func.__name__ == "run_world"
    assert args.prompts_per_batch == 64 and args.max_batch_rows is None


def test_the_gotr1_command_lists_eval(capsys):
    parser = build_parser()
    args = parser.parse_args(["eval", "geneval", "--model", "M", "--out", "O"])
    assert args.func.__name__ == "run_geneval"
    with pytest.raises(SystemExit):
        main(["eval", "compbench", "--help"])
    assert "judged-by-<scorer>" in capsys.readouterr().out


def test_user_errors_print_one_line(tmp_path, capsys):
    code = main(["eval", "compbench", "--model", "M", "--out", str(tmp_path), "--categories", "x"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown T2I-CompBench category x" in err and "Traceback" not in err


def test_compbench_prompts_from_the_package_and_a_folder(tmp_path):
    shipped = compbench_prompts(["color", "spatial"], limit=3)
    assert list(shipped) == ["color", "spatial"] and all(len(v) == 3 for v in shipped.values())
    assert all("_" not in p for v in shipped.values() for p in v)
    full = compbench_prompts(["numeracy"])["numeracy"]
    assert len(full) > 100 and full[:3] == compbench_prompts(["numeracy"], limit=3)["numeracy"]
    (tmp_path / "color_val.txt").write_text("a red circle\tmeta\n\na blue square\n")
    assert compbench_prompts(["color"], tmp_path) == {"color": ["a red circle", "a blue square"]}
    (tmp_path / "shape_val.txt").write_text("\n\n")
    with pytest.raises(UserError, match="shape_val.txt: no prompts"):
        compbench_prompts(["shape"], tmp_path)
    with pytest.raises(UserError, match="categories texture3, z"):
        compbench_prompts(["texture3", "z"])


def test_scoring_without_images_is_a_user_error(tmp_path):
    args = parse(
        [
            "eval",
            "geneval",
            "--skip-generation",
            "--out",
            str(tmp_path),
            "--limit",
            "1",
            "--scorer",
            "world",
        ]
    )
    with pytest.raises(UserError, match="none of the 4 expected images"):
        args.func(args)
    args = parse(
        [
            "eval",
            "compbench",
            "--skip-generation",
            "--out",
            str(tmp_path),
            "--limit",
            "1",
            "--categories",
            "color",
            "--images-per-prompt",
            "2",
            "--scorer",
            "world",
        ]
    )
    with pytest.raises(UserError, match="none of the 2 expected images"):
        args.func(args)


def test_judges_that_cannot_load_are_user_errors(tmp_path):
    args = parse(
        [
            "eval",
            "geneval",
            "--out",
            "O",
            "--judge-model",
            str(tmp_path / "no-qwen"),
            "--judge-local-files-only",
        ]
    )
    with pytest.raises(UserError, match="no-qwen"):
        build_scorer("qwen", args)
    args = parse(["eval", "geneval", "--out", "O", "--judge-url", "ftp://x"])
    with pytest.raises(UserError, match="judge-url"):
        build_scorer("openai", args)
    scorer = build_scorer("world", args)
    assert scorer.name == "world-detector"


def test_manifest_guards_resume(tmp_path):
    from gotr1.eval.commands import _check_manifest

    manifest = {"model": "a", "seed": 1}
    _check_manifest(tmp_path, manifest, force=False, write=True)
    assert json.loads((tmp_path / "generation.json").read_text()) == manifest
    _check_manifest(tmp_path, manifest, force=False, write=True)  # same settings: fine
    with pytest.raises(UserError, match="seed differ"):
        _check_manifest(tmp_path, {"model": "a", "seed": 2}, force=False, write=True)
    _check_manifest(tmp_path, {"model": "a", "seed": 2}, force=True, write=True)
    assert json.loads((tmp_path / "generation.json").read_text())["seed"] == 2


def test_plan_cfg_weight_flag_reaches_sampling_and_the_generation_records(capsys):
    from gotr1.eval.commands import _manifest
    from gotr1.eval.generate import sampling_config
    from gotr1.eval.generation import sampling_record
    from gotr1.policy.sampling import SamplingConfig

    for benchmark in ("compbench", "geneval", "world"):
        args = parse(["eval", benchmark, "--model", "M", "--out", "O"])
        assert args.plan_cfg_weight is None
        # A folder generated before the setting existed keeps its manifest (resume still works).
        assert "plan_cfg_weight" not in _manifest(args, benchmark)["sampling"]
        args = parse(["eval", benchmark, "--model", "M", "--out", "O", "--plan-cfg-weight", "7"])
        sampling = sampling_config(args)
        assert (sampling.cfg_weight, sampling.plan_cfg_weight) == (5.0, 7.0)
        assert _manifest(args, benchmark)["sampling"]["plan_cfg_weight"] == 7.0
        record = sampling_record(sampling)  # beside every image; rebuilds its batch's sampling
        assert record["plan_cfg_weight"] == 7.0 and SamplingConfig(**record) == sampling
    code = main(["eval", "world", "--model", "M", "--plan-cfg-weight", "-1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "plan_cfg_weight must be >= 0" in err, err


def test_plan_flags_on_every_eval_command_and_the_manifest_names_them_only_when_set(capsys):
    from gotr1.eval.commands import _check_common, _manifest, plan_judge_name
    from gotr1.eval.generate import plan_options
    from gotr1.eval.plans import PlanOptions

    for benchmark in ("compbench", "geneval", "world"):
        args = parse(["eval", benchmark, "--model", "M", "--out", "O"])
        assert plan_options(args) == PlanOptions()
        manifest = _manifest(args, benchmark)  # a folder generated without plans still resumes
        assert "plans" not in manifest and "plan_judge" not in manifest
        flags = ["--plan-candidates", "3", "--repair-plans", "--plan-judge-noise", "0.2"]
        args = parse(["eval", benchmark, "--model", "M", "--out", "O", *flags])
        assert plan_options(args) == PlanOptions(candidates=3, repair=True, judge_noise=0.2)
        manifest = _manifest(args, benchmark)
        assert manifest["plans"] == {"candidates": 3, "repair": True, "judge_noise": 0.2}
        assert manifest.get("plan_judge") == (
            None if benchmark == "world" else "qwen:Qwen/Qwen2.5-VL-7B-Instruct"
        )
        for noise in ("-0.1", "nan"):
            code = main(["eval", benchmark, "--model", "M", "--out", "O", "--plan-candidates",
                         "2", "--plan-judge-noise", noise])  # fmt: skip
            err = capsys.readouterr().err.strip()
            assert code == 2 and err.count("\n") == 0, err
            assert "plan judge noise must be a finite sigma >= 0" in err, err
    # The plan judge: --plan-judge, else the first scorer that is a judge, else local Qwen.
    base = ["eval", "compbench", "--model", "M", "--out", "O", "--plan-candidates", "2"]
    assert plan_judge_name(parse([*base, "--scorer", "owlv2", "openai", "world"])) == "openai"
    assert plan_judge_name(parse([*base, "--scorer", "official"])) == "qwen"
    assert plan_judge_name(parse([*base, "--scorer", "qwen", "--plan-judge", "world"])) == "world"
    args = parse([*base, "--scorer", "openai", "--judge-model", "m7"])
    assert _manifest(args, "compbench")["plan_judge"] == "openai:m7"
    args = parse(["eval", "geneval", "--model", "M", "--out", "O", "--plan-judge", "world"])
    with pytest.raises(UserError, match="--plan-judge needs --plan-candidates"):
        _check_common(args)
    with pytest.raises(UserError, match="needs plan candidates > 1"):
        _check_common(parse(["eval", "world", "--model", "M", "--plan-judge-noise", "0.1"]))
