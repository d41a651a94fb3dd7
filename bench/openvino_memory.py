"""What OpenVINO holds in memory for one model, by how its weights are given to it.

    .venv/bin/python -m bench.openvino_memory --json-out bench/openvino-memory-cpu.json

Each variant runs in a fresh process: the model is loaded from a warm runtime cache (as every
start after the first), every batch and text-length bucket is encoded once, and the process's
resident memory is read from /proc: all of it, the anonymous part, and the part that is mapped
files. Variants: PyTorch (the baseline), OpenVINO from fp32 weights and from fp16 weights, each
with the mapped graphs handed back after the first inference (as the server does) and without.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.report import benchmark_parser, emit
from bench.run import REPO

VARIANTS = {
    "torch": ("torch", "fp32", True),
    "openvino, fp32 weights, paged out": ("openvino", "fp32", True),
    "openvino, fp32 weights, kept": ("openvino", "fp32", False),
    "openvino, fp16 weights, paged out": ("openvino", "fp16", True),
    "openvino, fp16 weights, kept": ("openvino", "fp16", False),
}

CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
import models.runtimes as runtimes
from app.services.threads import inference_pool
from models import OpenClipEncoder

model, pretrained, precision, runtime, weights, page_out, cache = sys.argv[1:8]
runtimes.weight_formats = lambda *args: (weights,)
if page_out != "True":
    runtimes.page_out_mappings = lambda folder: 0

def status():
    fields = {"VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}
    lines = Path("/proc/self/status").read_text().splitlines()
    return {fields[k]: int(v.split()[0]) // 1024 for k, v in (l.split(":") for l in lines)
            if k in fields}

def run():
    encoder = OpenClipEncoder.load(model, pretrained, "cpu", None, precision, runtime, Path(cache))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    prepared = [encoder.prepare_image(image) for _ in range(32)]
    for n in (1, 2, 4, 8, 16, 32):
        encoder.encode_prepared(prepared[:n])
        for words in (2, 12, 40):
            encoder.encode_texts([("word " * words) + str(i) for i in range(n)])
    return {"runtime": encoder.runtime, "precision": encoder.precision, **status()}

print(json.dumps(inference_pool().submit(run).result()))
"""


def measure(args: Any, variant: tuple[str, str, bool], cache: Path) -> dict[str, Any]:
    runtime, weights, page_out = variant
    command = [sys.executable, "-c", CHILD, args.model, args.pretrained, args.precision]
    command += [runtime, weights, str(page_out), str(cache)]
    output = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        for weights in ("fp32", "fp16"):  # fill the cache: every measured start is a warm one
            measure(args, ("openvino", weights, True), cache)
        report = {name: measure(args, variant, cache) for name, variant in VARIANTS.items()}
    return emit(
        {"model": f"{args.model}/{args.pretrained or 'random-init'}", **report}, args.json_out
    )


if __name__ == "__main__":
    raise SystemExit(main())
