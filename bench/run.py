"""End-to-end benchmark: xmr against the raw model and against a naive service, same model.

    .venv/bin/python -m bench.run --images 128 --queries 200 --json-out bench/results.json

1. Batch indexing: images/s through POST /v1/batch, against the model's raw encode_image on
   pre-decoded tensors at the same batch size, and against the naive service (one request per
   image).
2. Text->image search: p50/p99 latency and QPS at concurrency 1, 8, 32 through HTTP, against the
   model's text encode alone, and against the naive service.
Servers run one at a time, so they never share the CPU with each other. Image throughput, raw
and through xmr, is the better of two runs after a warm-up on each side: on a shared 2-core
machine single runs vary by 10-15%.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from app.services.threads import inference_pool
from bench.report import benchmark_parser, emit
from models import OpenClipEncoder
from models.options import LoadOptions
from xmr.client import XmrClient
from xmr.shapes import random_scene, render

REPO = Path(__file__).resolve().parent.parent
QUERIES = ["a red circle", "a photo of a dog", "two people walking on a beach at sunset", "cat"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(url)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def write_images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        scene = random_scene(rng, 1 + n % 2, min_side=200, max_side=640)
        path = folder / f"{n:05d}.jpg"
        render(scene, rng).save(path, quality=90)
        paths.append(path)
    return paths


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# -- baselines in this process --------------------------------------------------------------
def raw_image_throughput(encoder: OpenClipEncoder, paths: list[Path], batch: int) -> float:
    from PIL import Image

    # prepared as the server prepares them (the runtime's own input: pixels in its layout)
    prepared = [encoder.prepare_image(Image.open(p).convert("RGB")) for p in paths]
    encoder.encode_prepared(prepared[:batch])  # warm-up
    best = 0.0
    for _ in range(2):  # the better of two passes: the baseline errs on the fast side
        started = time.perf_counter()
        for start in range(0, len(prepared), batch):
            encoder.encode_prepared(prepared[start : start + batch])
        best = max(best, len(prepared) / (time.perf_counter() - started))
    return best


def query(n: int) -> str:
    """The n-th query text, the same in the baselines and through HTTP."""
    return f"{QUERIES[n % len(QUERIES)]} {n}"


def text_query_p50_ms(encoder: OpenClipEncoder, repeats: int, warm_up: int = 20) -> float:
    """p50 ms of encode_texts for one short query (tokenizing included), each query new."""
    for n in range(warm_up):
        encoder.encode_texts([query(n)])
    times = []
    for n in range(repeats):
        started = time.perf_counter()
        encoder.encode_texts([query(n)])
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def raw_text_ms(encoder: OpenClipEncoder, short: bool, repeats: int = 40) -> float:
    encoder.short_text = short
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        encoder.encode_texts([query(i)])
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def batcher_qps(
    encoder: OpenClipEncoder, inference: ThreadPoolExecutor, levels: list[int], total: int = 320
) -> dict[int, float]:
    """Single-text queries per second through xmr's batcher alone (no HTTP), per concurrency.

    At concurrency 1 this is one-at-a-time encoding; the ratio isolates what batching gives.
    """
    from app.services.encoding import EncodingLimits, EncodingService

    async def at(service: EncodingService, concurrency: int) -> float:
        counter = iter(range(total))

        async def worker() -> None:
            for n in counter:
                await service.encode_texts([query(n)])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return round(total / (time.perf_counter() - started), 1)

    async def run() -> dict[int, float]:
        service = EncodingService(
            encoder, EncodingLimits(max_image_pixels=10**8, max_batch=64), inference=inference
        )
        service.start()
        try:
            await service.encode_texts(QUERIES)  # warm-up
            return {concurrency: await at(service, concurrency) for concurrency in levels}
        finally:
            await service.stop()
            service.close()

    return asyncio.run(run())


def raw_baselines(args: argparse.Namespace, paths: list[Path]) -> tuple[dict, str]:
    """The model alone, loaded and run in a thread set up like the server's inference thread.

    (A second thread running torch on several cores would slow both: app/services/threads.py.)
    """
    inference = inference_pool()
    encoder = inference.submit(
        OpenClipEncoder.load,
        args.model,
        args.pretrained,
        LoadOptions(device=args.device, precision=args.precision),
    ).result()
    raw: dict[str, Any] = {
        "encode_image_per_s": round(
            inference.submit(raw_image_throughput, encoder, paths, args.batch).result(), 2
        ),
        "encode_text_ms_77_tokens": round(
            inference.submit(raw_text_ms, encoder, False).result(), 2
        ),
        "encode_text_ms_short": round(inference.submit(raw_text_ms, encoder, True).result(), 2),
    }
    raw["batcher_qps"] = batcher_qps(encoder, inference, args.concurrency)  # closes the thread
    return raw, encoder.precision  # the server picks the same precision on this machine


# -- load through HTTP ----------------------------------------------------------------------
async def search_load(
    base: str, path: str, total: int, concurrency: int, extra: dict[str, Any] | None = None
) -> dict[str, float]:
    """p50/p99 and QPS of `total` searches (k=10, `extra` parameters) at `concurrency`."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker(http: httpx.AsyncClient) -> None:
        for n in counter:
            started = time.perf_counter()
            response = await http.get(path, params={"q": query(n), "k": 10, **(extra or {})})
            response.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        await worker_warmup(http, path, extra)
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "qps": round(total / elapsed, 1),
    }


async def worker_warmup(
    http: httpx.AsyncClient, path: str, extra: dict[str, Any] | None = None
) -> None:
    for query in QUERIES:
        (await http.get(path, params={"q": query, "k": 10, **(extra or {})})).raise_for_status()


def bench_xmr(args: argparse.Namespace, paths: list[Path], root: Path) -> dict:
    port = free_port()
    env = os.environ | {
        "XMR_MODEL": args.model,
        "XMR_PRETRAINED": args.pretrained,
        "XMR_DEVICE": args.device,
        "XMR_PRECISION": args.precision,
        "XMR_DATA_DIR": str(root / "xmr-data"),
        "XMR_IMPORT_ROOT": str(paths[0].parent),
        "XMR_PORT": str(port),
        "XMR_LOG_LEVEL": "warning",
        "XMR_QUERY_CACHE_MB": "0",  # figures without the query cache
        "XMR_ENCODE_BATCH_SIZE": str(args.batch),
        "XMR_MAX_BATCH": str(args.batch),
    }
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz")
        with XmrClient(base) as client:
            # one batch first, as the raw baseline warms up: the first call of a shape pays
            # one-time costs (oneDNN's kernels in bf16)
            warm_up = client.submit_batch([{"image_path": p.name} for p in paths[: args.batch]])
            client.wait_for_job(warm_up, poll_s=0.1)
            # the better of two jobs, as the raw baseline is the better of two passes
            index_rate = max(index_images_per_s(client, paths) for _ in range(2))
        search = {
            c: asyncio.run(search_load(base, "/v1/search/text", args.queries, c))
            for c in args.concurrency
        }
        return {
            "index_images_per_s": round(index_rate, 2),
            "search": search,
            "http_round_trip_ms": asyncio.run(round_trip_ms(base)),
        }
    finally:
        stop(process)


def index_images_per_s(client: XmrClient, paths: list[Path]) -> float:
    """Images/s of one batch job over `paths`, from the submit to the job's own last update.

    Polled as a client would; the job's own end time (same clock) marks the end, so that
    frequent polls neither add CPU load nor round the figure.
    """
    started = time.time()
    job_id = client.submit_batch([{"image_path": p.name} for p in paths])
    job = client.wait_for_job(job_id, poll_s=0.5)
    assert job["done"] == len(paths), job
    return len(paths) / (job["updated_at"] - started)


async def round_trip_ms(base: str, repeats: int = 200) -> float:
    """p50 of GET /healthz with the load generator's client: HTTP's own share of a query."""
    times = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for _ in range(repeats):
            started = time.perf_counter()
            (await http.get("/healthz")).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def bench_naive(args: argparse.Namespace, paths: list[Path]) -> dict:
    port = free_port()
    env = os.environ | {"XMR_MODEL": args.model, "XMR_PRETRAINED": args.pretrained}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.naive_server:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/docs")
        with httpx.Client(base_url=base, timeout=120) as http:
            started = time.perf_counter()
            for path in paths:
                http.post(
                    "/images", files={"file": (path.name, path.read_bytes(), "image/jpeg")}
                ).raise_for_status()
            elapsed = time.perf_counter() - started
        search = {
            c: asyncio.run(search_load(base, "/search", args.queries, c)) for c in args.concurrency
        }
        return {"index_images_per_s": round(len(paths) / elapsed, 2), "search": search}
    finally:
        stop(process)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto, fp32, fp16 (CUDA), bf16")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_images(root / "images", args.images)
        raw, precision = raw_baselines(args, paths)
        xmr = bench_xmr(args, paths, root)
        naive = bench_naive(args, paths)

    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "precision": precision,
        "device": "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "model": f"{args.model}/{args.pretrained or 'random-init'}",
        "images": args.images,
        "batch": args.batch,
        "queries": args.queries,
        "raw": raw,
        "xmr": xmr,
        "naive": naive,
        "ratios": {
            "index_vs_raw": round(xmr["index_images_per_s"] / raw["encode_image_per_s"], 3),
            "index_vs_naive": round(xmr["index_images_per_s"] / naive["index_images_per_s"], 2),
            "search_overhead_ms_c1": round(
                xmr["search"][1]["p50_ms"] - raw["encode_text_ms_short"], 1
            )
            if 1 in xmr["search"]
            else None,
            "batcher_qps_c_max_vs_sequential_encode": round(
                raw["batcher_qps"][max(args.concurrency)] * raw["encode_text_ms_short"] / 1000, 2
            ),
            "batcher_qps_c_max_vs_c1": round(
                raw["batcher_qps"][max(args.concurrency)]
                / raw["batcher_qps"][min(args.concurrency)],
                2,
            ),
            "search_qps_c_max_vs_c1": round(
                xmr["search"][max(args.concurrency)]["qps"]
                / xmr["search"][min(args.concurrency)]["qps"],
                2,
            ),
            "search_qps_vs_naive": {
                c: round(xmr["search"][c]["qps"] / naive["search"][c]["qps"], 2)
                for c in args.concurrency
            },
            "search_p50_vs_naive": {
                c: round(naive["search"][c]["p50_ms"] / xmr["search"][c]["p50_ms"], 2)
                for c in args.concurrency
            },
        },
    }
    return emit(report, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
