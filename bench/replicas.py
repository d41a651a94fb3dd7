"""Several replicas on one PostgreSQL: what the shared state costs, and what replicas give.

    .venv/bin/python -m bench.replicas --json-out bench/replicas-cpu.json

1. Writes at the store (ItemStore.upsert, 512-d vectors, batches of 1 and of 32 items): records
   in SQLite in the data directory against records in PostgreSQL (a throwaway cluster on
   loopback, `synchronous_commit` on, as xmr runs it).
2. The catch-up before each search: `store.catch_up()` when nothing is new (the one query for
   the log's sequence) against a vector search over 10,000 items on the same store.
3. Text search through HAProxy (Debian's) in front of one, two and three `python -m app`
   replicas on that PostgreSQL (`--queries` queries at concurrency `--concurrency`, k=10, over
   `--items` texts written first), and one replica on SQLite without a balancer as the
   baseline. Each replica is pinned (taskset) to its share of the cores, as on machines of its
   own; with more replicas than cores, two share one. On a machine with few cores the ratio
   says what another replica costs or gives here, not how it scales on machines of their own.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import benchmark_parser, emit
from bench.run import query, search_load
from index import IndexOptions, NewItem
from index.store import ItemStore
from tests.cluster.conftest import HAProxy, ReplicaSet, haproxy_path
from tests.postgres import running_cluster, why_unavailable
from xmr.client import XmrClient

DIM = 512
PATH, TEXTS = "/v1/search/text", {"target": "texts"}


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def writes_per_s(store: ItemStore, total: int, batch: int, seed: int) -> float:
    vectors = unit_vectors(total, seed)
    started = time.perf_counter()
    for start in range(0, total, batch):
        store.upsert(
            [
                NewItem(id=f"{seed}-{n}", kind="text", vector=vectors[n], text=f"note {n}")
                for n in range(start, min(start + batch, total))
            ]
        )
    return total / (time.perf_counter() - started)


def store_figures(root: Path, database_url: str, items: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, url in (("sqlite", None), ("postgresql", database_url)):
        options = IndexOptions(database_url=url)  # a namespace apart from the replicas' default
        store = ItemStore(root / f"store-{name}", "bench/1", DIM, options, "bench-store")
        try:
            figures[name] = {
                "writes_per_s_batch_1": round(writes_per_s(store, 500, 1, 1), 1),
                "writes_per_s_batch_32": round(writes_per_s(store, items, 32, 2), 1),
            }
            queries = unit_vectors(200, 3)
            started = time.perf_counter()
            for q in queries:
                store.searches.vector("text", q[None], 10)
            figures[name]["vector_search_ms"] = round(
                (time.perf_counter() - started) * 1000 / len(queries), 3
            )
            if name == "postgresql":
                timings = []
                for _ in range(1000):
                    began = time.perf_counter()
                    store.catch_up()
                    timings.append((time.perf_counter() - began) * 1000)
                figures[name]["catch_up_ms_p50"] = round(statistics.median(timings), 3)
        finally:
            store.close()
    figures["writes_ratio_postgresql_vs_sqlite"] = {
        batch: round(figures["postgresql"][batch] / figures["sqlite"][batch], 2)
        for batch in ("writes_per_s_batch_1", "writes_per_s_batch_32")
    }
    return figures


def fill(client: XmrClient, items: int) -> None:
    for start in range(0, items, 100):
        client.index_texts(
            [{"id": f"t{n}", "text": query(n)} for n in range(start, min(start + 100, items))]
        )


def replica_figures(root: Path, database_url: str, args: Any, haproxy: str) -> dict[str, Any]:
    settings = {
        "XMR_MODEL": args.model,
        "XMR_PRETRAINED": args.pretrained,
        "XMR_LOG_LEVEL": "warning",
        "XMR_QUERY_CACHE_MB": "0",  # figures without the query cache
        "XMR_DECODE_WORKERS": "1",
    }
    figures: dict[str, Any] = {}
    alone = ReplicaSet(root / "sqlite", database_url, **settings)
    single = alone.add(XMR_DATABASE_URL="", XMR_BLOB_DIR="")
    del single.env["XMR_DATABASE_URL"], single.env["XMR_BLOB_DIR"]
    try:
        single.start()
        single.wait_ready(600)
        with single.client() as client:
            fill(client, args.items)
        figures["sqlite_one_replica_direct"] = asyncio.run(
            search_load(single.url, PATH, args.queries, args.concurrency, TEXTS)
        )
    finally:
        alone.stop()
    cores = [str(core) for core in sorted(os.sched_getaffinity(0))]
    for count in (1, 2, 3):
        # each replica on its share of the cores, as replicas on machines of their own would not
        # compete for theirs (more replicas than cores share one)
        shared = ReplicaSet(root / f"pg-{count}", database_url, **settings)
        pinned = [
            ",".join(cores[n::count]) if count <= len(cores) else cores[n % len(cores)]
            for n in range(count)
        ]
        try:
            replicas = shared.start(count, pinned)
            if count == 1:
                with replicas[0].client() as client:
                    fill(client, args.items)
                figures["postgresql_one_replica_direct"] = asyncio.run(
                    search_load(replicas[0].url, PATH, args.queries, args.concurrency, TEXTS)
                )
            balancer = HAProxy(haproxy, root / f"pg-{count}", replicas)
            try:
                figures[f"haproxy_{count}_replicas"] = asyncio.run(
                    search_load(balancer.url, PATH, args.queries, args.concurrency, TEXTS)
                )
            finally:
                balancer.stop()
        finally:
            shared.stop()
    base = figures["haproxy_1_replicas"]["qps"]
    figures["qps_ratio_vs_one_replica"] = {
        count: round(figures[f"haproxy_{count}_replicas"]["qps"] / base, 2) for count in (2, 3)
    }
    figures["postgresql_vs_sqlite_direct_p50"] = round(
        figures["postgresql_one_replica_direct"]["p50_ms"]
        / figures["sqlite_one_replica_direct"]["p50_ms"],
        2,
    )
    return figures


def cpu_flags() -> list[str]:
    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(wanted & flags)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    reason = why_unavailable()
    haproxy = haproxy_path()
    if reason is not None or haproxy is None:
        print(reason or "HAProxy is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, running_cluster() as postgres:
        root = Path(tmp)
        store = store_figures(root, postgres.url, args.items)
        served = replica_figures(root, postgres.url, args, haproxy)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, flags {' '.join(cpu_flags())}",
        "model": f"{args.model}/{args.pretrained or 'random-init'}",
        "items": args.items,
        "queries": args.queries,
        "concurrency": args.concurrency,
        "store": store,
        "search": served,
        "postgres": subprocess.run(
            ["psql", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }
    return emit(report, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
