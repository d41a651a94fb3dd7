"""What OpenVINO holds in memory for one model, and how fast it runs, by how its weights are given.

    .venv/bin/python -m bench.openvino_memory --json-out bench/openvino-memory-cpu.json

Each variant runs in a fresh process, in a thread set up like the server's inference thread:
the model is loaded from a warm runtime cache (as every start after the first), every batch and
text-length bucket is encoded once, then the process's resident memory is read from /proc (all
of it, the anonymous part, and mapped files), and one text query, one image and batches of 32
are timed. Variants: PyTorch (the baseline), OpenVINO from fp32 weights and from fp16 weights,
each with the mapped graphs handed back after the load's probes (as the server does) and without.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.report import benchmark_parser, emit
from bench.run import REPO
from bench.runtimes import cpu_flags

VARIANTS = {
    "torch": ("torch", "fp32", True),
    "openvino, fp32 weights, paged out": ("openvino", "fp32", True),
    "openvino, fp32 weights, kept": ("openvino", "fp32", False),
    "openvino, fp16 weights, paged out": ("openvino", "fp16", True),
    "openvino, fp16 weights, kept": ("openvino", "fp16", False),
}


def resident_mb() -> dict[str, int]:
    fields = {"VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            found[fields[key]] = int(value.split()[0]) // 1024
    return found


def child(args: Any) -> dict[str, Any]:
    """One variant, in this process: memory after every shape once, then timings."""
    import models.runtimes.selection as runtimes
    from app.services.threads import inference_pool
    from models import OpenClipEncoder
    from models.options import LoadOptions

    runtimes.weight_formats = lambda *_: (args.weights,)  # type: ignore[assignment]
    if not args.page_out:
        runtimes.page_out_mappings = lambda folder: 0  # type: ignore[assignment]

    def run() -> dict[str, Any]:
        encoder = OpenClipEncoder.load(
            args.model,
            args.pretrained,
            LoadOptions(
                device="cpu",
                model_cache_dir=None,
                precision=args.precision,
                runtime=args.runtime,
                runtime_cache_dir=args.cache,
            ),
        )
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
        prepared = [encoder.prepare_image(image) for _ in range(32)]
        for n in (1, 2, 4, 8, 16, 32):
            encoder.encode_prepared(prepared[:n])
            for words in (2, 12, 40):
                encoder.encode_texts([("word " * words) + str(i) for i in range(n)])
        memory = resident_mb()
        started = time.perf_counter()
        for _ in range(4):
            encoder.encode_prepared(prepared)
        batch_rate = 4 * len(prepared) / (time.perf_counter() - started)
        return {
            "runtime": encoder.runtime,
            "precision": encoder.precision,
            **memory,
            "text_query_ms": median_ms(lambda n: encoder.encode_texts([f"a dog {n}"]), 30),
            "one_image_ms": median_ms(lambda n: encoder.encode_prepared(prepared[:1]), 10),
            "batch_images_per_s": round(batch_rate, 1),
        }

    return inference_pool().submit(run).result()


def median_ms(fn: Any, repeats: int) -> float:
    times = []
    for n in range(repeats):
        started = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def measure(args: Any, variant: tuple[str, str, bool], cache: Path) -> dict[str, Any]:
    runtime, weights, page_out = variant
    command = [sys.executable, "-m", "bench.openvino_memory", "--model", args.model]
    command += ["--pretrained", args.pretrained, "--precision", args.precision, "--child"]
    command += [runtime, weights, "page-out" if page_out else "keep", str(cache)]
    output = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--child", nargs=4, metavar=("RUNTIME", "WEIGHTS", "PAGES", "CACHE"))
    args = parser.parse_args()
    if args.child:
        args.runtime, args.weights, pages, cache = args.child
        args.page_out, args.cache = pages == "page-out", Path(cache)
        print(json.dumps(child(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        for weights in ("fp32", "fp16"):  # fill the cache: every measured start is a warm one
            measure(args, ("openvino", weights, True), cache)
        report = {name: measure(args, variant, cache) for name, variant in VARIANTS.items()}
    model = f"{args.model}/{args.pretrained or 'random-init'}"
    return emit({"model": model, "cpu_flags": cpu_flags(), **report}, args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
