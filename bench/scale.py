"""The whole service as it grows: import, start-up, searches, memory and disk at N items.

Synthetic 512-d unit vectors with a photo library's metadata (an album, a camera, a capture
date, a rating, and one item in 10,000 marked `rare`) are written as `vectors.npy` +
`metadata.parquet` and imported with `xmr import-embeddings`' own code into a fresh data
directory (ViT-B-32's identity, random weights: the same cost). Then the real server is started
on it (`python -m app`, the runtime `auto` picks) and measured through HTTP: start-up from its
snapshots, text search p50 against the raw text encode in this process (the baseline, same
run), a selective (1 in 10,000) and a broad (3 in 5) metadata filter, its memory, and after
1,000 more writes and a kill -9, the start-up that replays them. Bytes on disk per item come
from the data directory.

    python -m bench.scale --items 100000 --json-out bench/scale-cpu-100k.json
    python -m bench.scale --items 100000 --filter-fields rare,rating \
        --json-out bench/scale-cpu-100k-indexed.json

With --filter-fields the server indexes those fields (XMR_FILTER_FIELDS) at start-up, which
its start-up time includes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.report import benchmark_parser, emit

QUERIES = 40
CHUNK = 100_000


def write_folder(folder: Path, items: int, dim: int) -> None:
    """vectors.npy (float16, as clip-retrieval saves them) and metadata.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    vectors = np.lib.format.open_memmap(
        folder / "vectors.npy", mode="w+", dtype=np.float16, shape=(items, dim)
    )
    for start in range(0, items, CHUNK):
        block = rng.standard_normal((min(CHUNK, items - start), dim)).astype(np.float32)
        vectors[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    vectors.flush()
    n = np.arange(items)
    table = pa.table(
        {
            "id": [f"photo-{i}" for i in n],
            "album": [f"album-{i % 200}" for i in n],
            "camera": [["Canon EOS R5", "iPhone 15 Pro", "NIKON Z 6"][i % 3] for i in n],
            "taken_at": [f"20{10 + i % 15}-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00" for i in n],
            "rating": (n % 5).tolist(),
            "rare": (n % 10_000 == 7).tolist(),
        }
    )
    pq.write_table(table, folder / "metadata.parquet", row_group_size=CHUNK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(env: dict[str, str], port: int) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "app"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        time.sleep(0.05)
    process.kill()
    raise TimeoutError("the server did not get ready")


def wait_for_builds(http: httpx.Client) -> dict[str, str]:
    """Wait until no index is being rebuilt in the background; the structures serving."""
    while True:
        indexes = http.get("/v1/info").json()["indexes"]
        if all(description["building"] is None for description in indexes.values()):
            return {kind: description["structure"] for kind, description in indexes.items()}
        time.sleep(1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def p50_ms(http: httpx.Client, params: dict[str, Any]) -> tuple[float, int]:
    times, found = [], 0
    for n in range(QUERIES):
        started = time.perf_counter()
        response = http.get("/v1/search/text", params={**params, "q": f"a photo {n}"})
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        found = len(response.json()["results"])
    return statistics.median(times[5:]), found


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument(
        "--filter-fields", default="", help="XMR_FILTER_FIELDS for the server, e.g. rare"
    )
    args = parser.parse_args()
    from index.store import ItemStore
    from models.open_clip_encoder import OpenClipEncoder
    from xmr.import_embeddings import import_embeddings

    encoder = OpenClipEncoder.load(args.model, args.pretrained or "")
    report: dict[str, Any] = {
        "items": args.items,
        "model": args.model,
        "filter_fields": args.filter_fields,
    }
    with tempfile.TemporaryDirectory(prefix="xmr-scale-") as scratch:
        root = Path(scratch)
        (root / "folder").mkdir()
        write_folder(root / "folder", args.items, encoder.dim)
        data_dir = root / "data"
        store = ItemStore(data_dir, encoder.model_id, encoder.dim)
        started = time.perf_counter()
        imported = import_embeddings(root / "folder", store, encoder, chunk=10_000)
        report["import_items_per_s"] = round(imported.images / (time.perf_counter() - started))
        started = time.perf_counter()
        store.wait_for_builds(3600)  # the structure `auto` plans for this size, built whole
        report["index_build_after_import_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        store.close(save=True)
        report["snapshot_s"] = round(time.perf_counter() - started, 2)
        report["disk_mb_per_million"] = round(disk_mb(data_dir) / args.items * 1e6, 1)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("XMR_")} | {
            "XMR_MODEL": args.model,
            "XMR_PRETRAINED": args.pretrained or "",
            "XMR_DATA_DIR": str(data_dir),
            "XMR_PORT": str(port),
            "XMR_LOG_LEVEL": "warning",
            "XMR_QUERY_CACHE_MB": "0",  # figures without the query cache
            "XMR_FILTER_FIELDS": args.filter_fields,
        }
        process, startup = start_server(env, port)
        report["startup_from_snapshots_s"] = round(startup, 2)
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=120) as http:
                started = time.perf_counter()
                report["structures"] = wait_for_builds(http)
                report["background_build_s"] = round(time.perf_counter() - started, 1)
                raw = []
                for n in range(QUERIES):
                    t = time.perf_counter()
                    encoder.encode_texts([f"a photo {n}"])
                    raw.append((time.perf_counter() - t) * 1000)
                report["raw_text_encode_p50_ms"] = round(statistics.median(raw[5:]), 2)
                plain, _ = p50_ms(http, {"k": 10})
                rare, rare_found = p50_ms(http, {"k": 10, "filter": json.dumps({"rare": True})})
                broad, _ = p50_ms(
                    http, {"k": 10, "filter": json.dumps({"rating": {"in": [1, 2, 3]}})}
                )
                report["text_search_p50_ms"] = round(plain, 2)
                report["selective_filter_p50_ms"] = round(rare, 2)
                report["selective_filter_found"] = rare_found
                report["broad_filter_p50_ms"] = round(broad, 2)
                report["rss_mb"] = round(rss_mb(process.pid), 1)
                for start in range(0, 1000, 100):
                    items = [
                        {"id": f"late-{i}", "text": f"a late note {i}"}
                        for i in range(start, start + 100)
                    ]
                    http.post("/v1/texts", json={"items": items}).raise_for_status()
            process.send_signal(signal.SIGKILL)
            process.wait()
            process, startup = start_server(env, port)
            report["startup_after_kill_s"] = round(startup, 2)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    return emit(report, args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
