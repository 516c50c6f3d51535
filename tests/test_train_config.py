"""Training configs: YAML + command-line overrides, types, errors that name the field, the CLI."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from gotr1.cli import main
from gotr1.train.commands import overrides_from_args, register
from gotr1.train.config import ConfigError, GRPOConfig, SFTConfig, load_config
from test_train_helpers import REPO, subprocess_env


def test_yaml_then_overrides_with_types(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text(
        "num_generations: 8\n"
        "learning_rate: 1e-5\n"  # YAML 1.1 reads this as a string; it must become a float
        "mixed_precision: no\n"  # ... and this as False; it means "no"
        "reward_components: [pi, ri]\n"
        "epsilon_high: null\n"
    )
    config = load_config(
        GRPOConfig,
        path,
        {
            "beta": "0.04",
            "use-lora": "false",
            "freeze": "vqmodel,aligner",
            "reward_combination": "weighted_sum",
            "reward_weights": "pi=2,ri=0.5",
            "max_batch_rows": "none",
            "epsilon_high": "0.28",
            "max_steps": "1e3",
        },
    )
    assert config.num_generations == 8 and config.learning_rate == pytest.approx(1e-5)
    assert config.mixed_precision == "no" and config.reward_components == ["pi", "ri"]
    assert config.beta == pytest.approx(0.04) and config.use_lora is False
    assert config.freeze == ["vqmodel", "aligner"]
    assert config.reward_weights == {"pi": 2.0, "ri": 0.5}
    assert config.max_batch_rows is None and config.clip_high == pytest.approx(0.28)
    assert config.max_steps == 1000 and isinstance(config.max_steps, int)
    # Paper defaults where the paper gives them.
    default = GRPOConfig()
    assert (default.num_generations, default.num_prompts, default.learning_rate) == (16, 8, 1e-5)
    assert (default.lora_r, default.lora_alpha, default.use_lora) == (32, 32, True)
    assert default.lr_scheduler_type == "cosine" and default.text_temperature == 1.0
    assert default.image_temperature == 1.0 and default.clip_high == default.epsilon


@pytest.mark.parametrize(
    "cls,values,field",
    [
        (GRPOConfig, {"num_generations": 1}, "num_generations"),
        (GRPOConfig, {"beta": -0.1}, "beta"),
        (GRPOConfig, {"loss_type": "ppo"}, "loss_type"),
        (GRPOConfig, {"scale_rewards": "std"}, "scale_rewards"),
        (GRPOConfig, {"image_logprob": "uncond"}, "image_logprob"),
        (GRPOConfig, {"learning_rate": "fast"}, "learning_rate"),
        (GRPOConfig, {"num_prompts": 0}, "num_prompts"),
        (GRPOConfig, {"reward_components": ["sem", "aesthetic"]}, "reward_components"),
        (GRPOConfig, {"lora_target_modules": ["qkv"]}, "lora_target_modules"),
        (GRPOConfig, {"use_lora": "maybe"}, "use_lora"),
        (GRPOConfig, {"epsilon_high": -1}, "epsilon_high"),
        (GRPOConfig, {"world_split": "validation"}, "world_split"),
        (GRPOConfig, {"chain_advantage": "chain"}, "chain_advantage"),
        (GRPOConfig, {"chain_advantage": "plan", "reward_components": ["ri", "pi"]}, "plan"),
        # checked by RewardConfig and SamplingConfig, named as the training config spells them
        (GRPOConfig, {"reward_combination": "max"}, "reward_combination must be one of"),
        (GRPOConfig, {"reward_on_failure": "ignore"}, "reward_on_failure must be one of"),
        (GRPOConfig, {"reward_weights": {"total": 1.0}}, "reward_weights name unknown"),
        (GRPOConfig, {"reward_components": ["sem", "sem"]}, "reward_components"),
        (GRPOConfig, {"spatial_input": "pixels"}, "spatial_input must be one of"),
        (GRPOConfig, {"cfg_weight": -1.0}, "cfg_weight must be >= 0"),
        (GRPOConfig, {"text_temperature": -0.5}, "text_temperature must be >= 0"),
        (GRPOConfig, {"max_chain_tokens": 0}, "max_chain_tokens must be > 0"),
        (GRPOConfig, {"max_batch_rows": 0}, "max_batch_rows must be >= 1"),
        (SFTConfig, {"sample_cfg_weight": -1.0}, "sample_cfg_weight must be >= 0"),
        (SFTConfig, {"sample_max_chain_tokens": 0}, "sample_max_chain_tokens must be > 0"),
        (SFTConfig, {"world_split": "heldout"}, "world_split"),
        (SFTConfig, {"world_chain_colors": "scene"}, "world_chain_colors"),
        (SFTConfig, {"cfg_dropout": 1.5}, "cfg_dropout"),
        (SFTConfig, {"prompt_only_dropout": -0.1}, "prompt_only_dropout must be >= 0"),
        (SFTConfig, {"cfg_dropout": 0.5, "prompt_only_dropout": 0.5}, "prompt_only_dropout"),
        (SFTConfig, {"on_bad_row": "ignore"}, "on_bad_row"),
        (SFTConfig, {"mixed_precision": "fp8"}, "mixed_precision"),
        (SFTConfig, {"chain_loss_weight": 0, "image_loss_weight": 0}, "chain_loss_weight"),
    ],
)
def test_bad_values_name_the_field(tmp_path, cls, values, field):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError) as error:
        load_config(cls, path)
    assert field in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize(
    "values,field",
    [
        ({"reward_weights": {"sem": 2.0}}, "reward_weights"),  # product reads no weights
        ({"reward_combination": "sum", "reward_weights": {"sem": 2.0}}, "reward_weights"),
        (
            {
                "reward_combination": "weighted_sum",
                "reward_components": ["ri", "pi"],
                "reward_weights": {"sem": 2.0},
            },
            "reward_weights",
        ),  # a weight of a component that is not computed
        ({"spatial_input": "text"}, "spatial_input"),  # the world judge: R_spa as on the canvas
        ({"judge_model": "Qwen/Qwen2.5-VL-7B-Instruct"}, "judge_model"),
        ({"judge_device": "cuda:7"}, "judge_device"),
        ({"judge_base_url": "http://judge-host:8000/v1"}, "judge_base_url"),
        ({"judge_api_key_env": "JUDGE_KEY"}, "judge_api_key_env"),
        ({"judge": "qwen", "judge_base_url": "http://judge-host:8000/v1"}, "judge_base_url"),
        ({"judge": "openai", "judge_device": "cuda:7"}, "judge_device"),
        ({"freeze": ["vqmodel"]}, "freeze"),  # LoRA trains the adapters only
        ({"use_lora": False, "lora_r": 8}, "lora_r"),
        ({"use_lora": False, "lora_alpha": 16}, "lora_alpha"),
        ({"use_lora": False, "lora_dropout": 0.1}, "lora_dropout"),
        ({"use_lora": False, "lora_target_modules": ["q_proj"]}, "lora_target_modules"),
        ({"use_lora": False, "lora_train_image_head": True}, "lora_train_image_head"),
    ],
)
def test_settings_the_mode_ignores_are_refused_naming_them(values, field):
    with pytest.raises(ConfigError) as error:
        GRPOConfig(**values)
    message = str(error.value)
    assert message.startswith(f"{field} ") and "ignored" in message and "\n" not in message


@pytest.mark.parametrize(
    "values",
    [
        {"reward_combination": "weighted_sum", "reward_weights": {"sem": 2.0}},
        {"reward_weights": {"sem": 1.0}},  # a default weight changes nothing
        {"judge": "qwen", "spatial_input": "text", "judge_model": "m", "judge_device": "cpu"},
        {"judge": "openai", "judge_model": "m", "judge_base_url": "http://h:1/v1"},
        {"judge": "openai", "judge_api_key_env": "JUDGE_KEY"},
        {"use_lora": False, "freeze": ["vqmodel"]},
        {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "lora_train_image_head": True},
        {"use_lora": False, "lora_r": 32, "freeze": ["vqmodel", "vision_model", "aligner"]},
    ],
)
def test_the_same_settings_pass_where_they_apply(values):
    config = GRPOConfig(**values)
    assert all(getattr(config, name) == value for name, value in values.items())


def test_demo_and_ablation_grpo_configs_are_valid(tmp_path):
    from gotr1.demo import pipeline
    from gotr1.demo.ablate import ARMS
    from gotr1.demo.config import DemoConfig

    def grpo(**overrides):
        return pipeline.grpo_config(DemoConfig(), tmp_path / "sft", tmp_path / "grpo", **overrides)

    assert not grpo().use_lora
    for arm in ARMS:
        config = grpo(reward_components=list(arm.components), reward_combination=arm.combination)
        assert config.reward_config().combination == arm.combination


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--reward_weights", "sem=2"], "reward_weights are set ({'sem': 2.0})"),
        (["--judge_model", "Qwen/Qwen2.5-VL-7B-Instruct"], "judge_model is set"),
        (["--use_lora", "false", "--lora_r", "8"], "lora_r is set (8) but use_lora is false"),
    ],
)
def test_cli_refuses_an_ignored_setting_in_one_line(argv, needle, capsys):
    assert main(["grpo", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "ignored" in err and "\n" not in err and "Traceback" not in err


def test_unknown_fields_and_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown field 'betta'.*did you mean beta"):
        load_config(GRPOConfig, None, {"betta": "0.1"})
    with pytest.raises(ConfigError, match="--config: no such file"):
        load_config(GRPOConfig, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(GRPOConfig, tmp_path / "list.yaml")
    config = load_config(SFTConfig, None, {"data": str(tmp_path / "missing.jsonl")})
    with pytest.raises(ConfigError, match="data: no such file .*missing.jsonl"):
        config.check_files()
    with pytest.raises(ConfigError, match="model: .*no-model"):
        load_config(GRPOConfig, None, {"model": str(tmp_path / "no-model")}).check_files()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="prompts: no such file"):
        GRPOConfig(model=str(tmp_path), prompts=str(tmp_path / "p.txt")).check_files()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["grpo", "--num_generations", "1"], "num_generations must be >= 2"),
        (["grpo", "--beta", "-0.5"], "beta must be >= 0"),
        (["grpo", "--loss-type", "reinforce"], "loss_type must be one of"),
        (["sft", "--data", "no/such/data.jsonl"], "data: no such file no/such/data.jsonl"),
        (["grpo", "--model", "no/such/model"], "model: no/such/model is not a model folder"),
    ],
)
def test_cli_fails_at_start_naming_the_field(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_shipped_configs_are_valid():
    for cls, name in [
        (SFTConfig, "sft-world-tiny.yaml"),
        (SFTConfig, "sft-janus-pro-1b.yaml"),
        (GRPOConfig, "grpo-world-tiny.yaml"),
        (GRPOConfig, "grpo-janus-pro-7b.yaml"),
    ]:
        config = load_config(cls, REPO / "configs" / name)
        assert config.max_steps > 0
    janus = load_config(GRPOConfig, REPO / "configs" / "grpo-janus-pro-7b.yaml")
    assert (janus.num_generations, janus.num_prompts, janus.lora_r, janus.lora_alpha) == (
        16,
        8,
        32,
        32,
    )
    for name in ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"):
        import yaml

        data = yaml.safe_load((REPO / "configs" / "accelerate" / f"{name}.yaml").read_text())
        assert data["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED")


def test_parser_takes_every_field_and_stays_light():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "grpo",
            "--config",
            "x.yaml",
            "--beta",
            "0.1",
            "--loss-type",
            "dapo",
            "--use_lora",
            "--resume",
        ]  # fmt: skip
    )
    assert overrides_from_args(args) == {"beta": "0.1", "loss_type": "dapo", "use_lora": "true"}
    assert args.resume is True and args.config == "x.yaml"
    args = parser.parse_args(["sft", "--resume", "runs/x/checkpoint-4", "--max_steps", "9"])
    assert args.resume == "runs/x/checkpoint-4" and overrides_from_args(args) == {"max_steps": "9"}
    with pytest.raises(SystemExit):
        parser.parse_args(["grpo", "--betaa", "1"])  # no prefix matching of field names
    help_text = parser._subparsers._group_actions[0].choices["grpo"].format_help()
    assert "--num_generations" in help_text and "Group size N" in help_text
    # Registration must not import torch (the gotr1 command starts fast).
    code = (
        "import argparse, sys; from gotr1.train.commands import register; "
        "register(argparse.ArgumentParser().add_subparsers()); "
        "from gotr1.train.config import GRPOConfig; GRPOConfig(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), cwd=REPO)
