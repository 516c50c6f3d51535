"""Predicted peak memory of one GRPO step, by part, for a preset and the step's settings.

    python benchmarks/grpo_memory.py --preset janus-pro-7b --num-generations 16 --micro-batch-rows 4
    python benchmarks/grpo_memory.py --preset janus-pro-1b --layers 2 --num-generations 4 \
        --micro-batch-rows 4 --cpu --measured benchmarks/results/grpo-step-janus-pro-1b-2l-cpu.json

Arithmetic only (the model is built on the meta device for its parameter count). The parts follow
what gotr1's step holds (gotr1.policy.rollout, gotr1.policy.logprobs, gotr1.train.grpo); the
constants were measured part by part with `benchmarks/grpo_memory_probe.py` (per stage, and
torch's own allocations):

- weights: every parameter in the weights' dtype;
- LoRA state: the adapters in float32 (PEFT's default), 4 bytes a parameter, and during the update
  their gradients and AdamW's two moments, 12 more;
- rollout: the larger of
  - the static KV cache of stage 2: 2 x layers x kv width x weight bytes per token, for the
    conditional rows over prompt + chain cap + image tokens and the unconditional rows over the
    image tokens after one shared prefix (with two-condition guidance, `plan_cfg_weight`, the
    prompt-only rows' cache as well: as large as the conditional rows'), plus one decode step's
    logits (2 x rows x vocab float32);
  - the VQ decode of the images (the cache is freed first), 16 images a batch at most: per image
    4 tensors of base channels x image size^2 in the weights' dtype, the decoder's full-resolution
    stage (measured 0.56 GiB for 4 images at 384 px);
- update: with gradient checkpointing every layer's input for each pass of the micro-batch's rows
  over prompt + chain + image tokens (one pass, two with guided image log-probs, three with
  two-condition guidance), plus the larger of (a) one layer recomputed for one pass with its
  gradients, 2 x (10 hidden-wide + 4 intermediate-wide) tensors per token (the Llama layer's
  saved tensors), and under LoRA the adapters' float32 copies of their inputs (6 hidden-wide, 1
  intermediate-wide), and (b) the heads on one chunk of positions (at most 2^24 logits a chunk: 8
  float32 copies under guidance, the branches' logits, the mix, its log-softmax and their
  gradients; 4 without), which are done before the layers' backward begins (measured at 1 layer
  of 1B: 0.42 GiB in the heads, 1.05 GiB in the backward, torch's live peak in a layer's
  recomputation); without checkpointing every layer's activations of every pass are held.

With `--cpu`, the parts only a CPU run has (each measured at Janus-Pro-1B width, bf16):
- kernels: oneDNN's primitive cache (up to 1,024 kernels, one per matrix shape; decoding makes a
  new shape at every step) and the library code the step touches first: 0.58 GiB from the first
  rollout on, whatever the depth (measured at 1 layer of 1B: 0.62 GiB in stage 1 less its KV);
- attention copies in the rollout: CPU bf16 batched products copy the strided keys and values of
  the layer they attend, keys and values of every row over its slots, one layer at a time;
- the process baseline (interpreter and libraries, `--baseline-gib`) for absolute peaks.
glibc's retention of freed heap (5-8 GiB at 1 and 2 layers of 1B before it was limited) is not
modelled: `gotr1 grpo` on CPU limits it for models of 100M parameters or more
(`gotr1.train.memory.limit_heap_retention_for`).

Peak = weights + LoRA state + the larger of rollout and update (the KV cache is freed before the
update) + on CPU the kernels and the baseline. `--measured` reads the phase peaks GRPO logged
(memory/rollout_peak_gib, memory/update_peak_gib) from a rehearsal JSON or a train_log.jsonl, or
a `benchmarks/grpo_step.py` record (compared above the memory in use before the step), and prints
the prediction's error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

GIB = 2**30
LOGITS_CHUNK_ELEMENTS = 1 << 24  # gotr1.policy.logprobs' default
LAYER_HIDDEN_TENSORS = 10  # norms, q/k/v, attention output, o_proj, residuals, down_proj
LAYER_INTERMEDIATE_TENSORS = 4  # gate, up, act(gate), act(gate) * up
LORA_HIDDEN_INPUTS = 6  # float32 inputs of the adapters on q, k, v, o, gate, up
LORA_INTERMEDIATE_INPUTS = 1  # and on down
HEAD_LOGIT_COPIES_GUIDED = 8  # branches' logits, their mix, log-softmax, and the gradients
HEAD_LOGIT_COPIES = 4
VQ_DECODE_BATCH = 16  # gotr1.policy.rollout.decode_images
VQ_DECODE_TENSORS = 4  # full-resolution feature maps live at once, per image
CPU_KERNELS_GIB = 0.58  # oneDNN primitive cache + library code touched, measured at 1B width


@dataclasses.dataclass
class StepShape:
    """The settings of one GRPO step on one process that memory depends on."""

    rollouts: int  # prompts on this process x N
    micro_batch_rows: int  # rows of one update pass (rollouts / gradient_accumulation_steps)
    chain_tokens: int  # the chain cap
    prompt_tokens: int = 48  # chat template + caption
    guided: bool = True  # guided image log-probs: unconditional rows in the update too
    plan_guidance: bool = False  # plan_cfg_weight set: a prompt-only row set as well
    checkpointing: bool = True
    weight_bytes: int = 2  # bf16
    activation_bytes: int = 2  # bf16 (autocast or bf16 weights)
    lora_r: int | None = 32  # None: full fine-tuning (not modelled here)


def model_sizes(preset: str, layers: int | None = None) -> dict[str, Any]:
    """Parameter count and the shapes memory depends on, from the preset built on meta."""
    from gotr1.policy.presets import build_model, get_preset

    config = get_preset(preset)
    if layers:
        config = dataclasses.replace(config, text=dict(config.text, num_hidden_layers=layers))
    model = build_model(config, device="meta")
    text = config.text
    heads = text["num_attention_heads"]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": text["num_hidden_layers"],
        "hidden": text["hidden_size"],
        "intermediate": text["intermediate_size"],
        "kv_width": text.get("num_key_value_heads", heads) * text["hidden_size"] // heads,
        "vocab": text["vocab_size"],
        "image_vocab": config.vq["num_embeddings"],
        "image_tokens": config.num_image_tokens,
        "image_size": config.image_size,
        "vq_channels": config.vq["base_channels"],
    }


def lora_parameters(sizes: dict[str, Any], r: int) -> int:
    """LoRA r on q, k, v, o, gate, up, down of every layer (the recipe's target modules)."""
    h, i, kv = sizes["hidden"], sizes["intermediate"], sizes["kv_width"]
    per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
    return per_layer * sizes["layers"]


def predict(
    sizes: dict[str, Any], shape: StepShape, cpu: bool = False, baseline_gib: float = 0.0
) -> dict[str, float]:
    """Each part of the step's memory and the predicted peaks, in GiB."""
    n, L, h, i = shape.rollouts, sizes["layers"], sizes["hidden"], sizes["intermediate"]
    k = sizes["image_tokens"]
    length = shape.prompt_tokens + shape.chain_tokens + k
    weights = sizes["parameters"] * shape.weight_bytes
    lora = shape.lora_r and lora_parameters(sizes, shape.lora_r)
    kv_per_token = L * 2 * sizes["kv_width"] * shape.weight_bytes
    cache_tokens = n * length + n * k + (shape.prompt_tokens + shape.chain_tokens)
    if shape.plan_guidance:  # prompt-only rows share no prefix: a cache as large as the rows'
        cache_tokens += n * length
    kv_cache = kv_per_token * cache_tokens + 2 * n * sizes["vocab"] * 4
    vq_decode = (
        min(n, VQ_DECODE_BATCH)
        * VQ_DECODE_TENSORS
        * sizes["vq_channels"]
        * sizes["image_size"] ** 2
        * shape.weight_bytes
    )
    passes = 1 + shape.guided + (shape.guided and shape.plan_guidance)
    pass_tokens = shape.micro_batch_rows * length
    layer = pass_tokens * (LAYER_HIDDEN_TENSORS * h + LAYER_INTERMEDIATE_TENSORS * i)
    layer *= shape.activation_bytes
    if shape.lora_r:  # PEFT casts each adapted projection's input to the adapters' float32
        lora_inputs = pass_tokens * (LORA_HIDDEN_INPUTS * h + LORA_INTERMEDIATE_INPUTS * i) * 4
    else:
        lora_inputs = 0
    if shape.checkpointing:
        held = L * passes * pass_tokens * h * shape.activation_bytes + 2 * layer
    else:
        held = L * passes * layer + layer
    copies = HEAD_LOGIT_COPIES_GUIDED if shape.guided else HEAD_LOGIT_COPIES
    heads = copies * LOGITS_CHUNK_ELEMENTS * 4
    parts = {
        "weights": weights / GIB,
        "lora_state": (16 * lora if lora else 0) / GIB,
        "rollout_kv_cache": kv_cache / GIB,
        "rollout_vq_decode": vq_decode / GIB,
        "update_layer_inputs": (held - 2 * layer) / GIB if shape.checkpointing else held / GIB,
        "update_layer_recompute": ((2 if shape.checkpointing else 1) * layer + lora_inputs) / GIB,
        "update_heads": heads / GIB,
        "cpu_kernels": CPU_KERNELS_GIB if cpu else 0.0,
        "cpu_attention_copies": (2 * n * sizes["kv_width"] * (length + k) * shape.weight_bytes)
        / GIB
        if cpu
        else 0.0,
        "baseline": baseline_gib,
    }
    rollout = max(
        parts["rollout_kv_cache"] + parts["cpu_attention_copies"], parts["rollout_vq_decode"]
    )
    # The heads' chunks are done (forward and backward) before the layers' backward begins.
    update = parts["update_layer_inputs"] + max(
        parts["update_layer_recompute"], parts["update_heads"]
    )
    optimizer_state = (12 * lora if lora else 0) / GIB  # LoRA gradients and AdamW moments
    # Above the memory in use before the step (the weights and LoRA adapters loaded):
    parts["rollout_above_start"] = parts["cpu_kernels"] + rollout
    parts["update_above_start"] = parts["cpu_kernels"] + optimizer_state + update
    loaded = parts["weights"] + (4 * lora if lora else 0) / GIB + baseline_gib
    parts["rollout_peak"] = loaded + parts["rollout_above_start"]
    parts["update_peak"] = loaded + parts["update_above_start"]
    parts["peak"] = max(parts["rollout_peak"], parts["update_peak"])
    return parts


def measured_peaks(path: Path) -> dict[str, float]:
    """The largest logged rollout and update peaks of a rehearsal JSON or a train_log.jsonl
    (absolute), or of a grpo_step.py record (``*_above_start``: above the memory before the step)."""
    text = path.read_text()
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        record = json.loads(text)
        if "peak_memory_gib" in record:  # benchmarks/grpo_step.py
            peaks = record["peak_memory_gib"]
            return {
                "rollout_above_start": peaks["rollout_peak"] - peaks["before_step"],
                "update_above_start": peaks["update_peak"] - peaks["before_step"],
            }
        rows = record["grpo"]["train_log"]
    return {
        "rollout_peak": max(r["memory/rollout_peak_gib"] for r in rows),
        "update_peak": max(r["memory/update_peak_gib"] for r in rows),
    }


def main() -> None:
    """Print the prediction (and its error against a measurement) as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="janus-pro-7b")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--prompts", type=int, default=1, help="prompts on this process")
    parser.add_argument("--num-generations", type=int, default=16)
    parser.add_argument("--micro-batch-rows", type=int, default=4)
    parser.add_argument("--chain-tokens", type=int, default=600)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--conditional", action="store_true", help="conditional image log-probs")
    parser.add_argument(
        "--plan-guidance", action="store_true", help="two-condition guidance (plan_cfg_weight)"
    )
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument(
        "--cpu", action="store_true", help="add the CPU-only parts and the process baseline"
    )
    parser.add_argument("--baseline-gib", type=float, default=0.4)
    parser.add_argument("--measured", type=Path, default=None)
    args = parser.parse_args()
    sizes = model_sizes(args.preset, args.layers)
    shape = StepShape(
        rollouts=args.prompts * args.num_generations,
        micro_batch_rows=args.micro_batch_rows,
        chain_tokens=args.chain_tokens,
        prompt_tokens=args.prompt_tokens,
        guided=not args.conditional,
        plan_guidance=args.plan_guidance,
        checkpointing=not args.no_checkpointing,
        lora_r=args.lora_r,
    )
    parts = predict(sizes, shape, args.cpu, args.baseline_gib if args.cpu else 0.0)
    record: dict[str, Any] = {
        "preset": args.preset,
        "sizes": sizes,
        "shape": dataclasses.asdict(shape),
        "predicted_gib": {k: round(v, 2) for k, v in parts.items()},
    }
    if args.measured:
        measured = measured_peaks(args.measured)
        record["measured_gib"] = {k: round(v, 2) for k, v in measured.items()}
        record["error"] = {k: f"{parts[k] / v - 1:+.0%}" for k, v in measured.items()}
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
