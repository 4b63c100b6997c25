#!/usr/bin/env bash
# The GPU checks, as one script for a machine with an NVIDIA GPU: at most 8 minutes, everything
# written under $OUT (default ./gpu-results). Run from the repository root; needs no install.
#
#   bash bench/gpu.sh              # OUT=DIR PYTHON=python3 MODELS=DIR (a repository with a labeller)
#   bash bench/gpu.sh --dry-run    # the CPU, tiny sizes, seconds: the test suite checks it starts
#
# Steps, most telling first, each under its own time limit (they sum to < 8 min, so a GPU
# session's budget holds even when a step hangs):
#   env.txt               GPU, driver, torch, onnxruntime and which execution providers exist
#   model_throughput.*    gan generator, compose refiner, labeller: img/s, batches 1-256, torch
#                         fp32 / bf16, onnxruntime CUDA / TensorRT when installed, each also
#                         with an fp16 copy of the model (its max difference to fp32 listed)
#   throughput.*          labelled img/s end to end, both recipes (bench/throughput.py direct)
#   train_speed.txt       s/iteration per profile, fp32 vs bf16
#   pytest.txt            the CUDA-sensitive training tests
#   summary.txt           each step's exit status; the script exits non-zero if any failed
set -uo pipefail
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
OUT=${OUT:-gpu-results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if ((DRY_RUN)); then
  export CUDA_VISIBLE_DEVICES="" BOXGEN_DEVICE=cpu  # the same code paths, on the CPU
fi
: > "$OUT/summary.txt"
failed=0

# step NAME SECONDS LOG COMMAND...: run under a time limit, log, record the exit status.
step() {
  local name=$1 limit=$2 log=$3 started=$SECONDS rc
  shift 3
  echo "== $name (limit ${limit}s)"
  timeout -k 5 "$limit" "$@" > "$OUT/$log" 2>&1
  rc=$?
  tail -n 25 "$OUT/$log"
  ((rc == 124)) && echo "$name: timed out after ${limit}s" >> "$OUT/$log"
  echo "$name: exit $rc, $((SECONDS - started)) s" | tee -a "$OUT/summary.txt"
  ((rc == 0)) || failed=1
}

env_report() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 \
    || echo "nvidia-smi: not found (no NVIDIA driver)"
  "$PY" - <<'EOF'
import onnxruntime as ort
import torch

print("torch", torch.__version__, "CUDA", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
available = ort.get_available_providers()
print("onnxruntime", ort.__version__, available)
for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
    print(p, "installed" if p in available else "NOT installed")
if "CUDAExecutionProvider" not in available:
    print("onnxruntime-gpu is absent: the onnxruntime rows are CPU-only or missing; the torch "
          "path is measured")
EOF
}

export -f env_report  # `timeout` runs programs, not functions: hand it to a bash
export PY
models=()
[[ -n "${MODELS:-}" ]] && models=(--models "$MODELS")
if ((DRY_RUN)); then
  step env 30 env.txt bash -c env_report
  step model_throughput 60 model_throughput.log \
    "$PY" bench/model_throughput.py --dry-run --out "$OUT/model_throughput.md"
  step throughput 120 throughput.log \
    "$PY" bench/throughput.py --quick --modes direct "${models[@]}" --out "$OUT/throughput.md"
  step train_speed 60 train_speed.txt "$PY" bench/train_speed.py --profiles tiny --iterations 1
  echo "pytest: skipped in a dry run (the suite runs these tests itself)" > "$OUT/pytest.txt"
else
  step env 20 env.txt bash -c env_report
  step model_throughput 170 model_throughput.log \
    "$PY" bench/model_throughput.py --budget 130 --out "$OUT/model_throughput.md"
  step throughput 150 throughput.log \
    "$PY" bench/throughput.py --modes direct "${models[@]}" --out "$OUT/throughput.md"
  step train_speed 60 train_speed.txt "$PY" bench/train_speed.py --iterations 20
  step pytest 70 pytest.txt "$PY" -m pytest -q -p no:cacheprovider tests/training/test_networks.py \
    tests/training/test_losses.py tests/training/test_augment.py tests/training/test_loop.py \
    tests/training/test_export.py
fi
echo "results in $OUT"
exit $failed
