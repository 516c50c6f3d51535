"""`gotr1 generate`: argument parsing, clear errors for bad model folders, files written."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from PIL import Image

from gotr1.errors import UserError
from gotr1.eval.generate import add_generate_parser
from gotr1.policy.io import save_pretrained
from test_rollout import make_policy


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and the CI machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def parse(argv):
    parser = argparse.ArgumentParser(prog="gotr1")
    add_generate_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, one_thread):
    model, processor = make_policy(boi_logit=None)
    return save_pretrained(model, processor, tmp_path_factory.mktemp("policy"))


def test_defaults_and_flags():
    args = parse(["generate", "a red circle", "--model", "M", "--out", "O"])
    assert (args.num, args.cfg_weight, args.seed, args.max_chain_tokens) == (4, 5.0, None, 600)
    args = parse(
        [
            "generate",
            "--model",
            "M",
            "p",
            "--out",
            "O",
            "--num",
            "2",
            "--cfg-weight",
            "1",
            "--seed",
            "3",
        ]
    )
    assert (args.prompt, args.num, args.cfg_weight, args.seed) == ("p", 2, 1.0, 3)
    assert args.func.__name__ == "run_generate"


def test_missing_and_malformed_model_folders_get_clear_errors(tmp_path):
    args = parse(["generate", "p", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="nope"):
        args.func(args)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = parse(["generate", "p", "--model", str(empty), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="config.json"):
        args.func(args)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    args = parse(["generate", "p", "--model", str(broken), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="broken"):
        args.func(args)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "janus"}))
    args = parse(["generate", "p", "--model", str(no_weights), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="no_weights"):
        args.func(args)


def test_bad_flags_are_user_errors(tmp_path, model_dir):
    for extra in (
        ["--num", "0"],
        ["--top-p", "0"],
        ["--max-chain-tokens", "0"],
        ["--plan-cfg-weight", "-1"],
    ):
        args = parse(["generate", "p", "--model", str(model_dir), "--out", str(tmp_path), *extra])
        with pytest.raises(UserError):
            args.func(args)


def test_generate_writes_images_chains_and_layouts(tmp_path, model_dir, capsys):
    out = tmp_path / "out"
    argv = ["generate", "a red circle", "--model", str(model_dir), "--out", str(out)]
    argv += ["--num", "3", "--seed", "5", "--max-chain-tokens", "8", "--cfg-weight", "3"]
    args = parse(argv)
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "samples.json").read_text())
    assert summary["prompt"] == "a red circle" and len(summary["samples"]) == 3
    assert summary["sampling"]["cfg_weight"] == 3.0
    assert summary["sampling"]["plan_cfg_weight"] is None  # one-condition guidance
    for index, record in enumerate(summary["samples"]):
        stem = out / f"sample_{index:02d}"
        assert Image.open(f"{stem}.png").size == (64, 64)
        assert Image.open(f"{stem}_layout.png").size == (448, 448)
        chain = (out / f"sample_{index:02d}_chain.txt").read_text().strip()
        assert chain == record["chain"].strip()
        assert chain in printed
        assert record["truncated"]  # a random model does not end its chain within 8 tokens
    # Same seed, same samples.
    again = tmp_path / "again"
    args = parse([*argv[:5], str(again), *argv[6:]])
    assert args.func(args) == 0
    assert json.loads((again / "samples.json").read_text())["samples"] == summary["samples"]
    assert (again / "sample_00.png").read_bytes() == (out / "sample_00.png").read_bytes()
    assert summary["plans"] == {"candidates": 1, "repair": False}
    assert all("plan" not in record for record in summary["samples"])
    # The best of three plans by the world judge's chain stage, each sample recording its plan.
    planned = tmp_path / "planned"
    args = parse([*argv[:5], str(planned), *argv[6:], "--plan-candidates", "3", "--repair-plans"])
    assert args.func(args) == 0
    summary = json.loads((planned / "samples.json").read_text())
    assert summary["plans"] == {"candidates": 3, "repair": True} and len(summary["samples"]) == 3
    for record in summary["samples"]:
        plan = record["plan"]
        assert (
            plan["plan_score"] == max(plan["candidate_scores"])
            and len(plan["candidate_scores"]) == 3
        )
        assert record["truncated"] is True  # each candidate of a random model runs to the cap


def test_eval_commands_register_generate_with_its_plan_flags():
    from gotr1.eval.commands import register

    parser = argparse.ArgumentParser(prog="gotr1")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["generate", "p", "--model", "M", "--out", "O"])
    assert args.func.__name__ == "run_generate"
    assert (args.plan_candidates, args.repair_plans, args.plan_judge_noise) == (1, False, 0.0)
    args = parser.parse_args(["generate", "p", "--model", "M", "--out", "O", "--repair-plans"])
    assert args.repair_plans


def test_a_noisy_plan_judge_is_recorded_and_repeats_with_the_seed(tmp_path, model_dir):
    argv = ["generate", "a red circle left of a blue square", "--model", str(model_dir)]
    argv += ["--num", "2", "--seed", "5", "--max-chain-tokens", "8", "--cfg-weight", "3"]
    argv += ["--plan-candidates", "3", "--plan-judge-noise", "0.5"]
    summaries = []
    for name in ("a", "b"):
        args = parse([*argv, "--out", str(tmp_path / name)])
        assert args.func(args) == 0
        summaries.append(json.loads((tmp_path / name / "samples.json").read_text()))
    assert summaries[0]["samples"] == summaries[1]["samples"]
    assert summaries[0]["plans"] == {"candidates": 3, "repair": False, "judge_noise": 0.5}
    for record in summaries[0]["samples"]:
        plan = record["plan"]
        assert len(plan["noised_scores"]) == 3
        assert plan["candidate_index"] == plan["noised_scores"].index(max(plan["noised_scores"]))
        assert plan["plan_score"] == plan["candidate_scores"][plan["candidate_index"]]


def test_two_condition_guidance_flag_is_recorded_and_checked(tmp_path, model_dir, capsys):
    from gotr1.cli import main

    out = tmp_path / "out"
    argv = ["generate", "a red circle", "--model", str(model_dir), "--out", str(out), "--num", "2"]
    argv += ["--seed", "5", "--max-chain-tokens", "8", "--cfg-weight", "3"]
    args = parse([*argv, "--plan-cfg-weight", "6"])
    assert args.plan_cfg_weight == 6.0 and args.func(args) == 0
    summary = json.loads((out / "samples.json").read_text())
    assert summary["sampling"]["cfg_weight"] == 3.0
    assert summary["sampling"]["plan_cfg_weight"] == 6.0
    # Equal weights draw exactly the one-condition images.
    equal, one = tmp_path / "equal", tmp_path / "one"
    args = parse([*argv[:5], str(equal), *argv[6:], "--plan-cfg-weight", "3"])
    assert args.func(args) == 0
    args = parse([*argv[:5], str(one), *argv[6:]])
    assert args.func(args) == 0
    assert (equal / "sample_01.png").read_bytes() == (one / "sample_01.png").read_bytes()
    capsys.readouterr()
    assert main([*argv, "--plan-cfg-weight", "-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "plan_cfg_weight must be >= 0" in err, err


def test_plans_scored_by_an_openai_judge_draw_the_servers_best_and_record_it(
    tmp_path, model_dir, monkeypatch
):
    """--plan-judge openai scores each candidate through the server at --judge-url: R_sem is a
    score the server derives from the plan's text, R_spa its lowest, so each image is drawn from
    the candidate the server scored highest; samples.json names the judge."""
    import re

    from gotr1.chain import parse_chain
    from gotr1.rewards.qwen_prompts import readable_plan
    from test_rewards_http import ChatServer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("PLAN_JUDGE_KEY", "sk-plan-judge")
    given: list[tuple[str, int]] = []

    def respond(text, image, attempt):
        plan = re.search(r"\nPlan: (.*)\n\nJudge whether", text)
        if plan is None:  # the layout question: R_spa's lowest score, 0
            return ("ok", '{"score": 1}')
        score = sum(map(ord, plan.group(1))) % 11
        given.append((plan.group(1), score))
        return ("ok", f'{{"score": {score}}}')

    server = ChatServer()
    server.respond = respond
    try:
        out = tmp_path / "out"
        argv = ["generate", "a red circle", "--model", str(model_dir), "--out", str(out)]
        argv += ["--num", "3", "--seed", "5", "--max-chain-tokens", "8", "--cfg-weight", "3"]
        argv += ["--plan-candidates", "4", "--plan-judge", "openai"]
        argv += ["--judge-url", server.base_url, "--judge-model", "stand-in"]
        argv += ["--judge-api-key-env", "PLAN_JUDGE_KEY"]
        args = parse(argv)
        assert args.func(args) == 0
    finally:
        server.close()
    # The key travels from the named variable to the server only, never into a written file.
    assert set(server.auth_headers) == {"Bearer sk-plan-judge"}
    written = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert written and not any(b"sk-plan-judge" in data for data in written)
    summary = json.loads((out / "samples.json").read_text())
    assert summary["plan_judge"] == "openai:stand-in"
    assert summary["plans"] == {"candidates": 4, "repair": False}
    assert len(given) == 3 * 4  # one R_sem request a candidate
    scored = dict(given)
    chosen = []
    for record in summary["samples"]:
        plan = record["plan"]
        scores = plan["candidate_scores"]
        assert plan["candidate_index"] == scores.index(max(scores))
        own = scored[readable_plan(parse_chain(plan["sampled_chain"]))]
        assert plan["plan_score"] == pytest.approx(own / 10) == pytest.approx(max(scores))
        chosen.append(plan["candidate_index"])
    every = sorted(s for record in summary["samples"] for s in record["plan"]["candidate_scores"])
    assert every == pytest.approx(sorted(score / 10 for _, score in given))
    assert any(index > 0 for index in chosen)  # not simply the first plan sampled


def test_plan_judge_flags_default_to_world_and_need_candidates(tmp_path, model_dir, capsys):
    from gotr1.cli import main

    args = parse(["generate", "p", "--model", "M", "--out", "O"])
    assert (args.plan_judge, args.judge_model, args.judge_url) == (
        None,
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "http://127.0.0.1:8000/v1",
    )
    out = tmp_path / "out"
    argv = ["generate", "a red circle", "--model", str(model_dir), "--out", str(out)]
    argv += ["--num", "1", "--seed", "5", "--max-chain-tokens", "8", "--plan-candidates", "2"]
    args = parse(argv)
    assert args.func(args) == 0
    assert json.loads((out / "samples.json").read_text())["plan_judge"] == "world"
    args = parse([*argv[:6], "--num", "1"])
    assert args.func(args) == 0
    assert "plan_judge" not in json.loads((out / "samples.json").read_text())
    capsys.readouterr()
    assert main([*argv[:6], "--plan-judge", "openai"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--plan-judge needs --plan-candidates K > 1" in err, err
