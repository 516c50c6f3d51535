"""Supervised fine-tuning: teach the policy to write a GoT chain and then draw the image.

Loss (one forward of ``[prompt][chain <begin_of_image>][image codes]``, prompt tokens masked):

    loss = chain_loss_weight * CE(text head, chain tokens incl. <begin_of_image>)
         + image_loss_weight * CE(image head, VQ codes of the target image)

For a fraction ``cfg_dropout`` of the examples the condition is blanked exactly as the rollout's
unconditional CFG row is built (`gotr1.policy.rollout.unconditional_ids`: prompt and chain -> pad,
BOS and <begin_of_image> kept); those rows train the image head only, so classifier-free guidance
has a learned unconditional branch. A further fraction ``prompt_only_dropout`` (off by default) has
the chain alone blanked, as two-condition guidance's prompt-only row is built
(`gotr1.policy.rollout.prompt_only_ids`), image loss only, so that row is learned too.

Stages, each callable on its own (the demo chains them):

    init = train_world_tokenizer_and_vq("runs/sft/init")      # world tokenizer + VQ, new model
    final = train_sft(SFTConfig(model="world-tiny", ...))      # runs the line above itself
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import DistributedType

from gotr1.errors import UserError
from gotr1.policy.io import configure_special_tokens, load_pretrained, new_policy
from gotr1.policy.io import save_pretrained as save_hf
from gotr1.policy.policy import Policy
from gotr1.policy.presets import PRESETS, build_model, get_preset
from gotr1.policy.vq import VQTrainConfig, train_vq
from gotr1.train import checkpoint as ckpt
from gotr1.train.config import SFTConfig, save_config
from gotr1.train.data import BadRows, SFTBatch, make_sft_batch, sft_source, slice_for_process
from gotr1.train.losses import sft_group_losses
from gotr1.train.runlog import RunLog, dump_samples, progress_bar
from gotr1.train.runtime import (
    TrainingModule,
    clip_gradients,
    enable_gradient_checkpointing,
    freeze_modules,
    is_sharded,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    mean_over_processes,
    save_policy,
    step_seed,
    uses_accelerate_state,
)
from gotr1.world import benchmark_prompts, parse_prompt, score_image

if TYPE_CHECKING:
    from gotr1.policy.vq import VQTrainConfig

INIT_MARKER = "gotr1_init.json"


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Stage 0: a new world model (tokenizer + VQ)
# ----------------------------------------------------------------------------------------------


def train_world_tokenizer_and_vq(
    output_dir: str | Path,
    preset: str = "world-tiny",
    seed: int = 0,
    vq_config: VQTrainConfig | None = None,
    vq_from: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """A new world model saved as an HF folder: the world tokenizer, fresh weights, a trained VQ.

    The VQ image tokenizer is trained on world renders (`gotr1.policy.vq.train_vq`), or the
    tokenizer and VQ are copied from the model folder `vq_from` (no VQ training). Writes
    ``gotr1_init.json`` (settings and VQ statistics) next to the weights; returns the folder.
    """

    folder = Path(output_dir)
    vq_config = vq_config or VQTrainConfig(seed=seed)
    start = time.perf_counter()
    stats: dict[str, Any] = {}
    if vq_from is not None:
        donor, processor = load_pretrained(vq_from)
        model = build_model(preset, vocab_size=len(processor.tokenizer), seed=seed)
        try:
            model.model.vqmodel.load_state_dict(donor.model.vqmodel.state_dict())
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1].strip()
            raise UserError(
                f"vq_from: the VQ of {vq_from} does not have the shape of preset {preset} ({first})"
            ) from None
        configure_special_tokens(model, processor.tokenizer)
        del donor
    else:
        model, processor = new_policy(preset, seed=seed)
        stats = train_vq(model.model.vqmodel, vq_config, progress=progress)
    save_hf(model.eval(), processor, folder)
    marker = init_settings(preset, seed, vq_config, vq_from)
    marker["vq_train"] = stats
    marker["seconds"] = time.perf_counter() - start
    (folder / INIT_MARKER).write_text(json.dumps(marker, indent=2, default=str) + "\n")
    return folder


def init_settings(
    preset: str, seed: int, vq_config: VQTrainConfig, vq_from: str | Path | None
) -> dict[str, Any]:
    """What determines a new world model (compared before reusing an init folder)."""
    return {
        "preset": preset,
        "seed": seed,
        "vq": dataclasses.asdict(vq_config),
        "vq_from": None if vq_from is None else str(vq_from),
    }


def _reusable_init(folder: Path, settings: dict[str, Any]) -> bool:
    marker = folder / INIT_MARKER
    if not marker.is_file() or not (folder / "config.json").is_file():
        return False
    saved = json.loads(marker.read_text())
    return all(saved.get(k) == json.loads(json.dumps(v, default=str)) for k, v in settings.items())


# ----------------------------------------------------------------------------------------------
# The SFT run
# ----------------------------------------------------------------------------------------------


def train_sft(config: SFTConfig, resume: bool | str | Path = False) -> Path:
    """Run SFT as configured; returns the folder of the final model (``<output_dir>/final``).

    ``config.model`` a preset: a new model (world tokenizer + VQ trained first, cached in
    ``<output_dir>/init``); a folder: fine-tune it. `resume` = True continues from the newest
    checkpoint in output_dir (or give a checkpoint folder). Works under ``accelerate launch``.
    """

    config.check_files()
    out = Path(config.output_dir)
    accelerator = make_accelerator(config)
    resume_from = ckpt.prepare_output_dir(accelerator, config, resume)

    # --- the model --------------------------------------------------------------------------
    if resume_from is not None:
        model, processor = load_pretrained(resume_from / "model", dtype=config.dtype)
    else:
        source = config.model
        if is_preset(config.model):
            vq_config = VQTrainConfig(
                steps=config.vq_steps,
                batch_size=config.vq_batch_size,
                learning_rate=config.vq_learning_rate,
                image_size=get_preset(config.model).image_size,
                seed=config.seed,
            )
            init = out / "init"
            settings = init_settings(config.model, config.seed, vq_config, config.vq_from)
            if accelerator.is_main_process and not _reusable_init(init, settings):
                train_world_tokenizer_and_vq(
                    init, config.model, config.seed, vq_config, config.vq_from, config.progress
                )
            accelerator.wait_for_everyone()
            source = str(init)
        model, processor = load_pretrained(source, dtype=config.dtype)
    freeze_modules(model, config.freeze)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    tokenizer = processor.tokenizer
    image_size = int(processor.image_processor.size["height"])
    vq = model.model.vqmodel.eval()

    optimizer = make_optimizer(model, config)
    total_updates = config.max_steps
    scheduler = make_scheduler(optimizer, config, total_updates)
    wrapped, optimizer = accelerator.prepare(TrainingModule(model), optimizer)

    state: dict[str, Any] = {"data_position": 0}
    start_step = 0
    if resume_from is not None:
        state = ckpt.load_checkpoint(
            accelerator, resume_from, optimizer, scheduler, uses_accelerate_state(accelerator)
        )
        start_step = int(state["step"])
    if accelerator.is_main_process:
        save_config(config, out / "config.yaml")

    bad_rows = BadRows(policy=config.on_bad_row)
    data = sft_source(config, bad_rows, image_size)
    position = int(state.get("data_position", 0))
    per_process = config.batch_size
    global_batch = per_process * accelerator.num_processes
    log = RunLog(
        out, accelerator, config.to_dict(), start_step if resume_from else None, "gotr1-sft"
    )
    bar = progress_bar(accelerator, config.max_steps, start_step, config.progress, "sft")
    policy = Policy(model, processor)
    sample_prompts = _sample_prompts(config, data)

    def save(step: int, metrics: dict[str, float]) -> None:
        ckpt.save_checkpoint(
            accelerator,
            out,
            step,
            lambda folder: save_policy(accelerator, wrapped, policy, folder),
            optimizer,
            scheduler,
            {"data_position": position, "metrics": metrics, "kind": "sft"},
            config.save_total_limit,
            uses_accelerate_state(accelerator),
        )

    # DeepSpeed steps its optimizer inside every backward: one pass a micro-batch there.
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    length_groups = 1 if deepspeed else config.length_groups

    def group_step(
        part: SFTBatch, token_totals: tuple[float, float], last: bool
    ) -> dict[str, torch.Tensor]:
        """Forward and backward of one length group; only the last one synchronises gradients."""
        with nullcontext() if last else accelerator.no_sync(wrapped):
            losses = wrapped(
                "sft",
                part,
                chain_weight=config.chain_loss_weight,
                image_weight=config.image_loss_weight,
                token_totals=token_totals,
            )
            accelerator.backward(losses["loss"])
        return losses

    metrics: dict[str, float] = {}
    for step in range(start_step, config.max_steps):
        started = time.perf_counter()
        wrapped.train()
        vq.eval()
        sums = {"loss": 0.0, "chain_loss": 0.0, "image_loss": 0.0, "unconditional": 0.0}
        if config.prompt_only_dropout > 0:
            sums["prompt_only"] = 0.0
        tokens = 0.0
        grad_norm = float("nan")
        for _ in range(config.gradient_accumulation_steps):
            indices = slice_for_process(position, per_process, accelerator.process_index)
            position += global_batch
            batch = make_sft_batch(
                [(i, data[i]) for i in indices],
                tokenizer,
                vq,
                image_size,
                config.cfg_dropout,
                config.seed,
                config.max_chain_tokens,
                bad_rows,
                config.prompt_only_dropout,
            )
            if batch is None:
                raise UserError(f"every row of the batch at data position {position} was bad")
            batch = batch.to(accelerator.device)
            with accelerator.accumulate(wrapped):
                losses = sft_group_losses(batch, length_groups, group_step)
                if accelerator.sync_gradients:
                    grad_norm = clip_gradients(accelerator, wrapped, config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            for key in ("loss", "chain_loss", "image_loss"):
                sums[key] += losses[key] / config.gradient_accumulation_steps
            sums["unconditional"] += float(batch.unconditional.float().mean()) / (
                config.gradient_accumulation_steps
            )
            if batch.prompt_only is not None:
                sums["prompt_only"] += float(batch.prompt_only.float().mean()) / (
                    config.gradient_accumulation_steps
                )
            tokens += losses["chain_tokens"] + losses["image_tokens"]
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        done = step + 1
        elapsed = time.perf_counter() - started
        metrics = mean_over_processes(accelerator, {**sums, "tokens_per_second": tokens / elapsed})
        metrics["tokens_per_second"] *= accelerator.num_processes
        metrics.update(
            grad_norm=grad_norm,
            learning_rate=learning_rate,
            step_time=elapsed,
            examples=float(position),
            **{"data/bad_rows": float(bad_rows.count)},
        )
        sampled = bool(config.sample_steps) and (
            done % config.sample_steps == 0 or done == config.max_steps
        )
        if sampled:
            metrics.update(_sample_dump(accelerator, config, policy, sample_prompts, done))
        if sampled or done % config.logging_steps == 0 or done == config.max_steps:
            log.log(done, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", step_time=f"{elapsed:.2f}s")
        if done % config.save_steps == 0 and done != config.max_steps:
            save(done, metrics)
    bar.close()

    save(config.max_steps, metrics)
    final = out / "final"
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
    save_policy(accelerator, wrapped, policy, final)
    accelerator.wait_for_everyone()
    log.close()
    return final


def is_preset(model: str) -> bool:
    """Whether an SFT `model` names a preset (a new model) rather than a model folder."""

    return model in PRESETS or str(model).endswith((".yaml", ".yml"))


def _sample_prompts(config: SFTConfig, data: Any) -> list[str]:
    """Fixed prompts of the sample dumps: world test-split prompts, or the first data rows."""
    if not config.sample_steps or not config.num_samples:
        return []
    if list(config.data) == ["world"]:
        return [p for p, _ in benchmark_prompts("test", config.num_samples, seed=config.seed)]
    return [data.rows[i].prompt for i in range(min(config.num_samples, len(data.rows)))]


def world_sample_metrics(
    prompts: list[str], chains: list[Any], images: list[Any]
) -> dict[str, Any]:
    """Parse rate of chains and world-benchmark scores of images (prompts outside the world
    grammar are left out of the scores)."""

    parsed = [bool(c.objects) and not c.errors for c in chains]
    soft, correct, scores = [], [], []
    for prompt, image in zip(prompts, images, strict=True):
        try:
            score = score_image(parse_prompt(prompt), image)
        except ValueError:
            scores.append(None)
            continue
        soft.append(score.soft)
        correct.append(float(score.correct))
        scores.append({"soft": score.soft, "correct": score.correct})
    out: dict[str, Any] = {"samples/parse_rate": sum(parsed) / max(len(parsed), 1)}
    if soft:
        out["samples/world_soft"] = sum(soft) / len(soft)
        out["samples/world_correct"] = sum(correct) / len(correct)
    out["_scores"] = scores
    return out


def _sample_dump(
    accelerator: Any, config: SFTConfig, policy: Any, prompts: list[str], step: int
) -> dict[str, float]:
    """Sample one chain + image per fixed prompt, save them, return parse/score metrics (main)."""

    if not prompts or not accelerator.is_main_process or is_sharded(accelerator):
        return {}
    sampling = config.sample_sampling()
    generator = torch.Generator().manual_seed(step_seed(config.seed, step, 99))
    with torch.autocast(accelerator.device.type, enabled=False):
        rollouts = policy.rollout(prompts, 1, sampling, generator)
    metrics = world_sample_metrics(rollouts.prompts, rollouts.chains, rollouts.images)
    scores = metrics.pop("_scores")
    extra = [
        {"world_score": s, "truncated": bool(t)}
        for s, t in zip(scores, rollouts.truncated, strict=True)
    ]
    dump_samples(
        config.output_dir, step, rollouts.prompts, rollouts.chain_texts, rollouts.images, extra
    )
    return metrics
