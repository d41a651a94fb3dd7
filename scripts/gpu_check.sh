#!/usr/bin/env bash
# The one-command GPU check, for a machine with an NVIDIA GPU:
#   bash scripts/gpu_check.sh [OUT_DIR]
# Writes the GPU's description and the end-to-end benchmark on CUDA (bench/run.py: the raw model,
# xmr and the naive service, fp16 by `auto`) into OUT_DIR ($OUT, else /tmp). Wheels in .whl/ (for a
# machine that cannot reach a package index) are installed into /tmp/site first.
set -euo pipefail
out=${1:-${OUT:-/tmp}}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 - <<'PY' | tee -a "$out/gpu.txt"
import os, platform, torch
print(platform.platform(), os.cpu_count(), "cores, torch", torch.__version__,
      "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
PY
python3 -m bench.run --device cuda --precision auto --batch 256 --images "${IMAGES:-2048}" \
  --queries "${QUERIES:-500}" --concurrency 1 8 32 --json-out "$out/results-cuda.json" \
  2>&1 | tee "$out/bench-cuda.log"
