"""DualStageReward: combinations, subsets (the paper's ablations), the extra hook, failures, `gotr1 score`."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from gotr1.chain import format_chain, parse_chain
from gotr1.errors import ConfigError
from gotr1.rewards import DualStageReward, RewardConfig, WorldJudge, combine
from gotr1.world import Scene, render_scene, sample_examples


@pytest.fixture(scope="module")
def batch():
    """World samples with every component varied: some chains and images corrupted."""
    examples = sample_examples(48, seed=21)
    prompts, chains, images = [], [], []
    for i, example in enumerate(examples):
        objects = list(parse_chain(example.chain).objects)
        scene_objects = list(example.scene.objects)
        if i % 3 == 1 and len(objects) > 1:
            objects.pop()
        if i % 4 == 2:
            objects[0] = replace(objects[0], box=(0, 0, 300, 300))
        if i % 5 == 3 and len(scene_objects) > 1:
            scene_objects.pop(0)
        prompts.append(example.prompt)
        chains.append(format_chain(objects))
        images.append(render_scene(Scene(tuple(scene_objects))))
    return prompts, chains, images


@pytest.fixture(scope="module")
def full(batch):
    return DualStageReward(WorldJudge()).score(*batch)


def test_components_vary_and_product_is_the_papers_formula(full):
    for name in ("sem", "spa", "ri", "pi"):
        values = full.component(name)
        assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
        assert len(np.unique(values)) > 2, name  # the batch really exercises every component
    np.testing.assert_allclose(full.total, full.pi * (full.sem + full.spa) * full.ri)


@pytest.mark.parametrize(
    ("components", "combination", "expected"),
    [
        (("sem", "spa"), "product", lambda r: r.sem + r.spa),  # "R_sem + R_spa only"
        (("ri",), "product", lambda r: r.ri),  # "R_RI only"
        (("pi",), "product", lambda r: r.pi),  # "R_PI only"
        (("pi", "sem"), "product", lambda r: r.pi * r.sem),
        (("sem", "spa", "ri", "pi"), "sum", lambda r: r.sem + r.spa + r.ri + r.pi),
        (("ri", "pi"), "sum", lambda r: r.ri + r.pi),
    ],
)
def test_subsets_and_sums(batch, full, components, combination, expected):
    rewards = DualStageReward(
        WorldJudge(), RewardConfig(components=components, combination=combination)
    ).score(*batch)
    # Judges are deterministic: the same components as the full run, NaN where not computed.
    for name in ("sem", "spa", "ri", "pi"):
        if name in components:
            np.testing.assert_array_equal(rewards.component(name), full.component(name))
        else:
            assert np.isnan(rewards.component(name)).all()
            assert name not in rewards.timings
    np.testing.assert_allclose(rewards.total, expected(full))


def test_weighted_sum_and_extra_hook(batch, full):
    weights = {"sem": 0.5, "spa": 2.0, "ri": 3.0, "pi": 0.25}
    seen = {}

    def brightness(prompts, images):
        seen["n"] = (len(prompts), len(images))
        return [np.asarray(image, dtype=np.float64).mean() / 255.0 for image in images]

    weighted = DualStageReward(
        WorldJudge(),
        RewardConfig(combination="weighted_sum", weights=weights, extra_weight=0.1),
        brightness,
    ).score(*batch)
    extra = np.array(brightness(batch[0], batch[2]))
    expected = 0.5 * full.sem + 2.0 * full.spa + 3.0 * full.ri + 0.25 * full.pi + 0.1 * extra
    np.testing.assert_allclose(weighted.total, expected)
    np.testing.assert_allclose(weighted.extra, extra)
    assert seen["n"] == (48, 48) and "extra" in weighted.timings
    product = DualStageReward(WorldJudge(), extra_reward=brightness).score(*batch)
    np.testing.assert_allclose(product.total, full.total * extra)  # v2: one more factor


def test_extra_hook_failures_are_counted(batch):
    def flaky(prompts, images):
        return [float("nan") if i % 2 else 1.0 for i in range(len(images))]

    rewards = DualStageReward(WorldJudge(), RewardConfig(on_failure="drop"), flaky).score(*batch)
    assert rewards.failure_counts["extra"] == 24
    assert rewards.keep.tolist() == [i % 2 == 0 for i in range(48)]
    with pytest.raises(ValueError, match="extra reward returned"):
        DualStageReward(WorldJudge(), extra_reward=lambda p, i: [1.0]).score(*batch)


@pytest.mark.parametrize("policy", ["zero", "drop"])
def test_an_extra_hook_that_raises_is_a_counted_failure(batch, full, policy):
    def broken(prompts, images):
        raise RuntimeError("aesthetic model out of memory")

    rewards = DualStageReward(WorldJudge(), RewardConfig(on_failure=policy), broken).score(*batch)
    assert rewards.failure_counts["extra"] == 48 and np.isnan(rewards.extra).all()
    assert all(
        r == "extra reward raised RuntimeError: aesthetic model out of memory"
        for r in rewards.reasons["extra"]
    )
    np.testing.assert_array_equal(rewards.sem, full.sem)  # the judge's answers are unaffected
    if policy == "zero":
        np.testing.assert_array_equal(rewards.total, 0.0)  # a 0 factor in the product
        assert rewards.keep.all()
    else:
        assert not rewards.keep.any() and np.isnan(rewards.total).all()
    assert rewards.sample(0)["failure_reasons"]["extra"].startswith("extra reward raised")


def test_extra_hook_values_that_are_not_numbers_fail_their_sample(batch, full):
    def partial(prompts, images):
        return [None if i == 0 else "high" if i == 1 else 1.0 for i in range(len(images))]

    rewards = DualStageReward(WorldJudge(), RewardConfig(on_failure="drop"), partial).score(*batch)
    assert rewards.failed["extra"].tolist() == [True, True] + [False] * 46
    assert rewards.reasons["extra"][:3] == ["extra reward is not a finite number"] * 2 + [None]
    assert rewards.keep.tolist() == [False, False] + [True] * 46
    np.testing.assert_allclose(rewards.total[2:], full.total[2:])


def test_rollouts_like_objects_and_tensors(batch, full):
    @dataclass
    class FakeRollouts:
        prompts: list
        chains: list
        images: list

    rollouts = FakeRollouts(batch[0], [parse_chain(c) for c in batch[1]], batch[2])
    rewards = DualStageReward(WorldJudge())(rollouts)
    np.testing.assert_array_equal(rewards.total, full.total)
    tensor = rewards.tensor("total")
    assert tensor.dtype == torch.float32 and tensor.shape == (48,)
    metrics = rewards.metrics()
    assert metrics["rewards/total"] == pytest.approx(float(full.total.mean()))
    assert {"rewards/sem", "rewards/failures/ri", "rewards/seconds/pi"} <= set(metrics)
    with pytest.raises(TypeError, match="prompts"):
        DualStageReward(WorldJudge())(object())
    with pytest.raises(ValueError, match="prompts"):
        DualStageReward(WorldJudge()).score(batch[0][:3], batch[1][:2], batch[2][:3])


def test_group_keep_drops_whole_groups(batch):
    prompts = list(batch[0][:6])
    prompts[4] = "not a world prompt at all"
    rewards = DualStageReward(WorldJudge(), RewardConfig(on_failure="drop")).score(
        prompts, batch[1][:6], batch[2][:6]
    )
    assert rewards.keep.tolist() == [True, True, True, True, False, True]
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    assert rewards.group_keep(groups).tolist() == [True, True, True, True, False, False]


def test_config_validation():
    with pytest.raises(ValueError, match="components"):
        RewardConfig(components=("sem", "aesthetic"))
    with pytest.raises(ValueError, match="components"):
        RewardConfig(components=())
    with pytest.raises(ValueError, match="combination"):
        RewardConfig(combination="max")
    with pytest.raises(ValueError, match="on_failure"):
        RewardConfig(on_failure="ignore")
    with pytest.raises(ValueError, match="weights"):
        RewardConfig(weights={"total": 1.0})


@pytest.mark.parametrize(
    "values,field",
    [
        ({"extra_weight": 0.5}, "extra_weight"),  # the product multiplies by the extra as is
        ({"weights": {"sem": 2.0}}, "weights"),  # product reads no weights
        ({"combination": "sum", "weights": {"pi": 0.5}}, "weights"),  # nor does sum
        (
            {"combination": "weighted_sum", "components": ("ri", "pi"), "weights": {"sem": 2.0}},
            "weights",
        ),  # a weight of a component that is not computed
        ({"components": ("sem", "ri"), "spatial_input": "text"}, "spatial_input"),  # no R_spa
        ({"components": ("pi",), "layout_size": 112}, "layout_size"),  # nothing is drawn
        ({"spatial_input": "text", "layout_size": 112}, "layout_size"),  # text: nothing drawn
    ],
)
def test_settings_the_combination_ignores_are_refused(values, field):
    with pytest.raises(ConfigError) as error:
        RewardConfig(**values)
    message = str(error.value)
    assert message.startswith(f"{field} ") and "ignored" in message and "\n" not in message


@pytest.mark.parametrize(
    "values",
    [
        {"combination": "weighted_sum", "weights": {"sem": 2.0}, "extra_weight": 0.5},
        {"combination": "sum", "extra_weight": 0.5},
        {"weights": dict.fromkeys(("sem", "spa", "ri", "pi"), 1.0)},  # the default, spelt out
        {"components": ("sem", "spa"), "spatial_input": "text"},
        {"layout_size": 112},
    ],
)
def test_the_same_settings_pass_where_they_apply(values):
    config = RewardConfig(**values)
    assert all(getattr(config, name) == value for name, value in values.items())


def test_combine_by_hand():
    parts = {
        "sem": np.array([0.5, 1.0]),
        "spa": np.array([0.25, 0.0]),
        "ri": np.array([0.5, 1.0]),
        "pi": np.array([1.0, 0.5]),
    }
    np.testing.assert_allclose(combine(parts, RewardConfig()), [0.375, 0.5])
    np.testing.assert_allclose(combine(parts, RewardConfig(combination="sum")), [2.25, 2.5])


# --------------------------------------------------------------------------- gotr1 score


def _parser():
    from gotr1.rewards.commands import register

    parser = argparse.ArgumentParser(prog="gotr1")
    register(parser.add_subparsers(dest="command"))
    return parser


def _run(argv, capsys):
    args = _parser().parse_args(argv)
    code = args.func(args)
    return code, json.loads(capsys.readouterr().out)


def _example_files(tmp_path, seed):
    """A world example with its chain and rendered image written as files: (example, chain
    file, image file), as `gotr1 score` reads them."""
    example = sample_examples(1, seed=seed)[0]
    (tmp_path / "chain.txt").write_text(example.chain)
    example.render().save(tmp_path / "image.png")
    return example, str(tmp_path / "chain.txt"), str(tmp_path / "image.png")


def test_score_command_with_the_world_judge(tmp_path, capsys):
    example, chain, image = _example_files(tmp_path, seed=2)
    argv = ["score", "--prompt", example.prompt, "--chain", chain]
    code, report = _run([*argv, "--image", image], capsys)
    assert code == 0
    assert report["components"] == {"sem": 1.0, "spa": 1.0, "ri": 1.0, "pi": 1.0}
    assert report["total"] == 2.0 and report["failed"] == []
    assert [o["iou"] for o in report["chain"]["objects"]] == [1.0] * len(example.scene.objects)
    # Shifting the image: R_RI falls, and the report shows where the judge found each object.
    moved = Scene(
        tuple(
            replace(o, box=(o.box[0], 0, o.box[2], o.box[3] - o.box[1]))
            for o in example.scene.objects[:1]
        )
    )
    render_scene(moved).save(tmp_path / "moved.png")
    code, report = _run(
        [*argv, "--image", str(tmp_path / "moved.png"), "--combination", "sum"], capsys
    )
    assert report["components"]["ri"] < 1.0
    assert report["chain"]["objects"][0]["grounded"]
    assert report["total"] == pytest.approx(sum(report["components"].values()))


def test_score_command_failure_policy(tmp_path, capsys):
    _, chain, image = _example_files(tmp_path, seed=2)
    argv = ["score", "--prompt", "not a world prompt at all", "--chain", chain, "--image", image]
    code, zero = _run(argv, capsys)  # the world judge cannot read this prompt: failures
    assert code == 0 and zero["failed"] and zero["on_failure"] == "zero"
    assert zero["total"] == 0.0 and zero["kept"] is True
    code, drop = _run([*argv, "--on-failure", "drop"], capsys)
    assert code == 0 and drop["failed"] == zero["failed"] and drop["on_failure"] == "drop"
    assert drop["total"] is None and drop["kept"] is False
    assert drop["failure_reasons"] == zero["failure_reasons"]
    with pytest.raises(SystemExit):
        _parser().parse_args([*argv, "--on-failure", "ignore"])


def test_score_command_user_errors(tmp_path, capsys):
    from gotr1.errors import UserError

    (tmp_path / "chain.txt").write_text("x")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    base = ["score", "--prompt", "a red circle"]
    with pytest.raises(UserError, match="--chain: no such file"):
        _run([*base, "--chain", str(tmp_path / "none.txt"), "--image", "x"], capsys)
    with pytest.raises(UserError, match="bad.png is not a readable image"):
        _run(
            [*base, "--chain", str(tmp_path / "chain.txt"), "--image", str(tmp_path / "bad.png")],
            capsys,
        )
    render_scene(Scene(())).save(tmp_path / "blank.png")
    with pytest.raises(UserError, match="--components"):
        _run(
            [
                *base,
                "--chain",
                str(tmp_path / "chain.txt"),
                "--image",
                str(tmp_path / "blank.png"),
                "--components",
                "sem,foo",
            ],
            capsys,
        )


def test_score_command_openai_judge_against_nothing_reports_failures(tmp_path, capsys):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    example, chain, image = _example_files(tmp_path, seed=3)
    argv = [
        "score",
        "--judge",
        "openai",
        "--base-url",
        f"http://127.0.0.1:{port}/v1",
        "--max-retries",
        "0",
    ]
    argv += ["--prompt", example.prompt, "--chain", chain, "--image", image]
    code, report = _run(argv, capsys)
    assert code == 0
    assert sorted(report["failed"]) == ["pi", "ri", "sem", "spa"]
    assert report["total"] == 0.0 and all(v is None for v in report["components"].values())
    assert "ConnectionRefusedError" in report["failure_reasons"]["sem"]


def test_registration_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import argparse, sys; from gotr1.rewards.commands import register; "
        "p = argparse.ArgumentParser(); register(p.add_subparsers()); "
        "import gotr1.rewards; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
