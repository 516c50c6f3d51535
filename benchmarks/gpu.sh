#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md and docs/training.md in one run on one NVIDIA GPU
# (H100 or H200; under 8 minutes there), random weights, no download:
#   1. rollout speed, ours vs transformers' Janus image generation, with the memory-bandwidth
#      bound, at Janus-Pro-1B and Janus-Pro-7B shape (bf16, 16 images + CFG rows);
#   2. one GRPO step at Janus-Pro-7B: LoRA r = 32, N = 16, the 600-token chain cap, guided image
#      log-probs, gradient checkpointing, bf16 -- the CUDA peak that checks the memory prediction
#      (python benchmarks/grpo_memory.py --preset janus-pro-7b --num-generations 16);
#   3. the whole recipe at Janus-Pro-1B (benchmarks/rehearsal.py), time and CUDA peak per stage.
# Each JSON names the GPU model and lands in benchmarks/results/ (or $OUT), ready to commit.
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python}
mkdir -p "$OUT"
"$PY" - <<'EOF'
import torch
if not torch.cuda.is_available():
    raise SystemExit("benchmarks/gpu.sh needs a CUDA GPU")
print("GPU:", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
step() {  # name, time limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    local start=$SECONDS
    timeout "$limit" "$@" || echo "!! $name failed or ran out of time (exit $?)"
    echo "== $name took $((SECONDS - start)) s"
}
step rollout-1b 90 "$PY" benchmarks/rollout.py --preset janus-pro-1b --dtype bfloat16 \
    --repeats 3 --out "$OUT/rollout-janus-pro-1b-cuda.json"
step rollout-7b 120 "$PY" benchmarks/rollout.py --preset janus-pro-7b --dtype bfloat16 \
    --repeats 3 --no-check --out "$OUT/rollout-janus-pro-7b-cuda.json"
step grpo-step-7b 120 "$PY" benchmarks/grpo_step.py --preset janus-pro-7b --lora \
    --gradient-checkpointing --prompts 1 --num-generations 16 --max-chain-tokens 600 \
    --micro-batch-size 4 --dtype bfloat16 --out "$OUT"
step rehearsal-1b 180 "$PY" benchmarks/rehearsal.py --preset janus-pro-1b \
    --eval-chain-tokens 64 --out "$OUT"
