"""Steerable queries at scale: hybrid and keyword search against vector-only search, and the
rate of a near-duplicates job, on a collection of `--items` texts (100,000 by default).

    .venv/bin/python -m bench.queries --items 100000 --queries 200 --json-out bench/queries-cpu.json

The collection is written straight into a data directory through ItemStore (as the server would
store it: records, keyword index, vectors; the index structure the planner picks for its size,
built before the server starts): texts of 8 to 12 words drawn from a 20,000-word vocabulary
with Zipf frequencies, an invoice number in each item's metadata, and vectors of the model's
width (random unit vectors; `--duplicates` of them are noisy copies of another, cosine about
0.98). Then the server runs on it with `--model` (it encodes every query) and each mode is timed
through HTTP, one request at a time, with the same queries: GET /v1/search/text with mode
vector, keyword, hybrid (relative fusion) and hybrid with rrf. Last, GET /v1/duplicates over all
items (always as a job here) is timed from the request to the job's end, and its groups are
compared with the planted ones.
"""

from __future__ import annotations

import os
import platform
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
from bench.run import REPO, free_port, stop, wait_http
from index import IndexOptions, NewItem
from index.duplicates import Pair, group_pairs
from index.store import ItemStore
from models import OpenClipEncoder
from models.options import LoadOptions
from xmr.client import XmrClient

VOCABULARY = 20_000
WRITE_BATCH = 2_000


def word(n: int) -> str:
    """A made-up word for rank n: distinct, pronounceable, lower case."""
    syllables = ["ka", "lo", "mi", "ne", "su", "ra", "to", "vi", "ze", "pu", "qa", "wo"]
    out = []
    while True:
        out.append(syllables[n % len(syllables)])
        n //= len(syllables)
        if n == 0:
            return "".join(out)


def build_collection(
    data_dir: Path, model_id: str, dim: int, items: int, duplicates: int, seed: int
) -> list[tuple[int, int, float]]:
    """Write the collection; the planted pairs (copy, original, their cosine)."""
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.2, size=items * 12) % VOCABULARY
    lengths = rng.integers(8, 13, size=items)
    store = ItemStore(data_dir, model_id, dim, IndexOptions())
    vectors = rng.normal(size=(items, dim)).astype(np.float32)
    copies = rng.choice(np.arange(1, items), size=duplicates, replace=False)
    originals = []
    for copy in copies:  # a noisy copy of an earlier item: cosine about 0.98
        originals.append(int(rng.integers(0, copy)))
        vectors[copy] = vectors[originals[-1]] + rng.normal(size=dim) * 0.2
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    planted = [
        (int(c), o, float(vectors[c] @ vectors[o])) for c, o in zip(copies, originals, strict=True)
    ]
    position = 0
    for start in range(0, items, WRITE_BATCH):
        batch = []
        for n in range(start, min(items, start + WRITE_BATCH)):
            words = [word(int(r)) for r in ranks[position : position + lengths[n]]]
            position += int(lengths[n])
            metadata = {"ref": f"INV-2024-{n:06d}", "shelf": word(n % 97)}
            batch.append(NewItem.text_item(f"t{n}", vectors[n], " ".join(words), metadata))
        store.upsert(batch)
    store.wait_for_builds()
    store.close()
    return planted


def expected_groups(planted: list[tuple[int, int, float]], threshold: float) -> set[frozenset[str]]:
    """The groups an exact range search finds among the planted pairs (random unit vectors of
    this width are far below any useful threshold from each other)."""
    pairs = [Pair(min(c, o), max(c, o), score) for c, o, score in planted if score >= threshold]
    return {frozenset(f"t{label}" for label in g.labels) for g in group_pairs(pairs)}


def latencies(base: str, params: list[dict[str, Any]]) -> dict[str, float]:
    with httpx.Client(base_url=base, timeout=60) as client:
        for query in params[:5]:  # warm-up
            client.get("/v1/search/text", params=query).raise_for_status()
        took = []
        for query in params:
            started = time.perf_counter()
            client.get("/v1/search/text", params=query).raise_for_status()
            took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return {
        "p50_ms": round(statistics.median(took), 2),
        "p99_ms": round(took[min(len(took) - 1, int(len(took) * 0.99))], 2),
    }


def duplicates_job(base: str, threshold: float, expected: set[frozenset[str]]) -> dict[str, Any]:
    with XmrClient(base, timeout=60) as client:
        started = time.time()
        answer = client.duplicates(threshold, "texts", None, 10_000, 0)
        assert "job_id" in answer, answer
        job = client.wait_for_job(answer["job_id"], poll_s=1)
        assert job["status"] == "done", job
        seconds = float(job["updated_at"]) - started
        found = {frozenset(g["ids"]) for g in job["result"]["groups"]}
        return {
            "seconds": round(seconds, 1),
            "items_per_s": round(job["total"] / seconds, 1),
            "groups_expected": len(expected),
            "groups_found": job["result"]["total_groups"],
            "groups_found_exactly": len(found & expected),
        }


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--duplicates", type=int, default=1_000)
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args()
    encoder = OpenClipEncoder.load(
        args.model, args.pretrained, LoadOptions(device="cpu", runtime="torch")
    )
    model_id, dim = encoder.model_id, encoder.dim
    del encoder
    rng = np.random.default_rng(7)
    queries = [
        f"{word(int(a))} {word(int(b))}" for a, b in rng.integers(20, 2000, (args.queries, 2))
    ]
    modes = {
        "vector": {"mode": "vector"},
        "keyword": {"mode": "keyword"},
        "hybrid_relative": {"mode": "hybrid"},
        "hybrid_rrf": {"mode": "hybrid", "fusion": "rrf"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        planted = build_collection(data, model_id, dim, args.items, args.duplicates, seed=1)
        build_s = time.perf_counter() - started
        port = free_port()
        env = os.environ | {
            "XMR_MODEL": args.model,
            "XMR_PRETRAINED": args.pretrained,
            "XMR_DEVICE": "cpu",
            "XMR_DATA_DIR": str(data),
            "XMR_PORT": str(port),
            "XMR_LOG_LEVEL": "warning",
            "XMR_QUERY_CACHE_MB": "0",  # figures without the query cache
            "XMR_DUPLICATES_SYNC_LIMIT": "0",  # always the job, whose rate is measured
        }
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/readyz", timeout_s=600)
            info = httpx.get(f"{base}/v1/info").json()
            results = {
                name: latencies(
                    base, [{"q": q, "target": "texts", "k": 10, **extra} for q in queries]
                )
                for name, extra in modes.items()
            }
            dupes = duplicates_job(base, args.threshold, expected_groups(planted, args.threshold))
        finally:
            stop(process)
    vector_p50 = results["vector"]["p50_ms"]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": model_id,
        "runs_as": f"{info.get('runtime')} {info.get('precision')}",
        "items": args.items,
        "index": info.get("indexes", {}).get("text", info.get("index")),
        "collection_build_s": round(build_s, 1),
        "search_concurrency_1": results,
        "ratios_to_vector_p50": {
            name: round(r["p50_ms"] / vector_p50, 2) for name, r in results.items()
        },
        "duplicates": {"threshold": args.threshold, "planted": args.duplicates, **dupes},
    }
    return emit(report, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
