"""A search's index share on one store, by k: warm, and with the caches emptied before each.

    .venv/bin/python bench/records_read.py --json-out bench/records-read-cpu.json
    PYTHONPATH=/tmp/old .venv/bin/python bench/records_read.py   # the code of another tree

An ItemStore as the server opens it (SQLite records, a flat FAISS index) with `--items` texts,
each with photo-like metadata (album, camera, date, GPS, tags, rating); then
`searches.vector` for random queries at each k, the p50 of `--searches` calls: back to back
(warm), and each after writing a 64 MB array on the same thread, as a model call empties the
caches before a server's search. Run as a file, the imports of the store come from
PYTHONPATH first: another checkout's code measured by the same script.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH: another tree wins

import index  # noqa: E402
from bench.report import benchmark_parser, emit  # noqa: E402
from bench.runtimes import cpu_flags  # noqa: E402
from index.store import ItemStore  # noqa: E402
from index.types import NewItem  # noqa: E402
from index.vectors import use_search_threads  # noqa: E402

DIM = 512
KS = (10, 24, 100)
FLUSH_BYTES = 64 * 2**20


def photo_metadata(n: int) -> dict[str, Any]:
    return {
        "album": f"{2015 + n % 10}-summer",
        "camera": {"make": "Canon", "model": "EOS R6", "lens": "RF24-105mm F4 L IS USM"},
        "taken_at": f"2024-07-{1 + n % 28:02d}T12:{n % 60:02d}:00",
        "gps": {"lat": 52.52 + n * 1e-4, "lon": 13.405 - n * 1e-4},
        "tags": ["beach", "family", "sunset"][: 1 + n % 3],
        "rating": n % 5,
    }


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def p50_us(
    store: ItemStore, rng: np.random.Generator, k: int, n: int, flush: np.ndarray | None
) -> float:
    samples = []
    for _ in range(n):
        query = unit_rows(rng, 1)
        if flush is not None:
            flush += 1.0
        started = time.perf_counter()
        store.searches.vector("text", query, k)
        samples.append((time.perf_counter() - started) * 1e6)
    return round(statistics.median(samples), 1)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--searches", type=int, default=400)
    args = parser.parse_args()
    use_search_threads(1)  # as the server's store threads
    rng = np.random.default_rng(0)
    flush = np.zeros(FLUSH_BYTES // 8)
    with tempfile.TemporaryDirectory() as tmp:
        store = ItemStore(Path(tmp), "bench", DIM)
        try:
            vectors = unit_rows(rng, args.items)
            store.upsert(
                [
                    NewItem(f"item-{n}", "text", vectors[n], photo_metadata(n), f"caption {n}")
                    for n in range(args.items)
                ]
            )
            figures = {
                f"k={k}": {
                    "warm_us": p50_us(store, rng, k, args.searches, None),
                    "caches_emptied_us": p50_us(store, rng, k, args.searches, flush),
                }
                for k in KS
            }
        finally:
            store.close()
    return emit(
        {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "cpu_flags": cpu_flags(),
            "code": str(Path(index.__file__).resolve().parent.parent),
            "items": args.items,
            "p50_of_searches_vector": figures,
        },
        args.json_out,
    )


if __name__ == "__main__":
    raise SystemExit(main())
