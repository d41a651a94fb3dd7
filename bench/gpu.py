"""The model on one device: image batches of 32, 128 and 512, one text query, peak memory.

    .venv/bin/python -m bench.gpu --device cuda --json-out $OUT/gpu.json

For each precision (PyTorch on CUDA: fp16 and bf16; on the CPU: what `auto` resolves to), the
model as the server runs it (`encode_prepared` on uint8 batches prepared like uploads, the
better of two passes; `encode_texts` of one short query, p50), and the device's peak memory
while it ran. Then ONNX Runtime's CUDA and TensorRT providers on the same ONNX export, where
that ONNX Runtime has them (onnxruntime-gpu); the JSON says which were not there (on the CPU
both are missing). On a machine
without CUDA, `--device cpu` runs the same code on the CPU (scripts/gpu_check.sh does so to
check itself).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from app.services.threads import inference_pool
from bench.report import benchmark_parser, emit
from bench.run import text_query_p50_ms, write_images
from bench.runtimes import cpu_flags
from models import OpenClipEncoder
from models.options import LoadOptions
from models.threads import use_threads

ONNX_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def batch_rates(encoder: OpenClipEncoder, prepared: list[Any], batches: list[int]) -> dict:
    """Images/s per batch size: each pass encodes every prepared image in batches of that size."""
    rates = {}
    for batch in batches:
        chunk = (prepared * (batch // len(prepared) + 1))[:batch]
        encoder.encode_prepared(chunk)  # warm-up: this shape's first call
        best = 0.0
        for _ in range(2):
            started = time.perf_counter()
            for _ in range(max(1, 512 // batch)):
                encoder.encode_prepared(chunk)
            elapsed = time.perf_counter() - started
            best = max(best, batch * max(1, 512 // batch) / elapsed)
        rates[str(batch)] = round(best, 1)
    return rates


def torch_figures(args: Any, precision: str, images: list[Image.Image]) -> dict:
    pool = inference_pool()
    try:
        options = LoadOptions(device=args.device, precision=precision, runtime_cache_dir=args.cache)
        encoder = pool.submit(OpenClipEncoder.load, args.model, args.pretrained, options).result()
        cuda = args.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        prepared = [encoder.prepare_image(image) for image in images]
        figures: dict[str, Any] = {
            "runs": {tower: asdict(run) for tower, run in encoder.tower_runs.items()},
            "images_per_s": pool.submit(batch_rates, encoder, prepared, args.batches).result(),
            "text_query_p50_ms": pool.submit(text_query_p50_ms, encoder, 100).result(),
        }
        if cuda:
            figures["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        return figures
    finally:
        pool.shutdown()


def onnx_provider_figures(args: Any, images: list[Image.Image]) -> dict:
    """ONNX Runtime's GPU providers on the image tower's export, where this build has them."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    wanted = [p for p in ONNX_PROVIDERS if p in available]
    figures: dict[str, Any] = {"not_available": [p for p in ONNX_PROVIDERS if p not in available]}
    if not wanted:
        return figures
    options = LoadOptions(
        device="cpu", precision="fp32", runtime="onnxruntime", runtime_cache_dir=args.cache
    )
    encoder = OpenClipEncoder.load(args.model, args.pretrained, options)  # exports the towers
    graph = next(args.cache.rglob("image.onnx"))
    pixels = np.stack([encoder.prepare_image(image).numpy() for image in images])
    for provider in wanted:
        try:
            session = onnxruntime.InferenceSession(str(graph), providers=[provider])
            rates = {}
            for batch in args.batches:
                chunk = np.resize(pixels, (batch, *pixels.shape[1:]))
                session.run(None, {"pixels": chunk})
                started = time.perf_counter()
                for _ in range(max(1, 512 // batch)):
                    session.run(None, {"pixels": chunk})
                elapsed = time.perf_counter() - started
                rates[str(batch)] = round(batch * max(1, 512 // batch) / elapsed, 1)
            figures[provider] = {"images_per_s": rates}
        except Exception as e:  # a provider that lists but cannot run says why
            figures[provider] = {"error": f"{type(e).__name__}: {e}"}
    return figures


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--precisions", nargs="+", default=None)
    args = parser.parse_args()
    use_threads(1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --device cpu to check the script itself")
    precisions = args.precisions or (
        ["fp16", "bf16"] if args.device.startswith("cuda") else ["auto"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        args.cache = Path(tmp) / "runtime-cache"
        images = [Image.open(p).convert("RGB") for p in write_images(Path(tmp) / "images", 32)]
        report: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "cpu_flags": cpu_flags(),
            "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
            "model": f"{args.model}/{args.pretrained or 'random-init'}",
            "torch": {p: torch_figures(args, p, images) for p in precisions},
        }
        report["onnxruntime"] = onnx_provider_figures(args, images)
    return emit(report, args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
