#!/usr/bin/env bash
# The GPU checks, as one script for a machine with an NVIDIA GPU. Writes logs under $OUT
# (default ./gpu-results). Runs from the repository root without installing the package.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, onnxruntime as o; print('torch', torch.__version__, torch.cuda.is_available()); print('onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$OUT/env.txt"
$PY -m pytest -q -p no:cacheprovider tests/training/test_networks.py tests/training/test_losses.py \
  tests/training/test_augment.py tests/training/test_loop.py tests/training/test_export.py \
  2>&1 | tee "$OUT/pytest.txt"
$PY bench/train_speed.py --iterations 20 2>&1 | tee "$OUT/train_speed.txt"
$PY bench/generator_throughput.py --repeats 10 2>&1 | tee "$OUT/generator_throughput.txt"
