"""PyTorch against ONNX Runtime against OpenVINO, side by side in one run, same model and inputs.

    .venv/bin/python -m bench.runtimes --json-out bench/runtimes-cpu.json

For each runtime and precision (bf16 variants only where the CPU has bf16 instructions):
1. The model alone, in a thread set up like the server's inference thread: one short text
   query, one image, image batches of 32, and the lowest cosine to PyTorch fp32's vectors.
2. Through HTTP against a real server started with XMR_RUNTIME/XMR_PRECISION: text query p50
   at concurrency 1 and QPS at 32, image query p50, batch indexing images/s, and the server's
   RSS before and after a load test (32 clients mixing text and image queries and indexing).
   Every server is up at once and they take turns, `--rounds` rounds (each figure the median
   of its rounds): on a machine whose speed drifts by half within minutes, servers measured
   one after the other were compared with the drift, not with each other.
The export to ONNX is timed once, on an empty cache; every run then loads from that cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from app.services.threads import inference_pool
from bench.report import benchmark_parser, emit
from bench.run import (
    REPO,
    free_port,
    index_images_per_s,
    query,
    search_load,
    stop,
    wait_http,
    write_images,
)
from models import OpenClipEncoder
from models.open_clip_encoder import cpu_has_native_bf16
from models.options import LoadOptions
from models.threads import use_threads
from xmr.client import XmrClient

LOAD_CLIENTS = 32
RAW_BATCH_IMAGES = 128  # images of the raw batch rate's pass, in batches of 32


def cpu_flags() -> list[str]:
    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(wanted & set(text.split()))


def variants() -> list[tuple[str, str]]:
    """Each runtime for both towers, then `auto` (a runtime per tower) in the default precision."""
    chosen = [("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")]
    if cpu_has_native_bf16():
        chosen += [("torch", "bf16"), ("openvino", "bf16")]
    return chosen + [("auto", "bf16" if cpu_has_native_bf16() else "fp32")]


def median_ms(fn: Any, repeats: int) -> float:
    fn()  # warm-up: the first call of a shape pays one-time costs
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def raw_figures(
    encoder: OpenClipEncoder, prepared: list[torch.Tensor], reference: dict[str, np.ndarray]
) -> dict[str, Any]:
    """The model alone, one pass of each figure; runs in the inference thread."""
    texts = [query(n) for n in range(8)]
    batch = 32
    encoder.encode_prepared(prepared[:batch])  # warm-up
    passed = prepared[:RAW_BATCH_IMAGES]
    started = time.perf_counter()
    for start in range(0, len(passed), batch):
        encoder.encode_prepared(passed[start : start + batch])
    rate = len(passed) / (time.perf_counter() - started)
    counter = iter(range(10**6))
    return {
        "text_query_ms": median_ms(lambda: encoder.encode_texts([query(next(counter))]), 40),
        "one_image_ms": median_ms(lambda: encoder.encode_prepared(prepared[:1]), 20),
        "batch_images_per_s": round(rate, 2),
        "min_cosine_to_torch_fp32": round(
            min(
                worst(encoder.encode_texts(texts), reference["texts"]),
                worst(encoder.encode_prepared(prepared[:batch]), reference["images"]),
            ),
            6,
        ),
    }


def worst(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def raw_all(args: Any, paths: list[Path], cache: Path) -> tuple[dict[str, Any], float]:
    """Raw figures per variant, and the cold export's seconds."""
    pool = inference_pool()
    try:

        def load(runtime: str, precision: str) -> OpenClipEncoder:
            return OpenClipEncoder.load(
                args.model,
                args.pretrained,
                LoadOptions(
                    device="cpu", precision=precision, runtime=runtime, runtime_cache_dir=cache
                ),
            )

        reference_encoder = pool.submit(load, "torch", "fp32").result()
        prepared = [reference_encoder.prepare_image(Image.open(p)) for p in paths]
        texts = [query(n) for n in range(8)]
        reference = {
            "texts": pool.submit(reference_encoder.encode_texts, texts).result(),
            "images": pool.submit(reference_encoder.encode_prepared, prepared[:32]).result(),
        }
        del reference_encoder
        started = time.perf_counter()
        pool.submit(load, "openvino", "fp32").result()  # exports into the empty cache
        export_s = time.perf_counter() - started
        results: dict[str, Any] = {}
        encoders: dict[str, OpenClipEncoder] = {}
        for runtime, precision in variants():
            gc.collect()
            started = time.perf_counter()
            encoder = pool.submit(load, runtime, precision).result()
            name = f"{runtime}-{precision}"
            if runtime != "auto":
                assert (encoder.runtime, encoder.precision) == (runtime, precision), name
            results[name] = {
                "load_s": round(time.perf_counter() - started, 2),
                "runs": f"{encoder.runtime} {encoder.precision}",
            }
            encoders[name] = encoder
        # all loaded, then in turns (the first changing each round), as the servers below
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in encoders}
        names = list(encoders)
        for round_ in range(args.rounds):
            first = round_ % len(names)
            for name in names[first:] + names[:first]:
                figures = pool.submit(raw_figures, encoders[name], prepared, reference).result()
                rounds[name].append(figures)
        for name, taken in rounds.items():
            results[name] |= {
                key: round(statistics.median(figures[key] for figures in taken), 6)
                for key in taken[0]
            }
        encoders.clear()
        return results, round(export_s, 1)
    finally:
        pool.shutdown()


# -- through HTTP --------------------------------------------------------------------------
def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory: all of it, and its anonymous part (without mapped files such as
    OpenVINO's compiled graphs, which the kernel can drop and read again)."""
    fields = {"VmRSS": "rss_mb", "RssAnon": "anon_mb"}
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in fields:
            found[fields[key]] = round(int(line.split()[1]) / 1024, 1)
    return found


def jpeg(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def image_query_p50(base: str, images: list[bytes], total: int) -> float:
    times = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        for n in range(total + 2):
            files = {"file": ("q.jpg", images[n % len(images)], "image/jpeg")}
            started = time.perf_counter()
            response = await http.post("/v1/search/image", files=files, data={"k": "10"})
            response.raise_for_status()
            if n >= 2:  # two warm-up queries
                times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


async def embed_request_images_per_s(base: str, images: list[bytes], rounds: int) -> float:
    """Images/s of one POST /v1/embed/image with len(images) images: the median of `rounds`."""
    files = [("files", (f"{n}.jpg", data, "image/jpeg")) for n, data in enumerate(images)]
    times = []
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        for n in range(rounds + 1):
            started = time.perf_counter()
            response = await http.post("/v1/embed/image", files=files)
            response.raise_for_status()
            if n >= 1:  # one warm-up request
                times.append(time.perf_counter() - started)
    return round(len(images) / statistics.median(times), 2)


async def load_test(base: str, images: list[bytes], seconds: float) -> dict[str, Any]:
    """LOAD_CLIENTS clients: text queries, image queries and indexing, for `seconds`."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient, worker: int) -> None:
        rng = random.Random(worker)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            action = rng.random()
            if action < 0.6:
                response = await http.get("/v1/search/text", params={"q": query(n), "k": 10})
            elif action < 0.8:
                files = {"file": ("q.jpg", rng.choice(images), "image/jpeg")}
                response = await http.post("/v1/search/image", files=files)
            else:
                items = [{"text": f"w{worker} n{n} {j} {query(j)}"} for j in range(4)]
                response = await http.post("/v1/texts", json={"items": items})
            statuses.append(response.status_code)
            if response.status_code == 429:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))

    limits = httpx.Limits(max_connections=LOAD_CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http, w) for w in range(LOAD_CLIENTS)))
    errors = [s for s in statuses if s not in (200, 201, 429)]
    return {"requests": len(statuses), "errors": len(errors), "rejected_429": statuses.count(429)}


@dataclass
class Server:
    name: str
    base: str
    pid: int
    ready_s: float
    info: dict[str, Any]


@contextlib.contextmanager
def serving(
    args: Any, runtime: str, precision: str, paths: list[Path], root: Path, cache: Path
) -> Iterator[Server]:
    """A server run with XMR_RUNTIME/XMR_PRECISION, ready and warmed up by a first batch job."""
    port = free_port()
    env = os.environ | {
        "XMR_MODEL": args.model,
        "XMR_PRETRAINED": args.pretrained,
        "XMR_DEVICE": "cpu",
        "XMR_RUNTIME": runtime,
        "XMR_PRECISION": precision,
        "XMR_RUNTIME_CACHE_DIR": str(cache),
        "XMR_DATA_DIR": str(root / f"data-{runtime}-{precision}"),
        "XMR_IMPORT_ROOT": str(paths[0].parent),
        "XMR_PORT": str(port),
        "XMR_LOG_LEVEL": "warning",
        "XMR_QUERY_CACHE_MB": "0",  # figures without the query cache
        "XMR_ENCODE_BATCH_SIZE": "32",
        "XMR_MAX_BATCH": "32",
    }
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz")
        ready_s = time.perf_counter() - started
        info = httpx.get(f"{base}/v1/info").json()
        if runtime != "auto":
            assert (info["runtime"], info["precision"]) == (runtime, precision), info
        with XmrClient(base) as client:
            warm_up = client.submit_batch([{"image_path": p.name} for p in paths[:32]])
            client.wait_for_job(warm_up, poll_s=0.1)
        yield Server(f"{runtime}-{precision}", base, process.pid, round(ready_s, 1), info)
    finally:
        stop(process)


def one_round(
    server: Server, args: Any, paths: list[Path], jpegs: list[bytes], rounds: int
) -> dict[str, float]:
    """Every figure but the load test, once, with a `rounds`-th of the queries; `jpegs` are
    the first 32 images as JPEG."""
    images = jpegs[:16]
    queries = max(32, args.queries // rounds)
    with XmrClient(server.base) as client:
        index_rate = round(index_images_per_s(client, paths), 2)
    text_1 = asyncio.run(search_load(server.base, "/v1/search/text", queries, 1))
    text_32 = asyncio.run(search_load(server.base, "/v1/search/text", args.queries, 32))
    batch = jpegs[:32]
    return {
        "text_query_p50_ms": text_1["p50_ms"],
        "text_qps_at_32": text_32["qps"],
        "image_query_p50_ms": asyncio.run(image_query_p50(server.base, images, queries)),
        "index_images_per_s": index_rate,
        "embed_request_32_images_per_s": asyncio.run(
            embed_request_images_per_s(server.base, batch, max(2, 5 // rounds))
        ),
    }


def through_http(
    args: Any, names: list[tuple[str, str]], paths: list[Path], root: Path, cache: Path
) -> dict[str, dict[str, Any]]:
    """Every server up at once; `args.rounds` rounds in which each takes its turn (the first of
    a round changing from round to round), and each figure the median of its rounds. The load
    test likewise, a `rounds`-th of its seconds per turn, the RSS read before its first turn and
    after its last."""
    jpegs = [jpeg(p) for p in paths[:32]]
    images = jpegs[:16]
    rounds = args.rounds
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(serving(args, runtime, precision, paths, root, cache))
            for runtime, precision in names
        ]

        def turns(round_: int) -> list[Server]:
            first = round_ % len(servers)
            return servers[first:] + servers[:first]

        samples: dict[str, dict[str, list[float]]] = {s.name: {} for s in servers}
        for round_ in range(rounds):
            for server in turns(round_):
                for key, value in one_round(server, args, paths, jpegs, rounds).items():
                    samples[server.name].setdefault(key, []).append(value)
        rss_before = {s.name: rss_mb(s.pid) for s in servers}
        loads: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
        for round_ in range(rounds):
            for server in turns(round_):
                loads[server.name].append(
                    asyncio.run(load_test(server.base, images, args.load_seconds / rounds))
                )
        rss_after = {s.name: rss_mb(s.pid) for s in servers}
        return {
            server.name: {
                "towers": server.info["towers"],
                "ready_s": server.ready_s,
                **{
                    key: round(statistics.median(values), 2)
                    for key, values in samples[server.name].items()
                },
                "rounds": samples[server.name],
                "load_test": {
                    key: sum(turn[key] for turn in loads[server.name])
                    for key in ("requests", "errors", "rejected_429")
                },
                "memory_before_load": rss_before[server.name],
                "memory_after_load": rss_after[server.name],
            }
            for server in servers
        }


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="turns each server takes, the servers up at once (1: one after another's figures)",
    )
    parser.add_argument(
        "--servers",
        default="",
        help="only these runtime-precision servers, e.g. torch-bf16,openvino-bf16 (default: all)",
    )
    args = parser.parse_args()
    wanted = {name for name in args.servers.split(",") if name}
    # as in the server, only the inference thread runs torch on every core: a second
    # multi-core OpenMP pool here (preparing images) slows every torch encode (app.services.threads)
    use_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "runtime-cache"
        paths = write_images(root / "images", args.images)
        raw, export_s = raw_all(args, paths, cache)
        names = [
            (runtime, precision)
            for runtime, precision in variants()
            if not wanted or f"{runtime}-{precision}" in wanted
        ]
        http = through_http(args, names, paths, root, cache)
    for name, figures in http.items():
        # against the fastest raw encode in the same precision: a CPU without bf16 has only fp32
        precision = name.rsplit("-", 1)[1]
        fastest = max(v["batch_images_per_s"] for k, v in raw.items() if k.endswith(precision))
        figures["index_vs_fastest_raw_encode_same_precision"] = round(
            figures["index_images_per_s"] / fastest, 2
        )
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "cpu_flags": cpu_flags(),
        "model": f"{args.model}/{args.pretrained or 'random-init'}",
        "export_s_cold_cache": export_s,
        "raw": raw,
        "http": http,
    }
    return emit(report, args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
