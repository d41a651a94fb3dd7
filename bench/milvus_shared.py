"""What a shared Milvus server costs a search, and what Strong consistency costs on top.

Two stores share one PostgreSQL (as two replicas do) and one Milvus server: Milvus Lite's gRPC
server and the Milvus 2.3 standalone binary (tests/milvus_servers.py). For each, in interleaved
rounds: a search on the reader as xmr makes it (it waits until Milvus shows the newest write
any replica acknowledged: its timestamp, kept in the database), with consistency Strong (waits
for the server's newest timestamp) and Bounded (may answer from a view a few seconds old), with
no writes between; and a write on one store followed at once by a search on the other
(read-your-writes: xmr's and Strong; Bounded would miss it). The baseline, same run: the same
searches on in-process FAISS (each replica's own copy). Medians in milliseconds.

    python -m bench.milvus_shared --items 20000 --json-out bench/milvus-shared-cpu.json
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import benchmark_parser, emit
from index import IndexOptions, NewItem
from index.store import ItemStore
from tests.milvus_servers import lite_server, standalone_server, why_no_standalone
from tests.postgres import throwaway_cluster

DIM = 512


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def median_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


@contextlib.contextmanager
def two_replicas(
    folder: Path, database_url: str, options: IndexOptions
) -> Iterator[tuple[ItemStore, ItemStore]]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    opts = replace(options, database_url=database_url)
    a = ItemStore(folder / "a", "bench/512", DIM, opts, namespace)
    b = ItemStore(folder / "b", "bench/512", DIM, opts, namespace)
    try:
        yield a, b
    finally:
        b.close()
        a.destroy()


@contextlib.contextmanager
def consistency(index: Any, level: str) -> Iterator[None]:
    """Search `index` at a Milvus consistency level instead of xmr's write mark."""
    if level == "xmr":
        yield
        return
    index._consistency = lambda: {"consistency_level": level}
    try:
        yield
    finally:
        del index._consistency


def measure(a: ItemStore, b: ItemStore, items: int, rounds: int) -> dict[str, Any]:
    xb = unit_rows(items, seed=0)
    start = time.perf_counter()
    for first in range(0, items, 1000):
        chunk = xb[first : first + 1000]
        a.upsert([NewItem(f"t{first + i}", "text", v, text="x") for i, v in enumerate(chunk)])
    load_s = time.perf_counter() - start
    queries = unit_rows(rounds, seed=1)
    b.catch_up()
    figures: dict[str, Any] = {"load_items_per_s": round(items / load_s, 1)}
    index = b._serving["text"]
    levels = ["xmr", "Strong", "Bounded"] if hasattr(index, "_consistency") else ["xmr"]
    searches: dict[str, list[float]] = {level: [] for level in levels}
    for q in queries:  # interleaved rounds: a level never runs all its searches together
        for level in levels:
            with consistency(index, level):
                searches[level].append(
                    median_ms(lambda q=q: b.searches.vector("text", q[None], 10), 1)
                )
    for level, times in searches.items():
        figures[f"search_p50_ms[{level}]"] = round(statistics.median(times), 3)
    for number, level in enumerate(levels[:2]):  # Bounded would miss writes: not a choice
        fresh = unit_rows(rounds, seed=2 + number)
        write_then_search = []
        missed = 0
        for n, v in enumerate(fresh):
            with consistency(b._serving["text"], level):
                begin = time.perf_counter()
                a.upsert([NewItem(f"new-{level}-{n}", "text", v, text="x")])
                hits = b.searches.vector("text", v[None], 1)[0]
                write_then_search.append((time.perf_counter() - begin) * 1000)
            missed += not hits or hits[0].record.id != f"new-{level}-{n}"
        figures[f"write_then_search_p50_ms[{level}]"] = round(
            statistics.median(write_then_search), 3
        )
        figures[f"read_your_writes_missed[{level}]"] = missed
    return figures


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "items": args.items,
        "dim": DIM,
        "rounds": args.rounds,
        "servers": {},
    }
    with throwaway_cluster() as database_url:
        folder = Path(f"/tmp/xmr-bench-milvus-{uuid.uuid4().hex[:8]}")
        try:
            measure_all(report, folder, database_url, args.items, args.rounds)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return emit(report, args.json_out)


def measure_all(
    report: dict[str, Any], folder: Path, database_url: str, items: int, rounds: int
) -> None:
    with two_replicas(folder / "faiss", database_url, IndexOptions()) as (a, b):
        report["servers"]["faiss (baseline, in each replica)"] = measure(a, b, items, rounds)
    servers = [("milvus-lite server", lite_server)]
    if why_no_standalone() is None:
        servers.append(("milvus 2.3.5 standalone", standalone_server))
    for name, start in servers:
        with start() as server:
            options = IndexOptions(backend="milvus", milvus_uri=server.uri)
            with two_replicas(folder / name.replace(" ", "-"), database_url, options) as ab:
                report["servers"][name] = measure(*ab, items, rounds)


if __name__ == "__main__":
    raise SystemExit(main())
