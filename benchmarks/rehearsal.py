"""The whole GoT-R1 recipe at a preset's shape, through the commands and files a user would use.

    python benchmarks/rehearsal.py --preset janus-pro-1b             # full depth (CPU: ~1 h)
    python benchmarks/rehearsal.py --preset janus-pro-7b --layers 2  # 7B width, two layers

Random weights, no download. Every stage is the real command in its own process, so each one's
time and peak memory (max RSS on CPU, CUDA's allocator peak on GPU) is its own:

1. ``init``: a random model of the preset saved as a plain HF folder (the world tokenizer with
   the GoT markup stands in for DeepSeek's; the vocabulary keeps the preset's size).
2. ``sft``: ``gotr1 sft --config configs/sft-janus-pro-1b.yaml`` on a GoT-format JSONL set of a
   few rows with images on disk at the model's resolution. Where full fine-tuning's float32
   weights and AdamW state cannot fit the machine, the weights and optimizer state are bf16
   (every parameter the recipe trains is still trained); the JSON says which was chosen and why.
3. ``grpo``: ``gotr1 grpo --config configs/grpo-janus-pro-7b.yaml`` from the SFT folder, LoRA,
   the full image-token count, the recipe's chain cap, guided image log-probs, gradient
   checkpointing, bf16 autocast where the device runs it natively, one prompt of N samples, the
   judge over the OpenAI-compatible HTTP API of a stand-in server on loopback that answers as a
   vLLM server of Qwen2.5-VL would (varied scores, boxes, yes/no with log-probs), a checkpoint.
4. ``grpo-resume``: the same command one step further with ``--resume``.
5. ``eval-compbench`` / ``eval-geneval``: ``gotr1 eval`` on a handful of prompts into the
   official layouts, scored over the same server.
6. ``plain-draw``: the SFT folder and the GRPO adapter loaded with transformers' and PEFT's own
   classes (``JanusForConditionalGeneration``, ``PeftModel``), each drawing an image.

Writes ``benchmarks/results/rehearsal-<preset>[-<layers>l]-<device>.json`` after every stage, so
a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [
    "a green bench and a red car",
    "a dog on the left of a cat",
    "three blue balls",
    "a yellow book on top of a wooden table",
]


# --- a stand-in for a vLLM server of Qwen2.5-VL ---------------------------------------------


class StandInJudge:
    """An OpenAI-compatible ``/v1/chat/completions`` server on loopback that answers the judge's
    questions in the shapes Qwen2.5-VL behind vLLM gives: ``{"score": k}`` inside the question's
    band, ``[{"bbox_2d": [...], "label": ...}]`` in the sent image's pixels, "Yes"/"No" with
    first-token ``top_logprobs``, a colour from the offered list. Answers are a hash of the
    question and image, so they vary across samples (non-zero advantages) and repeat exactly."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                payload = json.dumps(judge.answer(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The server root a gotr1 judge is pointed at."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StandInJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat completion for one request."""
        from PIL import Image

        content = body["messages"][-1]["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        text = " ".join(p.get("text", "") for p in parts if p.get("type") == "text")
        urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
        raw = base64.b64decode(urls[0].split(",", 1)[1]) if urls else b""
        digest = hashlib.sha256(text.encode() + raw).digest()
        logprobs = None
        if body.get("logprobs"):
            kind = "yes-no"
            p_yes = 0.05 + 0.9 * digest[0] / 255
            reply = "Yes" if p_yes >= 0.5 else "No"
            top = [
                {"token": "Yes", "logprob": _log(p_yes)},
                {"token": "No", "logprob": _log(1 - p_yes)},
            ]
            top.sort(key=lambda t: -t["logprob"])
            first = {"token": reply, "logprob": top[0]["logprob"], "top_logprobs": top}
            logprobs = {"content": [first]}
        elif (band := re.search(r"Score from (\d+) to (\d+)", text)) is not None:
            kind = "score"
            lo, hi = int(band.group(1)), int(band.group(2))
            reply = json.dumps({"score": lo + digest[0] % (hi - lo + 1)})
        elif (target := re.match(r"Locate the (.+?), report the bbox", text)) is not None:
            kind = "ground"
            width, height = Image.open(io.BytesIO(raw)).size if raw else (1000, 1000)
            x1, y1 = digest[0] * width // 512, digest[1] * height // 512
            x2 = x1 + 1 + digest[2] * (width - x1 - 1) // 255
            y2 = y1 + 1 + digest[3] * (height - y1 - 1) // 255
            reply = json.dumps([{"bbox_2d": [x1, y1, x2, y2], "label": target.group(1)}])
        elif (offered := re.search(r"one word from: (.+)\.", text)) is not None:
            kind = "colour"
            words = [w.strip() for w in offered.group(1).split(",")]
            reply = words[digest[0] % len(words)]
        else:
            kind = "other"
            reply = "I cannot tell."
        with self.lock:
            self.counts[kind] += 1
        return {
            "id": f"chatcmpl-{digest[:6].hex()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "Qwen/Qwen2.5-VL-7B-Instruct"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "logprobs": logprobs,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


def _log(p: float) -> float:
    import math

    return math.log(max(p, 1e-9))


# --- the stages' own work (run in child processes) --------------------------------------------


def preset_at_depth(name: str, layers: int | None) -> Any:
    """The preset, with ``layers`` text layers when given (every width kept)."""
    from gotr1.policy.presets import get_preset

    preset = get_preset(name)
    if layers is None:
        return preset
    text = dict(preset.text, num_hidden_layers=layers)
    return dataclasses.replace(preset, text=text, name=f"{preset.name}-{layers}l")


def init_model(preset_name: str, layers: int | None, folder: Path) -> dict[str, Any]:
    """Build a random model of the preset with the world tokenizer and save it as an HF folder."""
    from gotr1.policy.io import new_policy, save_pretrained

    preset = preset_at_depth(preset_name, layers)
    # The preset's vocabulary, as Janus-Pro's (larger than its tokenizer, and than the world's).
    model, processor = new_policy(preset, vocab_size=preset.text["vocab_size"])
    save_pretrained(model, processor, folder)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.text_config.vocab_size,
        "tokenizer_length": len(processor.tokenizer),
        "image_size": preset.image_size,
        "image_tokens": preset.num_image_tokens,
    }


def write_got_set(folder: Path, image_size: int) -> Path:
    """A GoT-format JSONL set: prompt, chain with boxes on the 0-1000 grid, image beside it."""
    from PIL import Image, ImageDraw

    from gotr1.chain import format_chain

    colours = {"green": (40, 160, 60), "red": (200, 40, 40), "blue": (40, 70, 200)}
    rows = [
        ("a green bench and a red car", [("green bench", (80, 500, 450, 800)), ("red car", (520, 420, 930, 760))]),
        ("a blue ball on the left of a red car", [("blue ball", (60, 400, 340, 680)), ("red car", (420, 380, 950, 760))]),
        ("a red bench above a green ball", [("red bench", (200, 80, 800, 380)), ("green ball", (360, 520, 640, 900))]),
        ("two blue balls", [("blue ball", (100, 300, 420, 620)), ("blue ball", (560, 320, 880, 640))]),
    ]  # fmt: skip
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (prompt, objects) in enumerate(rows):
        image = Image.new("RGB", (image_size, image_size), (235, 235, 225))
        draw = ImageDraw.Draw(image)
        for name, box in objects:
            pixels = [v * image_size // 1000 for v in box]
            draw.rectangle(pixels, fill=colours[name.split()[0]])
        image.save(folder / "images" / f"{index}.png")
        chain = format_chain(objects)
        lines.append(json.dumps({"prompt": prompt, "chain": chain, "image": f"images/{index}.png"}))
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def plain_draw(base: Path, adapter: Path, out: Path, dtype_name: str) -> dict[str, Any]:
    """Draw one image from the full folder and one through the adapter, with transformers' and
    PEFT's own classes only."""
    import numpy as np
    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import JanusForConditionalGeneration, JanusProcessor

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    processor = JanusProcessor.from_pretrained(base)
    inputs = processor(text=[PROMPTS[0]], generation_mode="image", return_tensors="pt").to(device)
    result: dict[str, Any] = {}
    model = JanusForConditionalGeneration.from_pretrained(base, dtype=dtype).to(device).eval()
    for name in ("sft-folder", "grpo-adapter"):
        if name == "grpo-adapter":
            model = PeftModel.from_pretrained(model, str(adapter)).eval()
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            tokens = model.generate(**inputs, generation_mode="image", guidance_scale=5.0)
            decoder = model.get_base_model() if hasattr(model, "get_base_model") else model
            pixels = decoder.decode_image_tokens(tokens)
        array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
        Image.fromarray(np.ascontiguousarray(array)).save(out / f"{name}.png")
        result[name] = {
            "image_tokens": int(tokens.shape[1]),
            "pixels": list(pixels.shape[1:3]),
            "seconds": round(time.perf_counter() - start, 1),
        }
    return result


def child_main(kind: str, result_file: Path, argv: list[str]) -> int:
    """Run one stage in this process and write its result (and CUDA peak) to ``result_file``."""
    import torch

    code = 0
    extra: dict[str, Any] = {}
    if kind == "gotr1":
        from gotr1.cli import main as gotr1_main

        code = gotr1_main(argv)
    elif kind == "init":
        extra = init_model(argv[0], int(argv[1]) if argv[1] != "-" else None, Path(argv[2]))
    elif kind == "plain":
        extra = plain_draw(Path(argv[0]), Path(argv[1]), Path(argv[2]), argv[3])
    if torch.cuda.is_available():
        extra["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    result_file.write_text(json.dumps(extra))
    return code


# --- the parent: stages, timing, memory, JSON ------------------------------------------------


def run_stage(name: str, kind: str, argv: list[str], work: Path, log: Path) -> dict[str, Any]:
    """Run one stage in a child process; its wall time, CPU time, peak memory and result."""
    result_file = work / f".{name}.result.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(result_file)]
    print(f"[{name}] {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n=== {name}: {' '.join(argv)}\n")
        handle.flush()
        process = subprocess.Popen([*command, "--", *argv], stdout=handle, stderr=handle)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    record: dict[str, Any] = {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "max_rss_gib": round(usage.ru_maxrss / 2**20, 3),  # KiB on Linux
        "exit_code": process.returncode,
    }
    if result_file.is_file():
        record.update(json.loads(result_file.read_text()))
    print(f"[{name}] {json.dumps(record)}", flush=True)
    if process.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(
            f"rehearsal: stage {name} failed ({process.returncode}):\n" + "\n".join(tail)
        )
    return record


def machine() -> dict[str, Any]:
    """What the rehearsal ran on."""
    import torch

    from gotr1.train.precision import cpu_native_bf16

    record: dict[str, Any] = {
        "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_native_bf16()[0],
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
        record["gpu_memory_gib"] = round(
            torch.cuda.get_device_properties(0).total_memory / 2**30, 1
        )
    return record


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _settings_argv(argv: list[str]) -> list[str]:
    """The command line without the folders of one machine (--work, --out) and --keep."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--work", "--out"):
            skip = True
        elif not arg.startswith(("--work=", "--out=")) and arg != "--keep":
            kept.append(arg)
    return kept


def sft_weight_dtype(trainable: int, frozen: int, memory_gib: float) -> tuple[str, str]:
    """float32 weights when full fine-tuning's state fits the memory with a quarter to spare,
    else bf16 weights and optimizer state (every trained parameter still trained)."""
    need = (16 * trainable + 4 * frozen) / 2**30  # weights + grads + AdamW's two moments
    if need <= 0.75 * memory_gib:
        return "float32", f"float32 weights + AdamW state need {need:.1f} GiB of {memory_gib} GiB"
    return "bfloat16", (
        f"float32 weights + AdamW state would need {need:.1f} GiB of {memory_gib} GiB: "
        "bf16 weights, gradients and AdamW state instead (all trained parameters kept)"
    )


def main() -> None:
    """Run every stage of the recipe and write the JSON record."""
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2], Path(sys.argv[3]), sys.argv[5:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="janus-pro-1b")
    parser.add_argument("--layers", type=int, default=None, help="text layers (default: all)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: /tmp)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--sft-steps", type=int, default=2)
    parser.add_argument("--num-generations", type=int, default=4, help="GRPO group size N")
    parser.add_argument("--max-chain-tokens", type=int, default=600, help="GRPO chain cap")
    parser.add_argument("--eval-prompts", type=int, default=2, help="prompts per benchmark")
    parser.add_argument("--eval-chain-tokens", type=int, default=600, help="chain cap of evals")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per stage")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="keep the scratch folder and the JSON of an unfinished run; skip its done stages",
    )
    args = parser.parse_args()

    import torch

    from gotr1.policy.presets import build_model
    from gotr1.train.precision import choose_mixed_precision

    preset = preset_at_depth(args.preset, args.layers)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tag = f"{args.preset}{f'-{args.layers}l' if args.layers else ''}-{device}"
    work = args.work or Path("/tmp") / f"gotr1-rehearsal-{tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    out_json = args.out / f"rehearsal-{tag}.json"
    done: dict[str, Any] = {}
    if args.resume and out_json.is_file() and work.is_dir():
        done = json.loads(out_json.read_text()).get("stages", {})
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "stages.log"

    info = machine()
    memory = info.get("gpu_memory_gib", info["memory_gib"])
    meta = build_model(preset, device="meta")
    frozen_names = ("vqmodel", "vision_model", "aligner")
    frozen = sum(p.numel() for n, p in meta.named_parameters() if n.split(".")[1] in frozen_names)
    trainable = sum(p.numel() for p in meta.parameters()) - frozen
    sft_dtype, sft_dtype_reason = sft_weight_dtype(trainable, frozen, memory)
    precision = choose_mixed_precision("auto", device)
    infer_dtype = "bfloat16" if precision.chosen == "bf16" else "float32"
    threads = ["--threads", str(args.threads)] if args.threads else []
    record: dict[str, Any] = {
        "preset": args.preset,
        "text_layers": preset.text["num_hidden_layers"],
        "device": device,
        "machine": info,
        "mixed_precision": precision.chosen,
        "sft_weights": sft_dtype,
        "sft_weights_reason": sft_dtype_reason,
        "sft_trainable_parameters": trainable,
        "grpo": {
            "lora_r": 32,
            "num_prompts": 1,
            "num_generations": args.num_generations,
            "max_chain_tokens": args.max_chain_tokens,
            "image_tokens": preset.num_image_tokens,
            "image_logprob": "guided",
            "gradient_checkpointing": True,
            "weights": "bfloat16",
            "reward_combination": "sum",
            "reward_combination_reason": (
                "a random model plans no objects, so R_RI is 0 for every sample and the "
                "product is 0: the sum keeps the other components' variation, so the update "
                "sees non-zero advantages"
            ),
        },
        "command": " ".join(["python benchmarks/rehearsal.py", *_settings_argv(sys.argv[1:])]),
        "stages": {},
    }

    def stage(name: str, kind: str, argv: list[str]) -> dict[str, Any]:
        if done.get(name, {}).get("exit_code") == 0:
            record["stages"][name] = done[name]
            return done[name]
        result = run_stage(name, kind, argv, work, log)
        record["stages"][name] = result
        out_json.write_text(json.dumps(record, indent=2) + "\n")
        return result

    init = work / "init"
    data = write_got_set(work / "got", preset.image_size)
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    sft, grpo = work / "sft", work / "grpo"
    stage("init", "init", [args.preset, str(args.layers or "-"), str(init)])
    record["parameters"] = record["stages"]["init"]["parameters"]
    stage("sft", "gotr1", [
        "sft", "--config", str(REPO / "configs" / "sft-janus-pro-1b.yaml"),
        "--model", str(init), "--data", str(data), "--output_dir", str(sft),
        "--max_steps", str(args.sft_steps), "--batch_size", "2",
        "--gradient_accumulation_steps", "1", "--warmup_steps", "0", "--save_steps", "1000",
        "--sample_steps", "0", "--logging_steps", "1", "--dtype", sft_dtype, "--progress", "false",
        *threads,
    ])  # fmt: skip

    with StandInJudge() as judge:
        grpo_args = [
            "grpo", "--config", str(REPO / "configs" / "grpo-janus-pro-7b.yaml"),
            "--model", str(sft / "final"), "--prompts", str(prompts), "--output_dir", str(grpo),
            "--num_prompts", "1", "--num_generations", str(args.num_generations),
            "--gradient_accumulation_steps", "1", "--logprob_micro_batch_size", "2",
            "--max_chain_tokens", str(args.max_chain_tokens), "--mixed_precision", "auto",
            "--judge_base_url", judge.url, "--reward_combination", "sum",
            "--save_steps", "1", "--sample_steps", "0",
            "--report_to", "", "--progress", "false", *threads,
        ]  # fmt: skip
        stage("grpo", "gotr1", [*grpo_args, "--max_steps", "1"])
        stage("grpo-resume", "gotr1", [*grpo_args, "--max_steps", "2", "--resume"])
        record["grpo"]["train_log"] = [
            json.loads(line) for line in (grpo / "train_log.jsonl").read_text().splitlines()
        ]
        evaluation = [
            "--model", str(grpo / "final"), "--limit", str(args.eval_prompts),
            "--images-per-prompt", "2", "--max-chain-tokens", str(args.eval_chain_tokens),
            "--dtype", infer_dtype, "--scorer", "openai", "--judge-url", judge.url,
            "--judge-model", "Qwen/Qwen2.5-VL-7B-Instruct",
        ]  # fmt: skip
        stage("eval-compbench", "gotr1", [
            "eval", "compbench", "--out", str(work / "compbench"),
            "--categories", "color", "spatial", *evaluation,
        ])  # fmt: skip
        stage(
            "eval-geneval",
            "gotr1",
            ["eval", "geneval", "--out", str(work / "geneval"), *evaluation],
        )
        record["judge_requests"] = dict(judge.counts)
    record["official_layouts"] = sorted(
        str(p.relative_to(work))
        for p in [*work.glob("compbench/*/samples"), *work.glob("geneval/[0-9]*/samples")]
    )[:6]
    stage("plain-draw", "plain", [str(sft / "final"), str(grpo / "final"), str(work), infer_dtype])
    record["total_seconds"] = round(sum(s["seconds"] for s in record["stages"].values()), 1)
    out_json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out_json}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
