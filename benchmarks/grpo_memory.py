"""Predicted peak memory of one GRPO step, by part, for a preset and the step's settings.

    python benchmarks/grpo_memory.py --preset janus-pro-7b --num-generations 16 --micro-batch-rows 4
    python benchmarks/grpo_memory.py --preset janus-pro-1b --num-generations 4 --micro-batch-rows 4 \
        --cpu --measured benchmarks/results/rehearsal-janus-pro-1b-cpu.json

Arithmetic only (the model is built on the meta device for its parameter count). The parts follow
what gotr1's step holds (gotr1.policy.rollout, gotr1.policy.logprobs, gotr1.train.grpo):

- weights: every parameter in the weights' dtype;
- LoRA state: the adapters in float32 (PEFT's default) with their gradients and AdamW's two
  moments, 16 bytes a parameter;
- rollout: the static KV cache of stage 2, the conditional rows over prompt + chain cap + image
  tokens and the unconditional rows over the image tokens after one shared prefix, plus one
  decode step's logits (with two-condition guidance, `plan_cfg_weight`, the prompt-only rows'
  cache as well: as large as the conditional rows');
- update: with gradient checkpointing every layer's input of the micro-batch's sequences (twice
  the rows with guided image log-probs, as the unconditional rows run too; three times with
  two-condition guidance), plus one layer's activations and their gradients while it is
  recomputed (10 hidden-wide and 4 intermediate-wide tensors per token, the Llama layer's saved
  tensors), plus the heads' chunked logits (at most 2^24 floats a chunk, three copies); without
  checkpointing every layer's activations are held.

Peak = weights + LoRA state + the larger of rollout and update (the KV cache is freed before the
update), + the process baseline on CPU (interpreter and libraries). `--measured` reads the
phase peaks GRPO logged (memory/rollout_peak_gib, memory/update_peak_gib) from a rehearsal JSON
or a train_log.jsonl and prints the prediction's error.
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
    }


def lora_parameters(sizes: dict[str, Any], r: int) -> int:
    """LoRA r on q, k, v, o, gate, up, down of every layer (the recipe's target modules)."""
    h, i, kv = sizes["hidden"], sizes["intermediate"], sizes["kv_width"]
    per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
    return per_layer * sizes["layers"]


def predict(sizes: dict[str, Any], shape: StepShape, baseline_gib: float = 0.0) -> dict[str, float]:
    """Each part of the step's memory and the predicted peak, in GiB."""
    n, L, h, i = shape.rollouts, sizes["layers"], sizes["hidden"], sizes["intermediate"]
    k = sizes["image_tokens"]
    length = shape.prompt_tokens + shape.chain_tokens + k
    weights = sizes["parameters"] * shape.weight_bytes
    lora = 16 * lora_parameters(sizes, shape.lora_r) if shape.lora_r else 0
    kv_per_token = L * 2 * sizes["kv_width"] * shape.weight_bytes
    cache_tokens = n * length + n * k + (shape.prompt_tokens + shape.chain_tokens)
    if shape.plan_guidance:  # prompt-only rows share no prefix: a cache as large as the rows'
        cache_tokens += n * length
    rollout = kv_per_token * cache_tokens + 2 * n * sizes["vocab"] * 4
    sequences = shape.micro_batch_rows * (1 + shape.guided + (shape.guided and shape.plan_guidance))
    token_rows = sequences * length
    layer = token_rows * (LAYER_HIDDEN_TENSORS * h + LAYER_INTERMEDIATE_TENSORS * i)
    layer *= shape.activation_bytes
    if shape.checkpointing:
        held = L * token_rows * h * shape.activation_bytes + 2 * layer
    else:
        held = L * layer + layer
    heads = 3 * LOGITS_CHUNK_ELEMENTS * 4 + token_rows * h * 4  # logits chunks, final hidden
    update = held + heads
    parts = {
        "weights": weights / GIB,
        "lora_state": lora / GIB,
        "rollout_kv_cache": rollout / GIB,
        "update_activations": update / GIB,
        "baseline": baseline_gib,
    }
    fixed = parts["weights"] + parts["lora_state"] + baseline_gib
    parts["rollout_peak"] = fixed + parts["rollout_kv_cache"]
    parts["update_peak"] = fixed + parts["update_activations"]
    parts["peak"] = max(parts["rollout_peak"], parts["update_peak"])
    return parts


def measured_peaks(path: Path) -> dict[str, float]:
    """The largest logged rollout and update peaks of a rehearsal JSON or a train_log.jsonl."""
    text = path.read_text()
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = json.loads(text)["grpo"]["train_log"]
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
        "--cpu", action="store_true", help="add the CPU process baseline (--baseline-gib)"
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
    parts = predict(sizes, shape, args.baseline_gib if args.cpu else 0.0)
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
