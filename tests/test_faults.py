"""Faults of issue 27 (reliability): what gotr1 may delete, checkpoints that survive a kill at
any moment, an API key that never leaks, answer parsers linear in their input, and numeric
settings that must be finite."""

from __future__ import annotations

import pytest

from gotr1.cli import main
from gotr1.demo import pipeline as P
from gotr1.demo.pipeline import Stages

# ----------------------------------------------------------------------------------------------
# 1. A stage folder gotr1 did not write is never deleted
# ----------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by a stubbed stage to end a demo run right after its folder was prepared."""


def test_demo_refuses_a_tokenizer_dir_of_the_users_files(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own notes")

    def stop(*args):
        raise _Stop

    monkeypatch.setattr(P, "train_tokenizer", stop)  # no training: only the folder handling
    code = main(
        ["demo", "--quick", "--out", str(tmp_path / "run"), "--set", f"tokenizer_dir={mine}"]
    )
    assert (mine / "notes.txt").read_text() == "my own notes"
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(mine) in errors[0]


def test_a_stage_folder_without_a_marker_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "sft"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"\x00" * 10)
    from gotr1.errors import UserError

    with pytest.raises(UserError, match=str(folder)):
        Stages(lambda _: None).run("sft", folder, {"steps": 1}, lambda f: {})
    assert (folder / "data.bin").is_file()
    # An empty folder (one a stage made before its marker was written) is used.
    (folder / "data.bin").unlink()
    record = Stages(lambda _: None).run("sft", folder, {"steps": 1}, lambda f: {"ok": 1})
    assert record["result"] == {"ok": 1}


@pytest.mark.parametrize("marker", [P.STAGE_MARKER, P.STARTED_MARKER])
def test_a_stage_folder_gotr1_wrote_is_still_cleared(tmp_path, marker):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / marker).write_text('{"fingerprint": "other settings"}')
    (folder / "old-model.bin").write_text("x")
    seen = []
    record = Stages(lambda _: None).run(
        "tokenizer", folder, {"v": 2}, lambda f: seen.append(sorted(p.name for p in f.iterdir()))
    )
    assert seen == [[P.STARTED_MARKER]] and not record["cached"]
    assert not (folder / "old-model.bin").exists()
    # An unreadable marker still marks the folder as gotr1's.
    (folder / P.STAGE_MARKER).write_text("{not json")
    (folder / "junk").write_text("x")
    Stages(lambda _: None).run("tokenizer", folder, {"v": 3}, lambda f: {})
    assert not (folder / "junk").exists()


# ----------------------------------------------------------------------------------------------
# 2. A kill between the two renames of a re-save never loses the checkpoint
# ----------------------------------------------------------------------------------------------


def _killed_between_renames(folder, source, step, with_new=True, with_old=True):
    """Lay out what `save_checkpoint` re-saving `step` leaves when killed between its renames:
    the old complete copy moved to ``.tmp-checkpoint-<step>.old``, the new complete one still at
    ``.tmp-checkpoint-<step>``, no ``checkpoint-<step>``."""
    import shutil

    from gotr1.train import checkpoint as ckpt

    folder.mkdir(parents=True, exist_ok=True)
    if with_old:
        shutil.copytree(source, folder / f"{ckpt.TMP_PREFIX}{step}.old")
    if with_new:
        shutil.copytree(source, folder / f"{ckpt.TMP_PREFIX}{step}")
    assert not (folder / f"{ckpt.PREFIX}{step}").exists()


def _saved_checkpoint(folder, step=6):
    """A real checkpoint written by `save_checkpoint` (keep 1), re-saved once at the same step."""
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from gotr1.train import checkpoint as ckpt
    from test_train_checkpoint import small_training, train

    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = small_training()
    train(model, optimizer, scheduler, 2, seed=0)

    def save_model(path):
        path.mkdir()
        save_file(dict(model.state_dict()), str(path / "model.safetensors"))

    for state in ({"x": 1}, {"x": 2}):  # the second is a re-save of the same step
        ckpt.save_checkpoint(
            accelerator, folder, step, save_model, optimizer, scheduler, state, keep=1
        )
    return folder / f"{ckpt.PREFIX}{step}"


@pytest.mark.parametrize("left", ["both", "new", "old"])
def test_a_kill_between_the_renames_of_a_re_save_keeps_the_checkpoint(tmp_path, left):
    import json

    from gotr1.errors import UserError
    from gotr1.train import checkpoint as ckpt

    source = _saved_checkpoint(tmp_path / "source")
    assert [p.name for p in (tmp_path / "source").iterdir()] == ["checkpoint-6"]
    run = tmp_path / "run"
    _killed_between_renames(run, source, 6, with_new=left != "old", with_old=left != "new")
    (run / f"{ckpt.TMP_PREFIX}8").mkdir()  # a half-written save: never a checkpoint

    assert ckpt.resolve_resume(run, True) == run / "checkpoint-6"
    state = json.loads((run / "checkpoint-6" / ckpt.STATE_FILE).read_text())
    assert state["step"] == 6 and state["x"] == 2
    ckpt.clean_stale(run)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-6"]
    assert ckpt.latest_checkpoint(run) == run / "checkpoint-6"

    # Cleaning first (a run without --resume) recovers too, and the run is then refused.
    again = tmp_path / "again"
    _killed_between_renames(again, source, 6, with_new=left != "old", with_old=left != "new")
    ckpt.clean_stale(again)
    assert [p.name for p in ckpt.checkpoints(again)] == ["checkpoint-6"]
    with pytest.raises(UserError, match="no complete checkpoint"):
        ckpt.resolve_resume(tmp_path / "empty", True)


def test_a_complete_copy_beside_its_final_folder_is_cleaned_not_recovered(tmp_path):
    import shutil

    from gotr1.train import checkpoint as ckpt

    source = _saved_checkpoint(tmp_path / "run")
    shutil.copytree(source, tmp_path / "run" / f"{ckpt.TMP_PREFIX}6")  # killed before the swap
    assert ckpt.recover_checkpoints(tmp_path / "run") == []
    ckpt.clean_stale(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint-6"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    import torch

    from test_train_helpers import make_tiny_model

    torch.set_num_threads(1)
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_sft_resumes_from_a_re_save_killed_between_its_renames(tiny_folder, tmp_path):
    import torch
    from safetensors.torch import load_file

    from gotr1.errors import UserError
    from gotr1.train.runlog import read_log
    from gotr1.train.sft import train_sft
    from test_train_sft import quick_config

    whole = tmp_path / "whole"
    train_sft(quick_config(tiny_folder, whole, save_total_limit=2))
    part = tmp_path / "part"
    _killed_between_renames(part, whole / "checkpoint-2", 2)
    lines = (whole / "train_log.jsonl").read_text().splitlines()
    (part / "train_log.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(UserError, match="already holds checkpoints"):
        train_sft(quick_config(tiny_folder, part, save_total_limit=1))  # not restarted at 0
    train_sft(quick_config(tiny_folder, part, save_total_limit=1), resume=True)
    assert [r["step"] for r in read_log(part)] == [1, 2, 3, 4]
    a = load_file(str(whole / "final" / "model.safetensors"))
    b = load_file(str(part / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_grpo_resumes_from_a_re_save_killed_between_its_renames(tiny_folder, tmp_path):
    import torch

    from gotr1.train import grpo
    from gotr1.train.runlog import read_log
    from test_train_grpo import quick, trainable
    from test_train_helpers import code_reward

    whole = tmp_path / "whole"
    grpo.train_grpo(quick(tiny_folder, whole, save_total_limit=2), reward_fn=code_reward)
    part = tmp_path / "part"
    _killed_between_renames(part, whole / "checkpoint-1", 1)
    lines = (whole / "train_log.jsonl").read_text().splitlines()
    (part / "train_log.jsonl").write_text(lines[0] + "\n")
    grpo.train_grpo(quick(tiny_folder, part), resume=True, reward_fn=code_reward)
    assert [r["step"] for r in read_log(part)] == [1, 2]
    a, b = trainable(whole / "final"), trainable(part / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# 3. The API key never leaks, whatever it ends in
# ----------------------------------------------------------------------------------------------

KEY_CORE = "sk-live/Zq+9f4'x\"r7-never-print"
"""A key with characters that repr, JSON and URLs escape."""


def _leaks(text: str, key: str) -> list[str]:
    """The forms of `key` (and of its printable core) found in `text`."""
    import json
    import urllib.parse

    core = key.strip()
    forms = {
        key,
        core,
        "sk-live/Zq",
        "never-print",
        repr(key)[1:-1],
        json.dumps(key)[1:-1],
        urllib.parse.quote(key, safe=""),
        urllib.parse.quote(core, safe=""),
        repr(key.encode())[2:-1],
    }
    return sorted(form for form in forms if form and form in text)


@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n", " ", "\t"])
def test_score_with_a_key_ending_in_whitespace_sends_it_stripped_and_never_prints_it(
    tmp_path, monkeypatch, capsys, caplog, ending
):
    import json
    import logging

    from PIL import Image

    from gotr1.chain import format_chain
    from test_rewards_http import KEY_ENV, ChatServer

    key = KEY_CORE + ending
    monkeypatch.setenv(KEY_ENV, key)
    chain = tmp_path / "chain.txt"
    chain.write_text(format_chain([("red circle", (100, 100, 400, 400))]))
    image = tmp_path / "image.png"
    Image.new("RGB", (64, 64), "white").save(image)
    server = ChatServer()
    server.respond = lambda text, image, attempt: ("ok", '{"score": 7}')
    caplog.set_level(logging.DEBUG)
    try:
        code = main(
            ["score", "--judge", "openai", "--base-url", server.base_url, "--api-key-env",
             KEY_ENV, "--prompt", "a red circle", "--chain", str(chain), "--image", str(image),
             "--timeout", "5", "--max-retries", "0"]
        )  # fmt: skip
    finally:
        server.close()
    out, err = capsys.readouterr()
    assert code == 0
    assert server.auth_headers and set(server.auth_headers) == {f"Bearer {KEY_CORE}"}
    for text in (out, err, caplog.text):
        assert _leaks(text, key) == []
    report = json.loads(out)
    assert report["components"]["sem"] == pytest.approx(0.7) and "sem" not in report["failed"]


def test_a_key_with_a_control_character_inside_is_refused_without_printing_it(monkeypatch, caplog):
    import logging

    from test_rewards_http import KEY_ENV, ChatServer, _chains, make_judge

    key = "sk-live/Zq\x01never-print"
    monkeypatch.setenv(KEY_ENV, key)
    server = ChatServer()
    caplog.set_level(logging.DEBUG)
    try:
        with make_judge(server.base_url) as judge:
            result = judge.semantic(["p"], _chains(1))
            texts = [repr(judge), str(judge.stats), str(judge.error_counts)]
    finally:
        server.close()
    assert result.failed.all() and server.requests == 0  # refused before anything was sent
    assert KEY_ENV in result.reasons[0] and "control character" in result.reasons[0]
    for text in [*texts, str(result.reasons), caplog.text]:
        assert _leaks(text, key) == []


def test_the_scrubber_removes_every_escaped_form_of_the_key():
    import json
    import urllib.parse

    from gotr1.rewards.openai_http import scrub_secret

    key = KEY_CORE + "\r"
    messages = [
        f"ValueError: Invalid header value {(b'Bearer ' + key.encode())!r}",
        f"Invalid header value {('Bearer ' + key)!r}",
        json.dumps({"error": f"Bearer {key}"}),
        json.dumps({"error": repr(key)}),
        f"GET /v1?key={urllib.parse.quote(key, safe='')}",
        f"GET /v1?key={urllib.parse.quote_plus(key)}",
        f"plain {key} and stripped {KEY_CORE}",
    ]
    for message in messages:
        scrubbed = scrub_secret(message, key)
        assert "***" in scrubbed and _leaks(scrubbed, key) == [], scrubbed


# ----------------------------------------------------------------------------------------------
# 4. parse_chain is linear in its input
# ----------------------------------------------------------------------------------------------

_OBJ = "<|obj_start|>red circle<|obj_end|> <|box_start|>"
_END = "<|box_end|>"


def _seconds(function, *args):
    """Wall-clock seconds of one call, and what it returned."""
    import time

    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def test_parse_chain_is_linear_in_whitespace_inside_a_box():
    from gotr1.chain import parse_chain

    # 40,000 spaces took about 7 s when each split of the run was tried: a correctness bound.
    seconds, chain = _seconds(parse_chain, _OBJ + "(1,2)" + " " * 40_000 + "x" + _END)
    assert seconds < 1 and chain.objects == [] and "malformed box" in chain.errors[0]
    n = 1_000_000
    shapes = [
        "(1,2)" + " " * n + "x",
        "(1,2)" + " " * n + "," + " " * n + "x",
        " " * n + "(1,2)" + " " * n + ", (3," + " " * n,
        "(" + "1" * n + ",2),(3,4)",
        "(1." + "5" * n + ",2),(3,4)",
    ]
    for body in shapes:
        seconds, chain = _seconds(parse_chain, _OBJ + body + _END)
        assert seconds < 1, (body[:20], seconds)
        assert chain.errors
    seconds, chain = _seconds(parse_chain, _OBJ + " " * n + "(1, 2) ,\n (30,40)" + " " * n + _END)
    assert seconds < 1 and chain.boxes == [(1, 2, 30, 40)] and not chain.errors


# ----------------------------------------------------------------------------------------------
# 5. Judge-answer parsers: bounded answers, linear patterns
# ----------------------------------------------------------------------------------------------


def _judge_shapes(n: int) -> list[tuple[str, str]]:
    """Pathological judge answers of about `n` characters: (parser, answer)."""
    return [
        ("boxes", "(1,2)" + " " * n),
        ("boxes", "(1,2)" + " " * (n // 2) + "," + " " * (n // 2) + "x"),
        ("score", '"score"' + " " * n),
        ("score", "score is" + " " * n + ":x"),
        ("boxes", "[" * n),
        ("score", "[" * n),
        ("score", "{" * n),
        ("boxes", "[1," * (n // 3)),
        ("boxes", "[" + "1," * (n // 2)),
        ("boxes", "[]" * (n // 2)),
        ("boxes", "[a}" * (n // 3) + "]"),
        ("boxes", "['a'}" * (n // 5) + "]"),
        ("score", "```" + " " * n),
        ("score", "```json" + "\n" * n + "x"),
        ("score", "7" + " " * n + "x"),
        ("score", "7 /" + " " * n + "x"),
        ("score", "rate " * (n // 5)),
        ("boxes", "none" + " " * n + "x"),
        ("boxes", "(1, 2) " * (n // 7)),
    ]


def _parse(parser: str, text: str):
    from gotr1.rewards.qwen_prompts import parse_boxes, parse_score

    return parse_boxes(text) if parser == "boxes" else parse_score(text, 0, 10)


def test_judge_answer_parsers_are_linear_on_pathological_answers():
    # Sizes that took 6 s and 11.5 s when whitespace runs were split every way: correctness
    # bounds, not benchmarks.
    for parser, text in [("boxes", "(1,2)" + " " * 2_000), ("score", '"score"' + " " * 20_000)]:
        seconds, _ = _seconds(_parse, parser, text)
        assert seconds < 1, (text[:10], seconds)
    from gotr1.rewards.qwen_prompts import MAX_ANSWER_CHARS

    for parser, text in _judge_shapes(MAX_ANSWER_CHARS - 16):  # read in full: the patterns' cost
        assert len(text) <= MAX_ANSWER_CHARS
        seconds, _ = _seconds(_parse, parser, text)
        assert seconds < 1, (parser, text[:12], seconds)


def test_judge_answers_over_the_bound_are_unusable_at_once():
    from gotr1.rewards.qwen_prompts import MAX_ANSWER_CHARS

    # A usable answer padded past the bound is refused too (not read in part).
    assert _parse("score", '{"score": 7}' + " " * MAX_ANSWER_CHARS) is None
    assert _parse("score", '{"score": 7}' + " " * (MAX_ANSWER_CHARS - 20)) == 7
    for parser, text in _judge_shapes(1_000_000):
        seconds, result = _seconds(_parse, parser, text)
        assert seconds < 1 and result is None, (parser, text[:12], seconds)


def test_normal_judge_answers_parse_as_before():
    answers = [
        ("score", '{"score": 7}', 7.0),
        ("score", "**Final Score:** **9**", 9.0),
        ("score", "Score is 7/10", 7.0),
        ("score", "score: is 8", None),
        ("score", "The score of 6 out of 10", 6.0),
        ("score", "I'd rate it 8 out of 10", 8.0),
        ("score", " **7** .", 7.0),
        ("score", "7 out of 10", 7.0),
        ("score", "```json\n{'score': 4}\n```", 4.0),
        ("boxes", '[{"bbox_2d": [1, 2, 30, 40], "label": "cat"}]', [[1, 2, 30, 40]]),
        ("boxes", "(1, 2) , to (30,40) and (5,6)-(7,8)", [[1, 2, 30, 40], [5, 6, 7, 8]]),
        ("boxes", '[{"bbox_2d": [1,2,3,4]}, {"bbox_2d": [5,6', [[1, 2, 3, 4]]),
        ("boxes", "{'bbox_2d': [1, 2, 3, 4]}", [[1, 2, 3, 4]]),
        ("boxes", "None.", []),
        ("boxes", "There is no cat in the image", []),
        ("boxes", "[]", []),
    ]
    for parser, text, expected in answers:
        assert _parse(parser, text) == expected, text


def test_an_over_long_answer_is_a_counted_judge_failure():
    from gotr1.rewards.qwen_prompts import MAX_ANSWER_CHARS
    from test_rewards_http import ChatServer, _chains, make_judge

    server = ChatServer()
    server.respond = lambda text, image, attempt: ("ok", '{"score": 7}' + " " * MAX_ANSWER_CHARS)
    try:
        with make_judge(server.base_url, api_key_env=None) as judge:
            result = judge.semantic(["p"], _chains(1))
    finally:
        server.close()
    assert result.failed.all() and server.requests == 2  # asked once more, then counted


# ----------------------------------------------------------------------------------------------
# 6. Every numeric setting is finite
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["sft", "--learning_rate", "inf"], "learning_rate"),
        (["sft", "--learning_rate", "nan"], "learning_rate"),
        (["grpo", "--max_grad_norm", "nan"], "max_grad_norm"),
        (["grpo", "--cfg_weight=-inf"], "cfg_weight"),
        (["grpo", "--reward_weights", "sem=nan"], "reward_weights"),
        (["demo", "--set", "grpo_learning_rate=nan"], "grpo_learning_rate"),
        (["demo", "--set", "cfg_weight=nan"], "cfg_weight"),
        (["demo", "--set", "grpo_beta=inf"], "grpo_beta"),
        (["score", "--judge", "openai", "--timeout", "nan"], "timeout"),
        (["score", "--judge", "openai", "--timeout", "inf"], "timeout"),
        (["score", "--weights", "sem=nan", "--combination", "weighted_sum"], "weights"),
    ],
)
def test_non_finite_settings_are_refused_naming_the_field(tmp_path, capsys, args, field):
    from PIL import Image

    from gotr1.chain import format_chain

    if args[0] == "demo":
        args = [*args, "--out", str(tmp_path / "run")]
    if args[0] in ("sft", "grpo"):  # were the value taken, a short run in a scratch folder
        args = [*args, "--output_dir", str(tmp_path / "run"), "--max_steps", "1"]
    if args[0] == "score":
        chain = tmp_path / "chain.txt"
        chain.write_text(format_chain([("red circle", (100, 100, 400, 400))]))
        image = tmp_path / "image.png"
        Image.new("RGB", (32, 32), "white").save(image)
        args = [*args, "--prompt", "a red circle", "--chain", str(chain), "--image", str(image)]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and field in errors[0] and "finite" in errors[0], errors
    assert not (tmp_path / "run").exists()


def test_each_config_system_checks_every_float_field():
    import dataclasses
    import typing

    from gotr1.demo.config import DemoConfig
    from gotr1.errors import UserError
    from gotr1.rewards import OpenAIJudgeConfig, RewardConfig
    from gotr1.train.config import ConfigError, GRPOConfig, SFTConfig

    def float_fields(cls):
        hints = typing.get_type_hints(cls)
        return [f.name for f in dataclasses.fields(cls) if hints[f.name] in (float, float | None)]

    for cls in (SFTConfig, GRPOConfig):
        assert len(float_fields(cls)) >= 8
        for name in float_fields(cls):
            for bad in (float("nan"), float("inf")):
                with pytest.raises(ConfigError, match=name):
                    cls(**{name: bad})
    for name in float_fields(DemoConfig):
        with pytest.raises(UserError, match=f"demo setting {name} "):
            DemoConfig(**{name: float("nan")}).validate()
    for name in float_fields(OpenAIJudgeConfig):
        with pytest.raises(ValueError, match=name):
            OpenAIJudgeConfig(**{name: float("nan")})
    for name in float_fields(RewardConfig):
        with pytest.raises(ValueError, match=name):
            RewardConfig(**{name: float("inf")})
    with pytest.raises(ValueError, match="weights"):
        RewardConfig(weights={"sem": float("nan")})
    GRPOConfig(learning_rate=1e-3, max_grad_norm=0.0, epsilon_high=None)  # finite values pass


# ----------------------------------------------------------------------------------------------
# 7. A damaged checkpoint or model folder is a one-line error naming the file; --resume (latest)
#    falls back to the newest intact checkpoint
# ----------------------------------------------------------------------------------------------


def _truncate(path, keep=0.5):
    """Cut a file short, as a kill or a full disk during the write would leave it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGES = {
    "model/model.safetensors": lambda path: _truncate(path),
    "optimizer.safetensors": lambda path: _truncate(path),
    "optimizer.json": lambda path: _truncate(path),
    "scheduler.json": lambda path: _truncate(path),
    "trainer_state.json": lambda path: path.write_bytes(b"\x00\x17garbage{"),
    "rng-0.json": lambda path: path.write_text(""),
    "model/config.json": lambda path: path.write_text("[1, 2, 3]"),
}
"""File of a checkpoint -> how it is damaged."""


def _two_checkpoints(folder):
    """A run folder with intact checkpoints 4 and 6 written by `save_checkpoint` (the policy is
    a model.safetensors plus a config.json)."""
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from gotr1.train import checkpoint as ckpt
    from test_train_checkpoint import small_training, train

    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = small_training()
    train(model, optimizer, scheduler, 2, seed=0)

    def save_model(path):
        path.mkdir()
        save_file(dict(model.state_dict()), str(path / "model.safetensors"))
        (path / "config.json").write_text('{"model_type": "janus"}')

    for step in (4, 6):
        ckpt.save_checkpoint(accelerator, folder, step, save_model, optimizer, scheduler, {}, 2)
    return accelerator, folder / "checkpoint-4", folder / "checkpoint-6"


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_damaged_checkpoint_file_is_named_and_latest_falls_back(tmp_path, name):
    from gotr1.errors import UserError
    from gotr1.train import checkpoint as ckpt
    from test_train_checkpoint import small_training

    accelerator, older, newest = _two_checkpoints(tmp_path / "run")
    DAMAGES[name](newest / name)
    damaged = str(newest / name)

    # Given by name: refused in one line naming the file.
    with pytest.raises(UserError) as refused:
        ckpt.resolve_resume(tmp_path / "run", newest)
    assert damaged in str(refused.value) and "\n" not in str(refused.value)

    # --resume (latest): the newest intact checkpoint, said in one line.
    notes = []
    assert ckpt.resolve_resume(tmp_path / "run", True, notes.append) == older
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "checkpoint-6" in notes[0] and damaged in notes[0] and str(older) in notes[0]

    # Nothing intact: one line naming the newest's damaged file.
    DAMAGES[name](older / name)
    with pytest.raises(UserError, match="no intact checkpoint") as none_left:
        ckpt.resolve_resume(tmp_path / "run", True, notes.append)
    assert damaged in str(none_left.value) and len(notes) == 1

    # Loading the damaged state directly is a one-line error too, never a traceback.
    if not name.startswith("model/"):
        _, optimizer, scheduler = small_training(seed=3)
        with pytest.raises(UserError) as loading:
            ckpt.load_checkpoint(accelerator, newest, optimizer, scheduler)
        assert damaged in str(loading.value) and "\n" not in str(loading.value)


def test_a_checkpoint_whose_files_parse_but_hold_the_wrong_state_is_named(tmp_path):
    from gotr1.errors import UserError
    from gotr1.train import checkpoint as ckpt
    from test_train_checkpoint import small_training

    accelerator, _, newest = _two_checkpoints(tmp_path / "run")
    (newest / "rng-0.json").write_text('{"python": 1}')
    _, optimizer, scheduler = small_training(seed=3)
    with pytest.raises(UserError, match="rng-0.json"):
        ckpt.load_checkpoint(accelerator, newest, optimizer, scheduler)
    (newest / "optimizer.json").write_text('{"state": {"0": {"step": {"tensor": "nope"}}}}')
    with pytest.raises(UserError, match="optimizer"):
        ckpt.resolve_resume(tmp_path / "run", newest)


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("model.safetensors", lambda path: _truncate(path, 0.9)),
        ("model.safetensors", lambda path: path.write_bytes(b"")),
        ("config.json", lambda path: path.write_text('["janus"]')),
        ("config.json", lambda path: _truncate(path)),
        ("tokenizer_config.json", lambda path: _truncate(path)),
    ],
)
def test_a_damaged_model_folder_is_a_one_line_error_naming_the_file(
    tiny_folder, tmp_path, name, damage
):
    import shutil

    from gotr1.errors import UserError
    from gotr1.policy.io import load_pretrained
    from gotr1.policy.policy import Policy

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    damage(folder / name)
    for load in (load_pretrained, Policy.load):
        with pytest.raises(UserError) as error:
            load(folder)
        assert str(folder / name) in str(error.value) and "\n" not in str(error.value)


def test_a_damaged_adapter_folder_is_a_one_line_error_naming_the_file(tmp_path):
    from gotr1.errors import UserError
    from gotr1.policy.policy import Policy

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('["base"]')
    with pytest.raises(UserError, match="adapter_config.json"):
        Policy.load(folder)


@pytest.mark.slow
def test_sft_resume_skips_a_damaged_newest_checkpoint(tiny_folder, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from gotr1.train.checkpoint import checkpoint_problem
    from gotr1.train.runlog import read_log
    from gotr1.train.sft import train_sft
    from test_train_sft import quick_config

    run = tmp_path / "run"
    train_sft(quick_config(tiny_folder, run))  # checkpoints 2 and 4
    expected = load_file(str(run / "final" / "model.safetensors"))
    _truncate(run / "checkpoint-4" / "model" / "model.safetensors")
    capsys.readouterr()
    train_sft(quick_config(tiny_folder, run), resume=True)
    notes = [line for line in capsys.readouterr().err.splitlines() if "--resume" in line]
    assert len(notes) == 1 and "checkpoint-4" in notes[0] and "model.safetensors" in notes[0]
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]  # steps 3, 4 trained again
    final = load_file(str(run / "final" / "model.safetensors"))
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final)
    assert checkpoint_problem(run / "checkpoint-4") is None  # re-saved whole


# ----------------------------------------------------------------------------------------------
# 8. A folder given to --resume is never a hub id
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sft", "grpo"])
def test_resume_from_a_folder_without_model_never_asks_the_hub(
    tiny_folder, tmp_path, monkeypatch, capsys, command
):
    import transformers

    calls = []

    def no_hub(*args, **kwargs):
        calls.append(args)
        raise OSError("gotr1 asked the hub")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(transformers.JanusForConditionalGeneration, "from_pretrained", no_hub)
    monkeypatch.chdir(tmp_path)
    garb = tmp_path / "garb"
    garb.mkdir()
    (garb / "trainer_state.json").write_text('{"step": 2}')
    args = [command, "--resume", "garb", "--output_dir", "run", "--max_steps", "1"]
    if command == "grpo":
        args += ["--model", str(tiny_folder), "--judge", "world"]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "garb/model" in errors[0] and "no model folder" in errors[0]
    assert "hub" not in errors[0] and calls == []


def test_a_path_to_a_missing_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    from pathlib import Path

    from gotr1.errors import UserError
    from gotr1.policy.io import load_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="garb/model: no such model folder"):
        load_pretrained(Path("garb") / "model")


# ----------------------------------------------------------------------------------------------
# 9. A 429's Retry-After is honoured, within the request's deadline
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_429_is_retried_after_the_wait_its_retry_after_asks(form):
    import email.utils
    import time

    from test_rewards_http import ChatServer, _chains, make_judge

    def respond(text, image, attempt):
        if attempt:
            return ("ok", '{"score": 7}')
        # An HTTP date has whole seconds: 3 s from now is a wait of 2 to 3 s.
        when = "2" if form == "seconds" else email.utils.formatdate(time.time() + 3, usegmt=True)
        return ("status", 429, {"Retry-After": when})

    server = ChatServer()
    server.respond = respond
    try:
        # The backoff alone would wait at most 0.2 s before the first retry.
        with make_judge(
            server.base_url, api_key_env=None, timeout=5, max_retries=2, backoff_base=0.2
        ) as judge:
            result = judge.semantic(["p"], _chains(1))
    finally:
        server.close()
    assert not result.failed.any() and result.scores[0] == pytest.approx(0.7)
    ((first, second),) = server.times.values()
    assert 1.9 <= second - first < 3.5, second - first


def test_a_retry_after_past_the_deadline_fails_at_once():
    import time

    from test_rewards_http import ChatServer, _chains, make_judge

    server = ChatServer()
    server.respond = lambda text, image, attempt: ("status", 429, {"Retry-After": "3600"})
    start = time.perf_counter()
    try:
        with make_judge(server.base_url, api_key_env=None, timeout=0.5, max_retries=3) as judge:
            result = judge.semantic(["p"], _chains(1))
    finally:
        server.close()
    elapsed = time.perf_counter() - start
    assert result.failed.all() and server.requests == 1 and elapsed < 1.0, elapsed
    assert "HTTP 429" in result.reasons[0] and "Retry-After 3600s" in result.reasons[0]


def test_retry_after_reads_seconds_and_http_dates():
    from gotr1.rewards.openai_http import parse_retry_after

    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now) == pytest.approx(30.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0  # already past
    for unreadable in (None, "", "soon", "-5", "1.5e3", "Tue, 99 Foo 2023"):
        assert parse_retry_after(unreadable, now) is None


# ----------------------------------------------------------------------------------------------
# 10. A hanging judge server costs one deadline per batch, not one per question
# ----------------------------------------------------------------------------------------------


def test_a_hanging_judge_costs_one_deadline_per_batch():
    import time

    import numpy as np
    from PIL import Image

    from gotr1.rewards import DualStageReward
    from test_rewards_http import ChatServer, _chains, make_judge

    server = ChatServer()
    server.respond = lambda text, image, attempt: ("sleep", 5.0, '{"score": 7}')  # hangs
    images = [Image.new("RGB", (56, 56))] * 2
    try:
        # 2 samples of 1 object: 8 requests (sem, spa, ri, pi x 2) for 4 workers.
        with make_judge(
            server.base_url, api_key_env=None, timeout=0.5, max_retries=2, max_concurrency=4
        ) as judge:
            budget = 3 * 0.5 + 0.01 + 0.02  # 3 attempts of 0.5 s, backoff ceilings 0.01, 0.02 s
            start = time.perf_counter()
            rewards = DualStageReward(judge).score(["p", "q"], _chains(2), images)
            elapsed = time.perf_counter() - start
            stats = dict(judge.stats)
            print(f"batch of 8 requests to a hanging server: {elapsed:.2f} s")
    finally:
        server.close()
    # One after another: 4 questions x 1.53 s = 6.1 s; the 8 requests at once on 4 workers
    # without a batch deadline: 2 x 1.53 s. One deadline: 1.53 s + 0.5 s for the second round.
    assert elapsed < budget + 0.5 + 0.6, elapsed
    assert rewards.failure_counts == {"sem": 2, "spa": 2, "ri": 2, "pi": 2}
    assert np.isnan(rewards.sem).all() and (rewards.total == 0).all()
    assert stats["http_failures"] == 8 and stats["no_answer"] == 8


def test_questions_asked_at_once_give_the_same_rewards(monkeypatch):
    import numpy as np
    from PIL import Image

    from gotr1.rewards import DualStageReward, OpenAIJudge
    from test_rewards_http import ChatServer, _chains, make_judge

    def respond(text, image, attempt):
        if text.startswith("Locate the "):
            return ("ok", '[{"bbox_2d": [5, 6, 30, 40], "label": "red circle"}]')
        return ("sleep", 0.05, f'{{"score": {len(text) % 10}}}')

    server = ChatServer()
    server.respond = respond
    images = [Image.new("RGB", (56, 56))] * 3
    try:
        with make_judge(server.base_url, api_key_env=None, max_concurrency=4) as judge:
            together = DualStageReward(judge).score(["a", "bb", "ccc"], _chains(3), images)
        # 3 requests per question: only questions asked at once reach the bound of 4.
        assert server.max_in_flight == 4
        monkeypatch.setattr(OpenAIJudge, "concurrent_questions", False)
        server.max_in_flight = 0
        with make_judge(server.base_url, api_key_env=None, max_concurrency=4) as judge:
            apart = DualStageReward(judge).score(["a", "bb", "ccc"], _chains(3), images)
        assert server.max_in_flight == 3
    finally:
        server.close()
    for name in ("sem", "spa", "ri", "pi", "total"):
        np.testing.assert_array_equal(together.component(name), apart.component(name))
    assert [together.sample(i) for i in range(3)] == [apart.sample(i) for i in range(3)]
    assert list(together.timings) == list(apart.timings)


# ----------------------------------------------------------------------------------------------
# 11. Config errors in one line, blamed on what the user typed
# ----------------------------------------------------------------------------------------------


def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 3\nreward_components: [sem, spa\nbeta: 0.1\n")
    assert main(["grpo", "--config", str(bad), "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert f"{bad}:3:5: not valid YAML" in err and "expected ',' or ']'" in err
    assert not (tmp_path / "run").exists()


def test_a_bad_value_on_the_command_line_is_blamed_on_its_flag(tmp_path, capsys):
    from pathlib import Path

    yaml_file = str(Path(__file__).resolve().parents[1] / "configs" / "grpo-world-tiny.yaml")
    args = ["grpo", "--config", yaml_file, "--num_generations", "1"]
    assert main([*args, "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "command line (--num_generations): num_generations" in err, err
    assert yaml_file not in err
    assert not (tmp_path / "run").exists()


def test_config_errors_are_blamed_on_the_file_or_the_flag_that_set_the_field(tmp_path):
    from gotr1.train.config import ConfigError, GRPOConfig, build_config, load_config

    config = tmp_path / "grpo.yaml"
    config.write_text("num_generations: 1\n")
    with pytest.raises(ConfigError, match=rf"^{config}: num_generations must be >= 2"):
        load_config(GRPOConfig, config, {"beta": "0.1"})
    assert load_config(GRPOConfig, config, {"num_generations": "4"}).num_generations == 4
    config.write_text("beta: 0.1\n")
    with pytest.raises(ConfigError, match=r"^command line \(--beta\): beta must be >= 0"):
        load_config(GRPOConfig, config, {"beta": "-1"})
    with pytest.raises(ConfigError, match=r"^command line \(--max_grad_norm\): max_grad_norm"):
        load_config(GRPOConfig, config, {"max-grad-norm": "-1"})
    with pytest.raises(ConfigError, match=r"^config: beta must be >= 0"):  # no file, no flag
        build_config(GRPOConfig, {"beta": -1})


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("grpo_learning_rate=-1", "demo setting grpo_learning_rate must be > 0"),
        ("grpo_beta=-1", "demo setting grpo_beta must be >= 0"),
        ("grpo_num_iterations=0", "demo setting grpo_num_iterations must be > 0"),
        ("sft_learning_rate=-1", "demo setting sft_learning_rate must be > 0"),
    ],
)
def test_a_demo_setting_is_named_as_the_user_typed_it(
    tmp_path, monkeypatch, capsys, setting, named
):
    def stop(*args):
        raise _Stop

    monkeypatch.setattr(P, "train_tokenizer", stop)  # a setting let through trains nothing
    assert main(["demo", "--set", setting, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and named in err, err
    assert not (tmp_path / "run").exists()  # refused before any stage ran
