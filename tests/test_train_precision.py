"""`mixed_precision: auto`: bf16 only where the CPU runs it natively, recorded and said once."""

from __future__ import annotations

import pytest
import yaml

from gotr1.train.config import GRPOConfig, SFTConfig
from gotr1.train.precision import (
    NATIVE_BF16_ENV,
    bf16_slowdown,
    choose_mixed_precision,
    cpu_native_bf16,
    say_once,
)


@pytest.fixture(autouse=True)
def _fresh_said(monkeypatch):
    monkeypatch.delenv("GOTR1_PRECISION_SAID", raising=False)


@pytest.mark.parametrize(("native", "chosen"), [("1", "bf16"), ("0", "no")])
def test_auto_takes_bf16_only_where_the_cpu_has_it(monkeypatch, native, chosen):
    monkeypatch.setenv(NATIVE_BF16_ENV, native)
    choice = choose_mixed_precision("auto", "cpu")
    assert (choice.asked, choice.chosen, choice.device) == ("auto", chosen, "cpu")
    assert NATIVE_BF16_ENV in choice.reason and not choice.warning


def test_the_probe_reads_the_cpu_flags_torch_reports(monkeypatch):
    import torch

    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)
    native, reason = cpu_native_bf16()
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native == expected
    assert ("AVX512-BF16" in reason or "AMX" in reason) if native else "neither" in reason


def test_explicit_choices_are_kept_and_bf16_without_native_support_warns(monkeypatch, capsys):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    assert choose_mixed_precision("no", "cpu").chosen == "no"
    forced = choose_mixed_precision("bf16", "cpu")
    assert forced.chosen == "bf16"
    assert "as long as in float32" in forced.warning and "\n" not in forced.describe()
    say_once(forced)
    say_once(forced)  # a worker process (same environment) or a later stage stays silent
    err = capsys.readouterr().err
    assert err.count("warning: mixed_precision bf16") == 1
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    say_once(choose_mixed_precision("bf16", "cpu"))  # native and as asked: nothing to say
    assert capsys.readouterr().err == ""


def test_the_slowdown_is_a_measured_ratio():
    assert 0 < bf16_slowdown(size=32, repeats=3) < 1000


@pytest.mark.parametrize(("native", "chosen"), [("1", "bf16"), ("0", "no")])
def test_a_run_trains_in_the_choice_and_records_it(tmp_path, monkeypatch, capsys, native, chosen):
    from gotr1.train.runtime import make_accelerator

    monkeypatch.setenv(NATIVE_BF16_ENV, native)
    config = SFTConfig(mixed_precision="auto", output_dir=str(tmp_path))
    accelerator = make_accelerator(config)
    assert accelerator.mixed_precision == chosen
    assert config.mixed_precision == chosen  # what config.yaml and train_log.jsonl then hold
    assert f"mixed precision: auto -> {chosen} on cpu" in capsys.readouterr().err


@pytest.mark.parametrize(("cls", "name"), [(SFTConfig, "sft"), (GRPOConfig, "grpo")])
def test_the_cpu_configs_ask_for_auto(cls, name):
    from pathlib import Path

    from gotr1.train.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}-world-tiny.yaml"
    assert yaml.safe_load(path.read_text())["mixed_precision"] == "auto"
    assert load_config(cls, path).mixed_precision == "auto"


def test_demo_default_is_auto():
    from gotr1.demo.config import DemoConfig

    assert DemoConfig().mixed_precision == "auto"
