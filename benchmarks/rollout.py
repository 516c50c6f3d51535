"""Stage-2 rollout speed: our image-token sampler vs transformers' Janus image generation.

    python benchmarks/rollout.py --preset world-tiny            # CPU, 16 prompts + CFG = 32 rows
    python benchmarks/rollout.py --preset janus-pro-7b --dtype bfloat16   # on a GPU

Both samplers get the same model (random weights of the preset, no download), the same
conditional prefixes (BOS, random text, <begin_of_image>; `--prefix-len` tokens, the length of
prompt + chain at the start of stage 2), the same number of rows and the same CFG weight, and run
interleaved in one process (alternating order); the medians of `--repeats` timed runs are
compared. Each run includes the prefix pass (prefill) and all K image tokens.

- ours: `gotr1.policy.rollout.generate_image_tokens` (static KV cache, CFG pair in one batch,
  Gumbel-max sampling on the device; `--compile` = CUDA graphs of the decode step, CUDA only).
- transformers: `JanusForConditionalGeneration.generate(generation_mode="image")` with
  `guidance_scale` = the CFG weight, `do_sample=True`, no top-k/top-p, its static cache.

Unconditional rows. transformers builds them by replacing every token that is neither BOS nor
<begin_of_image> (matched by id, anywhere) with pad and keeps the conditional attention mask.
PAPER.md (and ours) blanks every token between the leading BOS and the final <begin_of_image>,
attention mask unchanged. For prefixes with BOS only in front and <begin_of_image> only at the
end (as here, and in every rollout) the two are identical; `--check` verifies it by comparing
greedy tokens of both samplers (meaningful in float32: in bfloat16, rounding differences flip
near-tied argmaxes of a random model and the two sequences then diverge; the 2-layer Janus-Pro-1B
shape agrees 100% in float32 with `--text-layers 2`). One more difference: with guidance_scale <= 1 transformers still
doubles the batch; ours runs no unconditional rows at cfg_weight 1.

Roofline. Decoding is memory-bound: each step must read the decoder weights (layers, final norm,
image head, image aligner) and the KV cache of all rows. The bound is
    t_step >= (weight bytes + KV bytes at the mean context length) / bandwidth
for K steps. Bandwidth: `--bandwidth-gbs`, else the spec figure for known GPUs (H100, H200,
A100, L40S), else measured with a large device copy (the default on CPU: read + write bytes of
a 256 MiB clone, best of 5).

Threads: on CPU the default is one torch thread for both samplers. The tiny model's matrices are
too small to gain from a second thread, and on a shared machine OpenMP's spinning threads can make
both samplers many times slower (we saw 40 s runs instead of 1 s with 2 threads under load).

Prints both samplers' image tokens per second, the roofline and, last, `speedup_vs_hf` (ratio of
the wall-clock medians); the JSON under benchmarks/results/ also holds every run, the median of
the per-pair ratios and the process CPU-time ratio (both steadier on a loaded machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from gotr1.policy.presets import build_model, get_preset
from gotr1.policy.rollout import SamplingConfig, SpecialIds, generate_image_tokens, janus_parts

RESULTS = Path(__file__).resolve().parent / "results"

# <begin_of_image> ids: the world tokenizer puts it at 3; Janus-Pro's tokenizer at 100016.
BEGIN_OF_IMAGE_IDS = {"world-tiny": 3, "janus-pro-1b": 100016, "janus-pro-7b": 100016}
DEFAULT_PREFIX_LEN = {"world-tiny": 96, "janus-pro-1b": 256, "janus-pro-7b": 256}

# Peak memory bandwidth (bytes/s) from the vendors' spec sheets, matched on the device name.
GPU_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM5 / "H100 80GB HBM3"
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", default="world-tiny", help="world-tiny|janus-pro-1b|janus-pro-7b"
    )
    parser.add_argument("--prompts", type=int, default=16, help="images per run (rows before CFG)")
    parser.add_argument("--cfg-weight", type=float, default=5.0, help="CFG weight (both samplers)")
    parser.add_argument("--prefix-len", type=int, default=None, help="prompt+chain tokens")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each sampler")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each sampler first")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on GPU)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU, see above)"
    )
    parser.add_argument("--compile", action="store_true", help="CUDA graphs for our decode step")
    parser.add_argument(
        "--bandwidth-gbs",
        type=float,
        default=None,
        help="memory bandwidth in GB/s for the roofline",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the greedy agreement check")
    parser.add_argument(
        "--text-layers", type=int, default=None, help="override the decoder depth (smoke runs)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default under benchmarks/results)")
    parser.add_argument(
        "--allow-large-cpu", action="store_true", help="allow Janus-Pro shapes on CPU (slow, big)"
    )
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_bandwidth(device: torch.device, mib: int = 256) -> float:
    """Bytes/s of a large on-device copy (read + write), best of 5."""
    source = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best


def bandwidth(device: torch.device, override_gbs: float | None) -> tuple[float, str]:
    """(bytes/s, where the figure comes from)."""
    if override_gbs is not None:
        return override_gbs * 1e9, "--bandwidth-gbs"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_BANDWIDTH:
            if key in name:
                return value, f"spec sheet ({key})"
    return measured_bandwidth(device), "measured (256 MiB device copy)"


def roofline(model, rows: int, images: int, prefix_len: int, bytes_per_s: float) -> dict:
    """Memory-bandwidth bound of the decode loop: weights + KV read per step."""
    parts = janus_parts(model)
    lm = parts.language_model
    decoder = list(lm.layers) + [lm.norm, parts.image_head, parts.janus.model.generation_aligner]
    weight_bytes = sum(p.numel() * p.element_size() for m in decoder for p in m.parameters())
    config = lm.config
    head_dim = lm.layers[0].self_attn.head_dim
    element = next(lm.parameters()).element_size()
    steps = parts.num_image_tokens
    mean_context = prefix_len + (steps - 1) / 2
    kv_bytes = 2 * len(lm.layers) * rows * config.num_key_value_heads * head_dim * element
    kv_bytes_per_step = kv_bytes * mean_context
    step_seconds = (weight_bytes + kv_bytes_per_step) / bytes_per_s
    return {
        "weight_bytes_per_step": weight_bytes,
        "kv_bytes_per_step_mean": kv_bytes_per_step,
        "bandwidth_bytes_per_s": bytes_per_s,
        "bound_seconds_per_step": step_seconds,
        "bound_seconds_per_run": step_seconds * steps,
        "bound_image_tokens_per_s": images * steps / (step_seconds * steps),
    }


def main() -> None:
    args = parse_args()
    preset = get_preset(args.preset)
    if args.text_layers:
        text = {**preset.text, "num_hidden_layers": args.text_layers}
        preset = dataclasses.replace(preset, name=f"{preset.name}-{args.text_layers}l", text=text)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if device.type == "cpu" and preset.name.startswith("janus") and not args.allow_large_cpu:
        raise SystemExit(f"{preset.name} on CPU needs --allow-large-cpu (tens of GB of weights)")
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    prefix_len = args.prefix_len or DEFAULT_PREFIX_LEN.get(args.preset, 96)

    model = build_model(preset, seed=args.seed, device=device).to(dtype).eval()
    text = model.config.text_config
    base_name = args.preset if args.preset in BEGIN_OF_IMAGE_IDS else preset.name
    boi = BEGIN_OF_IMAGE_IDS.get(base_name, 3)
    special = SpecialIds(pad=text.pad_token_id, bos=text.bos_token_id, begin_of_image=boi)
    model.generation_config.generation_kwargs = {"boi_token_id": boi}
    model.generation_config.pad_token_id = special.pad
    model.generation_config.bos_token_id = special.bos
    parts = janus_parts(model)
    num_tokens = parts.num_image_tokens

    generator = torch.Generator(device=device).manual_seed(args.seed)
    low = max(special.pad, special.bos, boi, 8) + 1 if base_name == "world-tiny" else 1000
    ids = torch.randint(low, min(text.vocab_size, 100000), (args.prompts, prefix_len))
    ids[:, 0], ids[:, -1] = special.bos, boi
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    rows = args.prompts * (2 if args.cfg_weight != 1.0 else 1)

    def ours(greedy: bool = False) -> torch.Tensor:
        sampling = SamplingConfig(
            cfg_weight=args.cfg_weight,
            image_temperature=0.0 if greedy else 1.0,
            compile_decode=args.compile,
        )
        return generate_image_tokens(parts, ids, mask, sampling, special, generator)[0]

    def hf(greedy: bool = False) -> torch.Tensor:
        sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0)
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_mode="image",
            guidance_scale=args.cfg_weight,
            top_k=None,
            top_p=None,
            **sampling,
        )

    cpu_seconds: dict[str, list[float]] = {"ours": [], "hf": []}

    def timed(name: str, fn) -> float:
        synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = fn()
        synchronize(device)
        assert out.shape == (args.prompts, num_tokens)
        cpu_seconds[name].append(time.process_time() - start_cpu)
        return time.perf_counter() - start

    agreement = None
    if not args.no_check:
        with torch.no_grad():
            agreement = float((ours(greedy=True) == hf(greedy=True)).float().mean())
        print(f"greedy token agreement ours vs transformers: {agreement:.4f}")

    times: dict[str, list[float]] = {"ours": [], "hf": []}
    for repeat in range(args.warmup + args.repeats):
        order = (("ours", ours), ("hf", hf)) if repeat % 2 == 0 else (("hf", hf), ("ours", ours))
        for name, fn in order:
            seconds = timed(name, fn)
            if repeat >= args.warmup:
                times[name].append(seconds)
            else:
                cpu_seconds[name].pop()
        if repeat >= args.warmup:
            print(
                f"run {repeat - args.warmup}: ours {times['ours'][-1]:.3f}s, hf {times['hf'][-1]:.3f}s"
            )

    images_per_run = args.prompts * num_tokens
    median = {k: statistics.median(v) for k, v in times.items()}
    tokens_per_s = {k: images_per_run / v for k, v in median.items()}
    bytes_per_s, bandwidth_source = bandwidth(device, args.bandwidth_gbs)
    bound = roofline(model, rows, args.prompts, prefix_len, bytes_per_s)
    speedup = median["hf"] / median["ours"]
    # Robust to load changing during the run: the ratio within each (adjacent) pair of runs.
    paired = statistics.median(h / o for h, o in zip(times["hf"], times["ours"], strict=True))
    cpu_median = {k: statistics.median(v) for k, v in cpu_seconds.items()}
    fraction = tokens_per_s["ours"] / bound["bound_image_tokens_per_s"]
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )

    result = {
        "benchmark": "rollout_stage2",
        "preset": preset.name,
        "device": device.type,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "dtype": dtype_name,
        "images_per_run": args.prompts,
        "rows_including_cfg": rows,
        "cfg_weight": args.cfg_weight,
        "prefix_len": prefix_len,
        "image_tokens": num_tokens,
        "repeats": args.repeats,
        "compile": args.compile,
        "seconds": times,
        "median_seconds": median,
        "process_cpu_seconds": cpu_seconds,
        "median_process_cpu_seconds": cpu_median,
        "speedup_vs_hf_paired_median": paired,
        "speedup_vs_hf_cpu_time": cpu_median["hf"] / cpu_median["ours"],
        "image_tokens_per_s": tokens_per_s,
        "greedy_token_agreement": agreement,
        "roofline": {**bound, "bandwidth_source": bandwidth_source},
        "fraction_of_roofline": fraction,
        "hf_fraction_of_roofline": tokens_per_s["hf"] / bound["bound_image_tokens_per_s"],
        "speedup_vs_hf": speedup,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    slug = device_name.replace(" ", "-").lower() if device.type == "cuda" else "cpu"
    out = Path(args.out) if args.out else RESULTS / f"rollout-{preset.name}-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"preset {preset.name}, {device_name}, {dtype_name}, {torch.get_num_threads()} threads")
    print(f"{args.prompts} images x {num_tokens} tokens, {rows} rows with CFG {args.cfg_weight}")
    for name in ("ours", "hf"):
        print(f"{name:5s} median {median[name]:.3f}s  {tokens_per_s[name]:9.1f} image tokens/s")
    print(
        f"roofline ({bandwidth_source}, {bytes_per_s / 1e9:.1f} GB/s): "
        f"{bound['bound_image_tokens_per_s']:.1f} image tokens/s; "
        f"fraction_of_roofline {fraction:.3f}"
    )
    print(
        f"paired-run speedup median {paired:.2f}; "
        f"process CPU time ratio {cpu_median['hf'] / cpu_median['ours']:.2f}"
    )
    print(f"wrote {out}")
    print(f"speedup_vs_hf: {speedup:.2f}")


if __name__ == "__main__":
    main()
