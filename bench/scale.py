"""The whole service as it grows: import, start-up, searches, memory and disk at N items.

Synthetic unit vectors of the model's dimension (512-d for ViT-B-32) drawn around 2,000 centres
(embeddings cluster; as in bench.vector_search) with a photo library's metadata (an album, a
camera, a place, a capture date, a rating, and one item in 10,000 marked `rare`) are written as
`vectors.npy` + `metadata.parquet` and imported with `xmr import-embeddings`' own code into a
fresh data directory (ViT-B-32's identity, random weights: the same cost). Then the real server
is started on it (`python -m app`, the runtime `auto` picks) and measured through HTTP: start-up
from its snapshots, text search p50 against the raw text encode in this process (the baseline,
same run), a selective (1 in 10,000) and a broad (3 in 5) metadata filter, a keyword search for
a place (1 in 5,000) and the same words as a hybrid search (each side 1,000 deep), the
recall@10 of the index structure against an exact search of the folder's vectors (50 stored
items searched with their own vectors), its memory, the rate of
100,000 more items imported through the running server (`xmr import-embeddings --server`'s
code: POST /v1/vectors), and after 1,000 more writes and a kill -9, the start-up that replays
them. Bytes on disk per item come from the data directory; the snapshot's size and how long it
held the write lock from the store.

    python -m bench.scale --items 100000 --json-out bench/scale-cpu-100k.json
    python -m bench.scale --items 100000 --filter-fields rare,rating \
        --json-out bench/scale-cpu-100k-indexed.json

--keep DIR moves the folder and the data directory to DIR/folder and DIR/data at the end, for
`bench.scale_again DIR/data DIR/folder`.

With --filter-fields the server indexes those fields (XMR_FILTER_FIELDS) at start-up, which
its start-up time includes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
from bench.vector_search import clustered, unit

QUERIES = 40
CHUNK = 100_000
RECALL_SAMPLE = 50
SERVER_IMPORT = 100_000  # new items sent through POST /v1/vectors while the server runs


def write_folder(folder: Path, items: int, dim: int, prefix: str = "photo", seed: int = 0) -> None:
    """vectors.npy (float16, as clip-retrieval saves them) and metadata.parquet, a chunk at a
    time (10M rows of Python strings at once would not fit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = unit(np.random.default_rng(0).normal(size=(2000, dim)).astype(np.float32))
    vectors = np.lib.format.open_memmap(
        folder / "vectors.npy", mode="w+", dtype=np.float16, shape=(items, dim)
    )
    writer: pq.ParquetWriter | None = None
    for start in range(0, items, CHUNK):
        n = np.arange(start, min(items, start + CHUNK))
        vectors[start : start + len(n)] = clustered(len(n), centres, rng)
        table = pa.table(
            {
                "id": [f"{prefix}-{i}" for i in n],
                "album": [f"album-{i % 200}" for i in n],
                "camera": [["Canon EOS R5", "iPhone 15 Pro", "NIKON Z 6"][i % 3] for i in n],
                "place": [f"town{i % 5000}" for i in n],
                "taken_at": [
                    f"20{10 + i % 15}-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00" for i in n
                ],
                "rating": (n % 5).tolist(),
                "rare": (n % 10_000 == 7).tolist(),
            }
        )
        writer = writer or pq.ParquetWriter(folder / "metadata.parquet", table.schema)
        writer.write_table(table)
    vectors.flush()
    if writer is not None:
        writer.close()


def import_through(base: str, folder: Path, items: int, dim: int) -> int:
    """Items/s of `xmr import-embeddings --server` into the running server (new items)."""
    from xmr.client import XmrClient
    from xmr.import_embeddings import import_through_server

    folder.mkdir()
    write_folder(folder, items, dim, prefix="more", seed=1)
    with XmrClient(base, timeout=600) as client:
        started = time.perf_counter()
        report = import_through_server(folder, client)
        elapsed = time.perf_counter() - started
    if report.failed or report.images != items:
        raise RuntimeError(f"the import through the server lost items: {report.failed[:3]}")
    return round(items / elapsed)


def exact_neighbours(path: Path, rows: np.ndarray, k: int) -> np.ndarray:
    """The true k nearest rows of `path`'s vectors to each of `rows` (cosine), a chunk at a time."""
    xb = np.load(path, mmap_mode="r")
    xq = unit(np.asarray(xb[rows], dtype=np.float32))
    best = np.full((len(rows), k), -np.inf, dtype=np.float32)
    ids = np.zeros((len(rows), k), dtype=np.int64)
    for start in range(0, len(xb), CHUNK):
        scores = xq @ unit(np.asarray(xb[start : start + CHUNK], dtype=np.float32)).T
        merged = np.concatenate([best, scores], axis=1)
        merged_ids = np.concatenate(
            [ids, np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)], axis=1
        )
        top = np.argsort(-merged, axis=1)[:, :k]
        best = np.take_along_axis(merged, top, axis=1)
        ids = np.take_along_axis(merged_ids, top, axis=1)
    return ids


def true_ten(path: Path, rows: np.ndarray) -> list[list[int]]:
    """The true ten nearest rows of `path`'s vectors to each of `rows`, each row's own left out."""
    nearest = exact_neighbours(path, rows, 11)
    return [[int(i) for i in row if i != own][:10] for row, own in zip(nearest, rows, strict=True)]


def server_env(
    args: argparse.Namespace, data_dir: Path, port: int, filter_fields: str, record_vectors: str
) -> dict[str, str]:
    """The environment of a measured server: this one's, less any XMR_ setting, plus these."""
    return {k: v for k, v in os.environ.items() if not k.startswith("XMR_")} | {
        "XMR_MODEL": args.model,
        "XMR_PRETRAINED": args.pretrained or "",
        "XMR_DATA_DIR": str(data_dir),
        "XMR_PORT": str(port),
        "XMR_LOG_LEVEL": "warning",
        "XMR_QUERY_CACHE_MB": "0",  # figures without the query cache
        "XMR_FILTER_FIELDS": filter_fields,
        "XMR_RECORD_VECTORS": record_vectors,
    }


def recall_at_10(http: httpx.Client, truth: list[list[int]], rows: np.ndarray) -> float:
    """Search with each sampled item's own stored vector through the service (which leaves the
    item itself out); the share of the true ten found."""
    found = []
    for row, true in zip(rows, truth, strict=True):
        body = {"query": [{"item": f"photo-{row}"}], "target": "images", "k": 10}
        response = http.post("/v1/search", json=body)
        response.raise_for_status()
        ids = {hit["id"] for hit in response.json()["results"]}
        found.append(len(ids & {f"photo-{i}" for i in true}) / 10)
    return float(np.mean(found))


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


def p50_ms(http: httpx.Client, params: dict[str, Any], query: str = "a photo") -> tuple[float, int]:
    times, found = [], 0
    for n in range(QUERIES):
        started = time.perf_counter()
        response = http.get("/v1/search/text", params={"q": f"{query} {n}", **params})
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        found = len(response.json()["results"])
    return statistics.median(times[5:]), found


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


class Figures(dict[str, Any]):
    """The report, each figure also printed as it is measured (a long run that fails part way
    still leaves what it measured in its log)."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        print(json.dumps({key: value}), flush=True)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument(
        "--filter-fields", default="", help="XMR_FILTER_FIELDS for the server, e.g. rare"
    )
    parser.add_argument(
        "--record-vectors",
        choices=["float32", "float16"],
        default="float32",
        help="XMR_RECORD_VECTORS: how the copy beside each record is stored",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where the folder and data go (a big disk)"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="move the folder and the data directory here at the end (for bench.scale_again)",
    )
    args = parser.parse_args()
    from index import IndexOptions
    from index.store import ItemStore
    from models.open_clip_encoder import OpenClipEncoder
    from xmr.import_embeddings import import_embeddings

    encoder = OpenClipEncoder.load(args.model, args.pretrained or "")
    report = Figures(
        items=args.items,
        model=args.model,
        filter_fields=args.filter_fields,
        record_vectors=args.record_vectors,
    )
    with tempfile.TemporaryDirectory(prefix="xmr-scale-", dir=args.work_dir) as scratch:
        root = Path(scratch)
        (root / "folder").mkdir()
        started = time.perf_counter()
        write_folder(root / "folder", args.items, encoder.dim)
        report["write_folder_s"] = round(time.perf_counter() - started, 1)
        data_dir = root / "data"
        options = IndexOptions(record_vectors=args.record_vectors)
        store = ItemStore(data_dir, encoder.model_id, encoder.dim, options)
        started = time.perf_counter()
        imported = import_embeddings(root / "folder", store, encoder, chunk=10_000)
        report["import_items_per_s"] = round(imported.images / (time.perf_counter() - started))
        started = time.perf_counter()
        store.wait_for_builds(3600)  # the structure `auto` plans for this size, built whole
        report["index_build_after_import_s"] = round(time.perf_counter() - started, 1)
        report["import_peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        started = time.perf_counter()
        store.snapshot()
        report["snapshot_s"] = round(time.perf_counter() - started, 2)
        timing = store.last_snapshot
        assert timing is not None
        report["snapshot_write_lock_s"] = timing.write_lock_s
        report["snapshot_mb"] = round(timing.bytes / 2**20, 1)
        store.close(save=True)
        sample = np.random.default_rng(1).choice(args.items, RECALL_SAMPLE, replace=False)
        truth = true_ten(root / "folder" / "vectors.npy", sample)
        report["disk_mb_per_million"] = round(disk_mb(data_dir) / args.items * 1e6, 1)
        port = free_port()
        env = server_env(args, data_dir, port, args.filter_fields, args.record_vectors)
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
                keyword, keyword_found = p50_ms(http, {"k": 10, "mode": "keyword", "q": "town123"})
                report["keyword_search_p50_ms"] = round(keyword, 2)
                report["keyword_search_found"] = keyword_found
                hybrid, hybrid_found = p50_ms(http, {"k": 10, "mode": "hybrid", "q": "town123"})
                report["hybrid_search_p50_ms"] = round(hybrid, 2)
                report["hybrid_search_found"] = hybrid_found
                report["recall_at_10"] = round(recall_at_10(http, truth, sample), 3)
                report["rss_mb"] = round(rss_mb(process.pid), 1)
                report["import_through_server_items_per_s"] = import_through(
                    base, root / "more", min(args.items, SERVER_IMPORT), encoder.dim
                )
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
        status = emit(report, args.json_out)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for part in ("folder", "data"):
                shutil.move(root / part, args.keep / part)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
