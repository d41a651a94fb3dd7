"""Re-embedding a collection with another model, against the new model's raw encode rate.

    .venv/bin/python -m bench.reindex --images 256 --texts 2048 --json-out bench/reindex-cpu.json

A server (its default collection on the tiny test model) holds two collections made with the
tiny model: one of `--images` JPEGs, one of `--texts` captions. Each is re-embedded to `--model`
through `POST /v1/collections/{name}/reindex`, timed from the request to the job's own last
update, with the new model already loaded (a collection made with it first: loading it is a
one-time cost, reported apart). The baseline is the same model, loaded the way the server
loads it and run in a thread set up like its inference thread, on the same items: images
already decoded and preprocessed, and texts, in batches of the server's job step
(`XMR_ENCODE_BATCH_SIZE`, 32); the better of two passes after a warm-up. The re-embedding
also reads every image back from the blob store, decodes it, and writes a second copy of the
collection (records, vectors, image bytes).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from app.services.threads import inference_pool
from bench.report import benchmark_parser, emit
from bench.run import REPO, free_port, stop, wait_http, write_images
from models import OpenClipEncoder
from models.options import LoadOptions
from xmr.client import XmrClient

TINY = "xmr-test-tiny"


def best_rate(items: Sequence[Any], batch: int, encode: Callable[[Sequence[Any]], Any]) -> float:
    encode(items[:batch])  # warm-up: the first call of a shape pays one-time costs
    best = 0.0
    for _ in range(2):
        started = time.perf_counter()
        for start in range(0, len(items), batch):
            encode(items[start : start + batch])
        best = max(best, len(items) / (time.perf_counter() - started))
    return best


def raw_rates(args: Any, paths: list[Path], texts: list[str]) -> tuple[dict[str, float], str]:
    inference = inference_pool()
    try:
        encoder = inference.submit(
            OpenClipEncoder.load,
            args.model,
            args.pretrained,
            LoadOptions(device="cpu", precision=args.precision),
        ).result()
        prepared = [encoder.prepare_image(Image.open(p).convert("RGB")) for p in paths]
        images = inference.submit(best_rate, prepared, args.batch, encoder.encode_prepared)
        text_rate = inference.submit(best_rate, texts, args.batch, encoder.encode_texts)
        rates = {"images_per_s": images.result(), "texts_per_s": text_rate.result()}
        return {k: round(v, 2) for k, v in rates.items()}, f"{encoder.runtime} {encoder.precision}"
    finally:
        inference.shutdown()


def reindex_rates(args: Any, paths: list[Path], texts: list[str], root: Path) -> dict[str, Any]:
    port = free_port()
    env = os.environ | {
        "XMR_MODEL": TINY,
        "XMR_PRETRAINED": "",
        "XMR_DEVICE": "cpu",
        "XMR_DATA_DIR": str(root / "data"),
        "XMR_IMPORT_ROOT": str(paths[0].parent),
        "XMR_PORT": str(port),
        "XMR_LOG_LEVEL": "warning",
        "XMR_QUERY_CACHE_MB": "0",  # figures without the query cache
        "XMR_ENCODE_BATCH_SIZE": str(args.batch),
    }
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz")
        with XmrClient(base, timeout=600) as client:
            for name in ("images", "texts"):
                client.create_collection(name, TINY, "")
            load = XmrClient(base, timeout=600, collection="images")
            job = load.submit_batch([{"image_path": p.name} for p in paths])
            assert load.wait_for_job(job)["done"] == len(paths)
            load = XmrClient(base, timeout=600, collection="texts")
            for start in range(0, len(texts), 500):
                load.index_texts([{"text": t} for t in texts[start : start + 500]])
            started = time.perf_counter()
            client.create_collection("loaded", args.model, args.pretrained, args.precision)
            rates: dict[str, Any] = {"model_load_s": round(time.perf_counter() - started, 2)}
            for name, count in (("images", len(paths)), ("texts", len(texts))):
                rates[name] = round(count / reindex_seconds(client, name, args), 2)
            return rates
    finally:
        stop(process)


def reindex_seconds(client: XmrClient, name: str, args: Any) -> float:
    started = time.time()
    job_id = client.reindex_collection(name, args.model, args.pretrained, args.precision)
    job = client.wait_for_job(job_id, poll_s=0.5)
    assert job["status"] == "done", job
    return float(job["updated_at"]) - started


def captions(count: int) -> list[str]:
    words = ["red", "green", "blue", "circle", "square", "triangle", "small", "large", "left"]
    return [
        f"a {words[n % 9]} {words[(n // 9) % 9]} and a {words[(n // 81) % 9]} {n}"
        for n in range(count)
    ]


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_images(root / "images", args.images)
        texts = captions(args.texts)
        raw, runs = raw_rates(args, paths, texts)
        through = reindex_rates(args, paths, texts, root)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": f"{args.model}/{args.pretrained or 'random-init'}",
        "runs_as": runs,
        "images": args.images,
        "texts": args.texts,
        "raw": raw,
        "reindex": {"images_per_s": through["images"], "texts_per_s": through["texts"]},
        "model_load_s": through["model_load_s"],
        "ratios": {
            "images": round(through["images"] / raw["images_per_s"], 3),
            "texts": round(through["texts"] / raw["texts_per_s"], 3),
        },
    }
    return emit(report, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
