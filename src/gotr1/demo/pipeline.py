"""`gotr1 demo`: world data -> image tokenizer -> SFT -> GRPO -> held-out benchmark -> report.

    metrics = run_demo(DemoConfig.full(out="runs/demo", seed=0))

Stages, each cached in the run folder (a finished stage writes ``demo_stage.json`` holding the
settings it ran with and what it took; a rerun with the same settings skips it, a changed
setting reruns it and every stage after it). A stage that was stopped part-way (killed, out of
memory, the machine gone) resumes: SFT and GRPO save checkpoints as they train, and a rerun with the
same settings continues from the last one, exactly as if it had not stopped:

    tokenizer/   the world BPE tokenizer + the VQ image tokenizer trained on world renders
    sft/         SFT from scratch (the "GoT" model): sft/final, sft/train_log.jsonl
    grpo/        GRPO from sft/final with the dual-stage reward (world judge, product)
    eval/sft/    both models on the same held-out prompts with the same sampling seed
    eval/grpo/   (`gotr1.eval.world_bench`: summary.json, samples.jsonl, images/)
    eval/seen-sft/, eval/seen-grpo/   the same on train-split prompts (seen compositions)

then ``metrics.json``, ``train_log.jsonl`` (SFT and GRPO rows, each with its ``stage``) and
``report.html`` (`gotr1.demo.report`). Times are wall clock (``seconds``) and CPU time
(``cpu_seconds``: user + system over all threads) per stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers.utils import logging as transformers_logging

from gotr1.demo.config import DemoConfig
from gotr1.demo.diagnostics import add_diagnosis
from gotr1.demo.report import plan_settings_text, read_eval_samples, read_jsonl, write_report
from gotr1.demo.rewards import uses_clean_factor
from gotr1.errors import ConfigError, UserError
from gotr1.eval.layouts import write_text_atomic
from gotr1.eval.plans import PlanOptions
from gotr1.eval.world_bench import (
    evaluate_world,
    paired_delta_standard_error,
    world_result_record,
    write_world_results,
)
from gotr1.policy.io import load_pretrained
from gotr1.policy.policy import Policy
from gotr1.policy.presets import preset_from_dict
from gotr1.policy.sampling import SamplingConfig
from gotr1.policy.vq import VQTrainConfig, evaluate_vq
from gotr1.train.checkpoint import latest_checkpoint
from gotr1.train.config import GRPOConfig, SFTConfig, save_config
from gotr1.train.grpo import train_grpo
from gotr1.train.precision import choose_mixed_precision, say_once
from gotr1.train.runlog import LOG_FILE
from gotr1.train.runtime import accelerate_device_type
from gotr1.train.sft import INIT_MARKER, train_sft, train_world_tokenizer_and_vq
from gotr1.world import benchmark_prompts

STAGE_MARKER = "demo_stage.json"
STARTED_MARKER = "demo_stage_started.json"
"""Written when a stage starts: a folder holding it but no `STAGE_MARKER` is an unfinished stage,
which a rerun with the same settings resumes (one with other settings starts afresh)."""
STAGES: tuple[str, ...] = (
    "tokenizer",
    "sft",
    "grpo",
    "eval-sft",
    "eval-grpo",
    "eval-seen-sft",
    "eval-seen-grpo",
)
STAGE_TITLES: dict[str, str] = {
    "tokenizer": "image tokenizer: world BPE + VQ trained on world renders",
    "sft": "SFT: chain + image tokens from scratch (the GoT model)",
    "grpo": "GRPO: dual-stage reward, world judge",
    "eval-sft": "held-out benchmark: SFT model",
    "eval-grpo": "held-out benchmark: GRPO model",
    "eval-seen-sft": "seen compositions (train-split prompts): SFT model",
    "eval-seen-grpo": "seen compositions (train-split prompts): GRPO model",
}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system, all threads)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of a stage's settings (JSON with sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Stage bookkeeping
# ----------------------------------------------------------------------------------------------


def read_marker(folder: Path, name: str = STAGE_MARKER) -> dict[str, Any] | None:
    """The record of a finished stage folder, or with `STARTED_MARKER` of a started one (None
    when absent or unreadable)."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def write_json_atomically(path: Path, record: dict[str, Any]) -> None:
    """Write a stage marker so that a run killed meanwhile leaves the old file or the new one."""

    write_text_atomic(path, json.dumps(record, indent=2, default=str) + "\n")


def marker_matches(marker: dict[str, Any] | None, settings: dict[str, Any]) -> bool:
    """Whether a stage's marker was written for these settings. A marker written while display
    switches or checkpoint cadence (`NOT_IDENTITY`) were still part of a stage's identity matches
    too."""
    if marker is None:
        return False
    if marker.get("fingerprint") == fingerprint(settings):
        return True
    stored = marker.get("settings")
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        return False
    config = {k: v for k, v in stored["config"].items() if k not in NOT_IDENTITY}
    return fingerprint({**stored, "config": config}) == fingerprint(settings)


def clear_stage_folder(folder: Path) -> None:
    """Empty a stage folder before a stage starts afresh in it, deleting only what gotr1 wrote.

    A folder holding a stage marker (`STAGE_MARKER` or `STARTED_MARKER`, readable or not) was
    written by a stage and is removed whole; an empty folder is kept. Anything else (a file, or a
    folder of the user's such as ``--set tokenizer_dir=`` pointing at their own files) is refused
    with a `UserError` naming it: a stage never deletes what it did not write.
    """

    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: a demo stage cannot run there")
    if (folder / STAGE_MARKER).exists() or (folder / STARTED_MARKER).exists():
        shutil.rmtree(folder)
        return
    if any(folder.iterdir()):
        raise UserError(
            f"{folder} holds files that no demo stage wrote (no {STAGE_MARKER} or "
            f"{STARTED_MARKER}); gotr1 deletes only its own stage folders: empty it, move it "
            "away or choose another folder"
        )


class Stages:
    """Runs named stages in folders, skipping those whose marker matches their settings."""

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log
        self.records: dict[str, dict[str, Any]] = {}

    def run(
        self,
        name: str,
        folder: Path,
        settings: dict[str, Any],
        work: Callable[[Path], dict[str, Any]],
    ) -> dict[str, Any]:
        """Run `work(folder)` unless `folder` holds a finished stage with the same settings.

        The returned record holds the settings' ``fingerprint``, ``seconds``, ``cpu_seconds``,
        what `work` returned (``result``) and ``cached`` (True when the stage was skipped).
        """
        key = fingerprint(settings)
        done = read_marker(folder)
        number = STAGES.index(name) + 1 if name in STAGES else 0
        header = f"[{number}/{len(STAGES)}] {STAGE_TITLES.get(name, name)}"
        if marker_matches(done, settings):
            self.log(f"{header}: cached in {folder} (took {done.get('seconds', 0):.0f} s)")
            self.records[name] = {**done, "cached": True}
            return self.records[name]
        resuming = done is None and marker_matches(read_marker(folder, STARTED_MARKER), settings)
        if folder.exists() and not resuming:
            clear_stage_folder(folder)  # stale settings: start afresh
        folder.mkdir(parents=True, exist_ok=True)
        start_record = {"stage": name, "fingerprint": key, "settings": settings}
        write_json_atomically(folder / STARTED_MARKER, start_record)
        self.log(f"{header} -> {folder}" + (" (resuming the unfinished run)" if resuming else ""))
        start, start_cpu = time.perf_counter(), cpu_seconds()
        result = work(folder)
        record = {
            **start_record,
            "seconds": time.perf_counter() - start,
            "cpu_seconds": cpu_seconds() - start_cpu,
            "resumed": resuming,
            "result": result,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json_atomically(folder / STAGE_MARKER, record)
        self.records[name] = {**record, "cached": False}
        return self.records[name]


# ----------------------------------------------------------------------------------------------
# The stages
# ----------------------------------------------------------------------------------------------


def write_preset(config: DemoConfig, out: Path) -> Path:
    """Write the run's preset as YAML (SFT builds the new model from it); returns the path."""
    try:
        preset_from_dict(config.preset, "demo preset")  # fail early, naming the field
    except ValueError as error:
        raise UserError(str(error)) from None
    path = out / "preset.yaml"
    text = yaml.safe_dump(config.preset, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def image_size(config: DemoConfig) -> int:
    """Side of the run's images in pixels."""
    return int(config.preset["vision"]["image_size"])


def vq_config(config: DemoConfig) -> Any:
    """The image tokenizer's training settings (`gotr1.policy.vq.VQTrainConfig`, full renders)."""
    return VQTrainConfig(
        steps=config.vq_steps,
        batch_size=config.vq_batch_size,
        learning_rate=config.vq_learning_rate,
        foreground_weight=config.vq_foreground_weight,
        foreground_margin=config.vq_foreground_margin,
        image_size=image_size(config),
        crop_size=0,
        consistency_from=0.0,  # the demo's shallow encoder takes it from the first step
        seed=config.vq_seed,
    )


RUN_PATHS = ("output_dir", "model", "vq_from")
"""Training-config fields that are folders: not part of a stage's identity (the upstream stage's
fingerprint stands for them), so a run folder can be moved or reused by `gotr1 ablate`."""
LATER_DEFAULTS = (
    ("chain_advantage", "total"),
    ("world_chain_colors", "prompt"),
    ("prompt_only_dropout", 0.0),
    ("plan_cfg_weight", None),
    ("length_groups", 1),
)
"""Training-config fields added after demo runs existed, at the value those runs used: left out
of a stage's identity, so adding a field does not retrain finished stages (a run that sets
`sft_chain_colors=prompt` finds the SFT stages of earlier runs, which wrote chains that way)."""
DISPLAY_ONLY = ("progress",)
"""Training-config fields that change what is shown, not what is computed (`--no-progress` must
not retrain a finished stage)."""
CHECKPOINTING = ("save_steps", "save_total_limit")
"""Training-config fields that say how often a run saves its progress, not what it computes (a
resumed run continues exactly: tests/test_train_sft.py, tests/test_train_grpo.py)."""
NOT_IDENTITY = DISPLAY_ONLY + CHECKPOINTING
"""Training-config fields left out of a stage's identity besides its folders (`RUN_PATHS`)."""


def stage_settings(upstream: str, train_config: Any, processes: int = 1) -> dict[str, Any]:
    """What identifies a training stage: its upstream stage, its config without folders, display
    switches and checkpoint cadence, and the number of training processes when more than one."""
    ignored = RUN_PATHS + NOT_IDENTITY
    values = {
        k: v
        for k, v in train_config.to_dict().items()
        if k not in ignored and (k, v) not in LATER_DEFAULTS
    }
    settings = {"upstream": upstream, "config": values}
    if processes > 1:  # another sampling stream per process: another model
        settings["processes"] = processes
    return settings


def tokenizer_settings(config: DemoConfig) -> dict[str, Any]:
    """What determines the image tokenizer stage (not the demo seed: seeds share it)."""
    return {"preset": config.preset, "vq": vq_config(config).to_dict()}


def train_tokenizer(config: DemoConfig, preset_path: Path, folder: Path) -> dict[str, Any]:
    """Stage 1: a new world model — the world BPE tokenizer, fresh weights and the VQ image
    tokenizer trained on world renders — saved as ``folder/model``, with the VQ's detector
    agreement on reconstructions of held-out random scenes."""
    model_dir = train_world_tokenizer_and_vq(
        folder / "model",
        str(preset_path),
        config.vq_seed,
        vq_config(config),
        progress=config.progress,
    )
    stats = json.loads((model_dir / INIT_MARKER).read_text())["vq_train"]
    model, _ = load_pretrained(model_dir)
    quality = evaluate_vq(model.model.vqmodel, scenes=200, image_size=image_size(config))
    return {"model": str(model_dir), "vq_train": stats, "vq_eval": quality}


SFT_SETTINGS = {
    "seed": "seed",
    "max_steps": "sft_steps",
    "batch_size": "sft_batch_size",
    "learning_rate": "sft_learning_rate",
    "warmup_steps": "sft_warmup_steps",
    "length_groups": "sft_length_groups",
    "save_steps": "sft_save_steps",
    "world_split": "sft_world_split",
    "world_chain_colors": "sft_chain_colors",
    "prompt_only_dropout": "sft_prompt_only_dropout",
    "mixed_precision": "mixed_precision",
    "threads": "threads",
}
"""SFTConfig field -> the demo setting it is taken from (errors about the field name the setting)."""

GRPO_SETTINGS = {
    "seed": "seed",
    "max_steps": "grpo_steps",
    "num_prompts": "grpo_num_prompts",
    "num_generations": "grpo_num_generations",
    "learning_rate": "grpo_learning_rate",
    "min_lr_ratio": "grpo_min_lr_ratio",
    "beta": "grpo_beta",
    "num_iterations": "grpo_num_iterations",
    "chain_advantage": "grpo_chain_advantage",
    "cfg_weight": "cfg_weight",
    "max_chain_tokens": "max_chain_tokens",
    "reward_combination": "reward_combination",
    "reward_components": "reward_components",
    "mixed_precision": "mixed_precision",
    "save_steps": "grpo_save_steps",
    "threads": "threads",
}
"""GRPOConfig field -> the demo setting it is taken from (errors about the field name the setting)."""


def as_demo_setting(error: Exception, settings: dict[str, str]) -> Exception:
    """A stage config's error about a field taken from a demo setting, reworded to name the
    setting the user typed (``learning_rate must be > 0`` -> ``demo setting grpo_learning_rate
    must be > 0``; a message that does not begin with its ``field`` is prefixed: ``demo setting
    eval_plan_candidates: plan candidates must be >= 1``); other errors are returned as they are."""

    message = str(error)
    named = getattr(error, "field", None)
    field = named or message.split(" ", 1)[0].rstrip(":")
    if field not in settings:
        return error
    name = settings[field]
    if message.startswith(field):
        return ConfigError(f"demo setting {name}{message[len(field) :]}", name)
    if named:
        return ConfigError(f"demo setting {name}: {message}", name)
    return error


def _taken(config: DemoConfig, settings: dict[str, str]) -> dict[str, Any]:
    """{stage config field: the demo setting's value} for a `SFT_SETTINGS`-style map."""
    values = {field: getattr(config, name) for field, name in settings.items()}
    return {k: list(v) if isinstance(v, list) else v for k, v in values.items()}


def sft_config(config: DemoConfig, preset_path: Path, tokenizer_dir: Path, folder: Path) -> Any:
    """The `SFTConfig` of the demo's SFT stage; its errors name the demo settings."""

    try:
        return SFTConfig(
            **_taken(config, SFT_SETTINGS),
            output_dir=str(folder),
            overwrite_output_dir=True,
            model=str(preset_path),
            vq_from=str(tokenizer_dir),
            lr_scheduler_type="cosine",
            min_lr_ratio=0.05,
            weight_decay=0.01,
            cfg_dropout=0.1,
            max_chain_tokens=600,  # world chains are < 200 tokens: no example is dropped
            logging_steps=max(1, config.sft_steps // 100),
            save_total_limit=1,
            sample_steps=0,
            progress=config.progress,
        )
    except ConfigError as error:
        raise as_demo_setting(error, SFT_SETTINGS) from None


def grpo_micro_batches(config: DemoConfig) -> int:
    """How many passes a GRPO process's update takes so that none holds more than
    `DemoConfig.grpo_update_rollouts` rollouts."""
    processes = grpo_training_processes(config)
    rollouts = config.grpo_num_prompts // processes * config.grpo_num_generations
    return -(-rollouts // config.grpo_update_rollouts)


def grpo_config(config: DemoConfig, sft_final: Path, folder: Path, **overrides: Any) -> Any:
    """The `GRPOConfig` of the demo's GRPO stage (full fine-tuning: the model is tiny); its
    errors about fields taken from demo settings name those settings."""

    values: dict[str, Any] = {
        **_taken(config, GRPO_SETTINGS),
        "output_dir": str(folder),
        "overwrite_output_dir": True,
        "model": str(sft_final),
        "prompts": "world",
        "world_split": "train",
        "lr_scheduler_type": "cosine",
        "gradient_accumulation_steps": grpo_micro_batches(config),
        "epsilon": 0.2,
        "loss_type": "grpo",
        "scale_rewards": "group",
        "image_logprob": "guided",
        "judge": "world",
        "use_lora": False,
        "logging_steps": 1,
        "save_total_limit": 1,
        "sample_steps": 0,
        "threads": config.threads or (1 if config.grpo_processes > 1 else None),
        "progress": config.progress,
    }
    values.update(overrides)
    # The reward is the configured one (gotr1.train.grpo.make_reward), so config.yaml says it all.
    values.setdefault(
        "world_clean_image",
        uses_clean_factor(values["reward_components"], config.clean_image_factor),
    )
    try:
        return GRPOConfig(**values)
    except ConfigError as error:
        settings = {k: v for k, v in GRPO_SETTINGS.items() if k not in overrides}
        raise as_demo_setting(error, settings) from None


def run_child(command: list[str], env: dict[str, str]) -> int:
    """Run a training launcher to its end and return its exit status; when this process is
    interrupted or terminated (SIGTERM) meanwhile, stop the launcher first (torchrun passes the
    signal on to its workers), so no orphan goes on writing into a stage folder a rerun restarts."""
    previous = None
    if threading.current_thread() is threading.main_thread():

        def terminated(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, terminated)
    child = subprocess.Popen(command, env=env)
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_training(kind: str, train_config: Any, processes: int = 1) -> Path:
    """Train SFT or GRPO (`kind`) from its config: in this process, or in `processes` CPU
    processes (DDP over gloo) that torchrun starts; returns the final model folder. A run folder
    that already holds a checkpoint is continued from its newest one (`Stages.run` leaves one
    only for the same settings)."""
    resume = latest_checkpoint(train_config.output_dir) is not None
    if processes == 1:
        train = train_sft if kind == "sft" else train_grpo
        return train(train_config, resume=resume)

    with tempfile.TemporaryDirectory(prefix="gotr1-launch-") as scratch:
        config_path = Path(scratch) / f"{kind}.yaml"
        save_config(train_config, config_path)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", str(processes), "-m", "gotr1", kind]
        command += ["--config", str(config_path)] + (["--resume"] if resume else [])
        threads = str(train_config.threads or 1)
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": threads}
        returncode = run_child(command, env)
    if returncode != 0:
        raise UserError(
            f"{kind} in {processes} processes failed (exit status {returncode}; its messages "
            "are above); --set grpo_processes=1 trains in this process"
        )
    return Path(train_config.output_dir) / "final"


def train_sft_stage(
    config: DemoConfig, preset_path: Path, tokenizer_model: Path, folder: Path
) -> dict[str, Any]:
    """Run the demo's SFT into `folder`."""
    train = sft_config(config, preset_path, tokenizer_model, folder)
    return {"model": str(run_training("sft", train))}


def grpo_training_processes(config: DemoConfig) -> int:
    """How many processes the demo's GRPO stage trains in: `grpo_processes` on CPU; one where
    CUDA is available, since the stage then trains on the GPU in this process."""
    return 1 if torch.cuda.is_available() else config.grpo_processes


def grpo_stage_settings(config: DemoConfig, upstream: str, grpo: Any) -> dict[str, Any]:
    """What identifies a GRPO stage: `stage_settings` (with the processes it really trains in)
    plus whether the clean-image factor applies to its reward components."""
    return {
        **stage_settings(upstream, grpo, grpo_training_processes(config)),
        "clean_image_factor": uses_clean_factor(grpo.reward_components, config.clean_image_factor),
    }


def eval_settings(config: DemoConfig, split: str = "test") -> dict[str, Any]:
    """What identifies a benchmark stage, besides the model it scores (its ``upstream``)."""
    settings = {
        "seed": config.seed,
        "prompts": config.eval_prompts,
        "prompt_seed": config.eval_prompt_seed,
        "cfg_weight": config.cfg_weight,
        "max_chain_tokens": config.max_chain_tokens,
        "prompts_per_batch": config.eval_prompts_per_batch,
    }
    if split != "test":  # the held-out benchmark's identity predates the split setting
        settings["split"] = split
    if config.eval_images_per_prompt != 1:  # ... and the images-per-prompt setting
        settings["images_per_prompt"] = config.eval_images_per_prompt
    return {**settings, **eval_plan_settings(config)}


def eval_plan_settings(config: DemoConfig) -> dict[str, Any]:
    """The evaluation's plan settings that differ from GoT-R1's own sampling: two-condition
    guidance (``plan_cfg_weight``) and plan candidates, repair and judge noise (``plans``, as
    `PlanOptions.to_dict`). Empty at the defaults, so the identities of benchmark stages run
    before these settings existed are unchanged; metrics.json's ``benchmark`` holds them too."""
    settings: dict[str, Any] = {}
    if config.eval_plan_cfg_weight is not None:
        settings["plan_cfg_weight"] = config.eval_plan_cfg_weight
    plans = eval_plans(config)
    if plans.active:
        settings["plans"] = plans.to_dict()
    return settings


EVAL_SAMPLING = {
    "cfg_weight": "cfg_weight",
    "plan_cfg_weight": "eval_plan_cfg_weight",
    "max_chain_tokens": "max_chain_tokens",
}
"""SamplingConfig field -> the demo setting the evaluation takes it from."""


def eval_sampling(config: DemoConfig) -> Any:
    """The `SamplingConfig` of the demo's evaluations (GRPO's rollout guidance, plus
    eval_plan_cfg_weight); its errors name the demo settings."""
    try:
        return SamplingConfig(**_taken(config, EVAL_SAMPLING))
    except ConfigError as error:
        raise as_demo_setting(error, EVAL_SAMPLING) from None


EVAL_PLANS = {
    "candidates": "eval_plan_candidates",
    "repair": "eval_repair_plans",
    "judge_noise": "eval_plan_judge_noise",
}
"""PlanOptions field -> the demo setting the evaluation takes it from."""


def eval_plans(config: DemoConfig) -> Any:
    """The `gotr1.eval.plans.PlanOptions` of the demo's evaluations (the world judge scores the
    candidates); its errors name the demo settings."""
    try:
        return PlanOptions(**_taken(config, EVAL_PLANS))
    except ConfigError as error:
        raise as_demo_setting(error, EVAL_PLANS) from None


def train_grpo_stage(grpo: Any, processes: int = 1) -> dict[str, Any]:
    """Run GRPO with the demo's reward (its `world_clean_image` says whether the clean-image
    factor of `gotr1.demo.rewards` applies)."""
    return {"model": str(run_training("grpo", grpo, processes))}


def evaluate_model(
    config: DemoConfig, model_dir: Path, folder: Path, split: str = "test"
) -> dict[str, Any]:
    """Score a model folder on the benchmark prompts of `split` (test: the held-out benchmark,
    unseen compositions; train: seen ones) with the sampling of GRPO's rollouts (seed = the demo
    seed) and write the results (summary.json/md, samples.jsonl, images/) into `folder`."""
    if config.threads:
        torch.set_num_threads(config.threads)
    policy = Policy.load(model_dir)
    result = evaluate_world(
        policy,
        prompts=benchmark_prompts(split, config.eval_prompts, seed=config.eval_prompt_seed),
        seed=config.seed,
        num_generations=config.eval_images_per_prompt,
        sampling=eval_sampling(config),
        prompts_per_batch=config.eval_prompts_per_batch,
        with_rewards=True,
        progress=config.progress,
        plans=eval_plans(config),
    )
    write_world_results(result, folder)
    return world_result_record(result)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def apply_process_settings(config: DemoConfig) -> None:
    """Set this process's torch threads and, without progress bars, silence the ones
    transformers draws while loading weights."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if not config.progress:
        transformers_logging.disable_progress_bar()


def resolve_precision(config: DemoConfig) -> tuple[DemoConfig, Any]:
    """``config`` with the mixed precision its SFT and GRPO updates train in on this device
    (``auto`` resolved, `gotr1.train.precision`), and that `PrecisionChoice`, said once: the
    stages' identities hold the choice, not ``auto``."""
    choice = choose_mixed_precision(config.mixed_precision, accelerate_device_type())
    say_once(choice)
    return dataclasses.replace(config, mixed_precision=choice.chosen), choice


def check_settings(config: DemoConfig) -> None:
    """Check a demo's settings before anything trains: its own fields, then the stages' configs
    they make (the GRPO stage's reward components, combination, ...); raises `UserError`."""
    config.validate()
    sft_config(config, Path("preset.yaml"), Path("tokenizer"), Path("sft"))
    grpo_config(config, Path("sft"), Path("grpo"))
    eval_sampling(config)
    eval_plans(config)


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the whole demo in ``config.out``; returns metrics.json's content."""

    check_settings(config)
    started, started_cpu = time.perf_counter(), cpu_seconds()
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create the folder ({error})") from None
    apply_process_settings(config)
    config, precision = resolve_precision(config)
    preset_path = write_preset(config, out)
    stages = Stages(log)

    tok_settings = tokenizer_settings(config)
    tokenizer_folder = Path(config.tokenizer_dir) if config.tokenizer_dir else out / "tokenizer"
    tokenizer = stages.run(
        "tokenizer",
        tokenizer_folder,
        tok_settings,
        lambda folder: train_tokenizer(config, preset_path, folder),
    )
    tokenizer_model = tokenizer_folder / "model"

    sft_settings = stage_settings(
        tokenizer["fingerprint"],
        sft_config(config, preset_path, tokenizer_model, out / "sft"),
    )

    sft = stages.run(
        "sft",
        out / "sft",
        sft_settings,
        lambda folder: train_sft_stage(config, preset_path, tokenizer_model, folder),
    )
    sft_final = out / "sft" / "final"

    grpo_settings = grpo_stage_settings(
        config, sft["fingerprint"], grpo_config(config, sft_final, out / "grpo")
    )

    def run_grpo(folder: Path) -> dict[str, Any]:
        grpo = grpo_config(config, sft_final, folder)
        return train_grpo_stage(grpo, grpo_training_processes(config))

    grpo = stages.run("grpo", out / "grpo", grpo_settings, run_grpo)
    grpo_final = out / "grpo" / "final"

    evals = {}
    for split, prefix in (("test", ""), ("train", "seen-")):
        for name, model_dir, upstream in (
            ("sft", sft_final, sft),
            ("grpo", grpo_final, grpo),
        ):
            evals[prefix + name] = stages.run(
                f"eval-{prefix}{name}",
                out / "eval" / (prefix + name),
                {**eval_settings(config, split), "upstream": upstream["fingerprint"]},
                lambda folder, model_dir=model_dir, split=split: evaluate_model(
                    config, model_dir, folder, split
                ),
            )

    merge_train_logs(out)
    metrics = build_metrics(config, stages.records, evals)
    samples = {name: read_eval_samples(out / "eval" / name) for name in evals}
    metrics["mixed_precision"] = precision.to_dict()
    add_delta_errors(metrics, samples)
    add_diagnosis(metrics, out, samples)
    metrics["run_seconds"] = time.perf_counter() - started
    metrics["run_cpu_seconds"] = cpu_seconds() - started_cpu
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    report = write_report(out, metrics)
    metrics["report"] = str(report)
    log(summary_table(metrics))
    log(f"wrote {out / 'metrics.json'}, {report}, {out / 'train_log.jsonl'}")
    return metrics


def add_delta_errors(metrics: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> None:
    """Add the standard error of GRPO's soft-score difference to SFT (per category and
    overall, `gotr1.eval.world_bench.paired_delta_standard_error`) on the held-out prompts and,
    when the run has them, on the seen ones; `samples` holds each evaluation's samples by
    stage name ("sft", "grpo", "seen-sft", "seen-grpo")."""

    def error(prefix: str) -> dict[str, float | None]:
        return paired_delta_standard_error(
            samples.get(f"{prefix}sft", []), samples.get(f"{prefix}grpo", [])
        )

    metrics["delta_standard_error"] = error("")
    if metrics.get("seen_compositions"):
        metrics["seen_compositions"]["delta_standard_error"] = error("seen-")


def merge_train_logs(out: Path) -> Path:
    """``train_log.jsonl`` of the run: SFT rows then GRPO rows, each with its ``stage``."""

    lines = [
        json.dumps({"stage": stage, **row})
        for stage in ("sft", "grpo")
        for row in read_jsonl(out / stage / LOG_FILE)
    ]
    target = out / LOG_FILE
    target.write_text("".join(line + "\n" for line in lines))
    return target


def build_metrics(
    config: DemoConfig, records: dict[str, dict[str, Any]], evals: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """metrics.json: soft scores per category for each stage, accuracies, deltas, times."""
    sft, grpo = evals["sft"]["result"], evals["grpo"]["result"]
    delta = soft_delta(sft, grpo)
    stage_times = {
        name: {
            "seconds": round(float(record.get("seconds", 0.0)), 2),
            "cpu_seconds": round(float(record.get("cpu_seconds", 0.0)), 2),
            "cached": bool(record.get("cached", False)),
            "resumed": bool(record.get("resumed", False)),
        }
        for name, record in records.items()
    }
    tokenizer = records["tokenizer"].get("result", {})
    benchmark_note = (
        "quick mode: a smoke run on fewer held-out prompts than the full benchmark's 300"
        if config.eval_prompts < 300
        else "the world benchmark's test split: every prompt holds an unseen composition"
    )
    return {
        "sft": sft["soft"],
        "grpo": grpo["soft"],
        "sft_accuracy": sft["accuracy"],
        "grpo_accuracy": grpo["accuracy"],
        "delta": delta,
        "seconds": round(sum(t["seconds"] for t in stage_times.values()), 2),
        "cpu_seconds": round(sum(t["cpu_seconds"] for t in stage_times.values()), 2),
        "seed": config.seed,
        "quick": config.quick,
        "score": "soft: fraction of the prompt's requirements met (objects, colours, counts, "
        "relation, only asked objects drawn), mean per category, overall = mean of the "
        "categories; *_accuracy: share of images meeting all of them",
        "judged_by": sft.get("judged_by"),
        "benchmark": {
            "split": "test",
            "prompts": config.eval_prompts,
            "prompt_seed": config.eval_prompt_seed,
            "images_per_prompt": config.eval_images_per_prompt,
            "sampling_seed": config.seed,
            "images": sft.get("images"),
            "note": benchmark_note,
            **eval_plan_settings(config),
        },
        "rewards": {"sft": sft.get("rewards"), "grpo": grpo.get("rewards")},
        "seen_compositions": seen_compositions(evals),
        "chains": {"sft": sft.get("chains"), "grpo": grpo.get("chains")},
        "image_tokenizer": tokenizer.get("vq_eval"),
        "stages": stage_times,
        "settings": config.to_dict(),
    }


def soft_delta(sft: dict[str, Any], grpo: dict[str, Any]) -> dict[str, float]:
    """GRPO's soft score minus SFT's, per category both evaluation results hold."""
    return {k: grpo["soft"][k] - sft["soft"][k] for k in sft["soft"] if k in grpo["soft"]}


def seen_compositions(evals: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Both models on as many train-split prompts (seen compositions: the distribution GRPO
    trains on, some prompts possibly identical to its training prompts): whether GRPO improved
    where it trained, apart from whether that carries over to unseen compositions."""
    if "seen-sft" not in evals or "seen-grpo" not in evals:
        return None
    sft, grpo = evals["seen-sft"]["result"], evals["seen-grpo"]["result"]
    return {
        "split": "train",
        "sft": sft["soft"],
        "grpo": grpo["soft"],
        "delta": soft_delta(sft, grpo),
        "rewards": {"sft": sft.get("rewards"), "grpo": grpo.get("rewards")},
        "note": "train-split prompts: compositions seen in SFT and GRPO training (not held out)",
    }


def _error_text(error: float | None) -> str:
    return f"{error:>8.3f}" if isinstance(error, int | float) else f"{'':>8}"


def summary_table(metrics: dict[str, Any]) -> str:
    """The plain-text table printed at the end of a demo."""
    sft, grpo = metrics["sft"], metrics["grpo"]
    sft_acc, grpo_acc = metrics["sft_accuracy"], metrics["grpo_accuracy"]
    width = max(len(k) for k in sft) + 2
    errors = metrics.get("delta_standard_error") or {}
    images = metrics["benchmark"].get("images_per_prompt", 1)
    planning = plan_settings_text(metrics["benchmark"])
    lines = [
        "",
        f"held-out world benchmark ({metrics['benchmark']['prompts']} prompts x {images} "
        f"images, seed {metrics['seed']}{', quick' if metrics['quick'] else ''}"
        f"{', ' + planning if planning else ''}): soft score "
        "(accuracy); s.e. = standard error of the delta",
        f"{'category':<{width}}{'SFT':>16}{'GRPO':>16}{'delta':>9}{'s.e.':>8}",
    ]
    for key in sft:
        lines.append(
            f"{key:<{width}}{sft[key]:>8.3f} ({sft_acc[key]:.3f}){grpo[key]:>8.3f} "
            f"({grpo_acc[key]:.3f}){grpo[key] - sft[key]:>+9.3f}{_error_text(errors.get(key))}"
        )
    seen = metrics.get("seen_compositions")
    if seen:
        seen_error = (seen.get("delta_standard_error") or {}).get("overall")
        lines.append(
            f"{'seen (train)':<{width}}{seen['sft']['overall']:>8.3f}{'':>8}"
            f"{seen['grpo']['overall']:>8.3f}{'':>8}{seen['delta']['overall']:>+9.3f}"
            f"{_error_text(seen_error)}"
            "   (overall on train-split prompts: compositions seen in training)"
        )
    lines.append("")
    lines.append(f"{'stage':<{width}}{'wall s':>10}{'CPU s':>10}")
    for name, times in metrics["stages"].items():
        note = "  (cached)" if times["cached"] else ""
        if times.get("resumed"):
            note += "  (resumed: the last attempt's time)"
        lines.append(f"{name:<{width}}{times['seconds']:>10.1f}{times['cpu_seconds']:>10.1f}{note}")
    lines.append(f"{'total':<{width}}{metrics['seconds']:>10.1f}{metrics['cpu_seconds']:>10.1f}")
    for note in metrics.get("diagnosis") or []:
        lines.append(f"warning: {note}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Several seeds
# ----------------------------------------------------------------------------------------------


def seed_summary(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per-seed and mean soft scores of several demo runs (`results`: metrics.json by seed), the
    mean gain with its standard error and the worst category's mean change (``checks``)."""
    seeds = sorted(results)
    categories = list(results[seeds[0]]["sft"])
    mean = {
        stage: {c: sum(results[s][stage][c] for s in seeds) / len(seeds) for c in categories}
        for stage in ("sft", "grpo")
    }
    delta = {c: mean["grpo"][c] - mean["sft"][c] for c in categories}
    checks = {
        "overall_gain": delta["overall"],
        "worst_category_change": min(v for k, v in delta.items() if k != "overall"),
    }
    errors = [(results[s].get("delta_standard_error") or {}).get("overall") for s in seeds]
    if all(isinstance(e, int | float) for e in errors):  # independent runs: errors add in squares
        checks["overall_gain_standard_error"] = math.sqrt(sum(e * e for e in errors)) / len(seeds)
    kept = ("sft", "grpo", "sft_accuracy", "grpo_accuracy", "seconds", "cpu_seconds")
    per_seed = {
        str(s): {
            **{key: results[s][key] for key in kept},
            "delta_standard_error": results[s].get("delta_standard_error"),
        }
        for s in seeds
    }
    return {
        "seeds": seeds,
        "per_seed": per_seed,
        "mean": mean,
        "mean_delta": delta,
        "checks": checks,
    }


def seed_markdown(summary: dict[str, Any]) -> str:
    """A markdown table of `seed_summary`: SFT / GRPO soft score per seed and category, the means
    and the mean gain with its standard error."""
    categories = list(summary["mean"]["sft"])
    head = "| seed | model | " + " | ".join(categories) + " |"
    lines = [head, "|" + " --- |" * (len(categories) + 2)]
    rows = [(seed, summary["per_seed"][str(seed)]) for seed in summary["seeds"]]
    for seed, values in [*rows, ("mean", summary["mean"])]:
        for stage in ("sft", "grpo"):
            cells = " | ".join(f"{values[stage][c]:.3f}" for c in categories)
            lines.append(f"| {seed} | {stage.upper()} | {cells} |")
    cells = " | ".join(f"{summary['mean_delta'][c]:+.3f}" for c in categories)
    lines.append(f"| mean | Δ | {cells} |")
    checks = summary["checks"]
    error = checks.get("overall_gain_standard_error")
    lines += [
        "",
        f"Overall gain (mean over seeds): {checks['overall_gain']:+.3f}"
        + (f" ± {error:.3f}" if error is not None else "")
        + f"; worst category change {checks['worst_category_change']:+.3f}.",
    ]
    errors = [(seed, (row.get("delta_standard_error") or {}).get("overall")) for seed, row in rows]
    if all(isinstance(error, int | float) for _, error in errors):
        lines.append(
            "Standard error of each seed's overall Δ (the benchmark's prompts and images, not "
            "training's randomness): "
            + ", ".join(f"seed {seed} {error:.3f}" for seed, error in errors)
            + "."
        )
    return "\n".join(lines) + "\n"


def run_seeds(
    configs: list[DemoConfig], out: str | Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run one demo per config (one per seed) and write ``seeds.json`` / ``seeds.md`` in `out`."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for config in configs:
        log(f"=== seed {config.seed} -> {config.out}")
        results[config.seed] = run_demo(config, log)
    summary = seed_summary(results)
    (folder / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = seed_markdown(summary)
    (folder / "seeds.md").write_text(text)
    log(text)
    return summary
