#!/usr/bin/env bash
# The one-command GPU check:
#   bash scripts/gpu_check.sh [OUT_DIR]
# On a machine with an NVIDIA GPU, into OUT_DIR ($OUT, else /tmp):
#   gpu.txt           the GPU, driver, torch and CUDA versions
#   tests-cuda.log    the CUDA tests (tests/models/test_cuda.py)
#   gpu.json          bench.gpu: PyTorch fp16 and bf16, images/s at batches of 32, 128 and 512,
#                     a text query's p50, peak GPU memory; ONNX Runtime's CUDA and TensorRT
#                     providers where the installed ONNX Runtime has them
#   results-cuda.json bench.run on CUDA: the raw model, xmr and the naive service end to end
# About 5 minutes on an H200 (IMAGES and QUERIES size the last part). Without a CUDA device it
# says which parts need one, skips them, and runs bench.gpu on the CPU (one batch size) to
# check the script itself (MODEL picks the model of that check). Wheels in .whl/ (for a machine that cannot reach a package index)
# are installed into /tmp/site first.
set -euo pipefail
out=${1:-${OUT:-/tmp}}
mkdir -p "$out"
python=python3
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
if compgen -G ".whl/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

if ! command -v nvidia-smi > /dev/null 2>&1 \
  || ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA device here: skipping the CUDA tests, bench.gpu on CUDA (with ONNX Runtime's"
  echo "CUDA and TensorRT providers) and bench.run on CUDA; checking bench.gpu on the CPU"
  "$python" -m bench.gpu --device cpu --batches 32 --model "${MODEL:-ViT-B-32}" \
    --json-out "$out/gpu-cpu.json"
  exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$python" - <<'PY' | tee -a "$out/gpu.txt"
import os, platform, torch
print(platform.platform(), os.cpu_count(), "cores, torch", torch.__version__,
      "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
PY
# a failing CUDA test is reported, and the figures are still taken
"$python" -m pytest -q -rs -p no:cacheprovider tests/models/test_cuda.py 2>&1 \
  | tee "$out/tests-cuda.log" || echo "the CUDA tests failed: see tests-cuda.log"
"$python" -m bench.gpu --device cuda --json-out "$out/gpu.json" 2>&1 | tee "$out/bench-gpu.log"
"$python" -m bench.run --device cuda --precision auto --batch 256 --images "${IMAGES:-1024}" \
  --queries "${QUERIES:-300}" --concurrency 1 8 32 --json-out "$out/results-cuda.json" \
  2>&1 | tee "$out/bench-cuda.log"
