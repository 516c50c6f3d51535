"""What SFT and GRPO share: accelerate set-up, the module accelerate wraps, optimizer, schedule.

Every differentiable computation goes through `TrainingModule.forward`, so DDP, FSDP and
DeepSpeed — which hook the forward of the module they wrap — see it: the SFT loss, the policy's
teacher-forced log-probs, and (LoRA) the reference log-probs with adapters disabled. Rollouts run
on the unwrapped model under `gathered_parameters` (full weights even under ZeRO-3 / FSDP).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import os
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, ProjectConfiguration, parse_flag_from_env
from transformers.utils import logging as hf_logging

from gotr1.policy.attention import use_float32_cpu_attention
from gotr1.policy.logprobs import token_logprobs
from gotr1.policy.lora import reference_mode
from gotr1.train.config import ConfigError, TrainConfig
from gotr1.train.losses import sft_losses
from gotr1.train.precision import choose_mixed_precision, say_once


class TrainingModule(torch.nn.Module):
    """The Janus (or peft) model behind one forward(), the module accelerate prepares.

    ``forward("sft", batch, chain_weight, image_weight)`` -> SFT losses (dict);
    ``forward("logprobs", rollouts, **kw)`` -> `TokenLogprobs` under the current weights;
    ``forward("reference", rollouts, **kw)`` -> `TokenLogprobs` of a LoRA model with adapters off.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, task: str, batch: Any, **kwargs: Any) -> Any:
        if task == "sft":
            return sft_losses(self.model, batch, **kwargs)

        special = kwargs.pop("special")
        if task == "logprobs":
            return token_logprobs(self.model, batch, special.pad, special.bos, **kwargs)
        if task == "reference":
            with torch.no_grad(), reference_mode(self.model):
                return token_logprobs(self.model, batch, special.pad, special.bos, **kwargs)
        raise ValueError(f"unknown task {task!r}")


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An `Accelerator` for a run: mixed precision, gradient accumulation, trackers.

    ``config.mixed_precision`` ``auto`` is resolved here for the run's device (bf16 only where it
    is native, `gotr1.train.precision`) and replaced by the choice, so the run's config.yaml and
    train_log.jsonl record what it trained in; the choice is printed once."""
    check_trackers(config.report_to)
    if config.threads:
        torch.set_num_threads(config.threads)
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
    choice = choose_mixed_precision(config.mixed_precision, accelerate_device_type())
    say_once(choice)
    config.mixed_precision = choice.chosen
    _forget_previous_run_precision(config.mixed_precision)
    use_float32_cpu_attention()  # bf16 attention is the slow part of a bf16 step on CPU
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=list(config.report_to) or None,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, "trackers")
        ),
        step_scheduler_with_optimizer=False,
    )


def accelerate_device_type() -> str:
    """The device type ("cpu", "cuda", ...) the `Accelerator` of this process trains on. It sets
    up accelerate's process state as `Accelerator` does (ACCELERATE_USE_CPU: CPU processes under
    torchrun, the gloo group), so the later `Accelerator` finds the same state."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device.type


def _forget_previous_run_precision(mixed_precision: str) -> None:
    """Let one process run several trainings with different mixed precision (the demo runs SFT
    then GRPO; a notebook runs one after another): accelerate keeps the first run's precision in
    process-global state and refuses any other. The process group (PartialState) is kept."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


TRACKER_MODULES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "trackio": "trackio",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
}


def check_trackers(trackers: list[str]) -> None:
    """Fail at start (naming report_to) when a requested tracker's package is not installed."""
    for tracker in trackers:
        module = TRACKER_MODULES.get(tracker, tracker)
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"report_to: {tracker} needs the {module!r} package (pip install {module})"
            )


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether parameters are sharded across processes (FSDP, or DeepSpeed ZeRO-3)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        return plugin is not None and int(plugin.zero_stage) == 3
    return False


def uses_accelerate_state(accelerator: Accelerator) -> bool:
    """Whether optimizer states are partitioned (FSDP, DeepSpeed): checkpoint them through
    accelerate's save_state rather than optimizer.safetensors."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_policy(
    accelerator: Accelerator, wrapped: torch.nn.Module, policy: Any, folder: Any
) -> None:
    """Save the policy (HF folder, or PEFT adapter folder) from the main process; under ZeRO-3 /
    FSDP the full state dict is gathered first (every process must call this)."""
    if not is_sharded(accelerator):
        if accelerator.is_main_process:
            policy.save(folder)
        return
    state = accelerator.get_state_dict(wrapped)
    if accelerator.is_main_process:
        state = {key.removeprefix("model."): value for key, value in state.items()}
        policy.save(folder, state_dict=state)


@contextlib.contextmanager
def gathered_parameters(accelerator: Accelerator, wrapped: torch.nn.Module) -> Iterator[None]:
    """Full weights on every process for sampling outside the wrapped forward (ZeRO-3 / FSDP);
    a no-op otherwise (DDP, single process). Not exercised by the CPU tests."""
    if not is_sharded(accelerator):
        yield
        return
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        import deepspeed  # optional: not a dependency of gotr1

        with deepspeed.zero.GatheredParameters(list(wrapped.parameters())):
            yield
        return
    # needs torch built with distributed support, which sharding implies
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(wrapped, writeback=False, recurse=True):
        yield


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute the decoder's activations in the backward pass (non-reentrant checkpointing)."""
    janus = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(janus, "activation_checkpointing_enable"):  # transformers >= 5.x
        janus.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        janus.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def freeze_modules(model: torch.nn.Module, names: list[str]) -> None:
    """Freeze Janus submodules by name (``model.model.<name>``); a clear error for unknown ones."""
    janus = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in names:
        module = getattr(janus.model, name, None)
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"freeze: the model has no submodule {name!r}")
        module.requires_grad_(False)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; matrices decay, vectors (norms, biases) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters (check freeze / use_lora)")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )


def lr_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based): linear warm-up, then
    cosine / linear decay to `min_ratio`, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The configured schedule over `total_steps` optimizer steps."""
    warmup = config.warmup(total_steps)
    kind, floor = config.lr_scheduler_type, config.min_lr_ratio
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, kind, floor)
    )


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from the run seed and integers (step, process): independent streams."""
    text = "-".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def clip_gradients(accelerator: Accelerator, module: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (max_norm 0: measure only); returns the norm before clipping."""
    params = [p for p in module.parameters() if p.requires_grad]
    norm = accelerator.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm) if norm is not None else float("nan")


def mean_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over processes (one collective for the whole dict)."""
    if accelerator.num_processes == 1 or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    tensor = accelerator.reduce(tensor, reduction="mean")
    return dict(zip(keys, tensor.tolist(), strict=True))
