"""Vector search alone: Flat (exact), HNSW and IVF-PQ on synthetic 512-d unit vectors.

    .venv/bin/python -m bench.vector_search --sizes 100000 1000000 --json-out bench/vectors.json

The vectors are drawn around 2,000 random centres (embeddings cluster; pure noise would be a
needlessly hard case). Queries are fresh draws from the same distribution. Recall@10 is measured
against the exact Flat result of the same run; latency is per single query, QPS for batches of 64.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

DIM = 512
K = 10


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        picks = centres[rng.integers(0, len(centres), m)]
        out[start : start + m] = unit(
            picks + rng.normal(0, 0.35, (m, DIM)).astype(np.float32) / np.sqrt(DIM) * 4
        )
    return out


def build(kind: str, xb: np.ndarray) -> tuple[faiss.Index, float]:
    started = time.perf_counter()
    if kind == "Flat":
        index = faiss.IndexFlatIP(DIM)
    elif kind == "HNSW32":
        index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
    else:
        nlist = 1024 if len(xb) >= 500_000 else 256
        index = faiss.index_factory(DIM, f"IVF{nlist},PQ64", faiss.METRIC_INNER_PRODUCT)
        sample = xb[
            np.random.default_rng(1).choice(len(xb), min(len(xb), 64 * nlist), replace=False)
        ]
        index.train(sample)
        index.nprobe = 32
    index.add(xb)
    return index, time.perf_counter() - started


def measure(index: faiss.Index, xq: np.ndarray, truth: np.ndarray | None) -> dict[str, float]:
    if isinstance(index, faiss.IndexHNSWFlat):
        index.hnsw.efSearch = 64
    singles = []
    for q in xq[:200]:
        started = time.perf_counter()
        index.search(q[None], K)
        singles.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    _, labels = index.search(xq, K)
    qps = len(xq) / (time.perf_counter() - started)
    recall = (
        1.0
        if truth is None
        else float(np.mean([len(set(a) & set(b)) / K for a, b in zip(labels, truth, strict=True)]))
    )
    return {
        "p50_ms": round(float(np.median(singles)), 3),
        "qps_batch": round(qps, 1),
        "recall_at_10": round(recall, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--indexes", nargs="+", default=["Flat", "HNSW32", "IVF-PQ"])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(2000, DIM)).astype(np.float32))
    xq = clustered(args.queries, centres, rng)
    report: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__}",
        "results": {},
    }
    for n in args.sizes:
        xb = clustered(n, centres, rng)
        truth = None
        for kind in args.indexes:
            index, build_s = build(kind, xb)
            result = measure(index, xq, truth)
            if kind == "Flat":
                truth = index.search(xq, K)[1]
            result["build_s"] = round(build_s, 1)
            report["results"][f"{kind}@{n}"] = result
            print(f"{kind:8} n={n:>9,}  {result}", flush=True)
            del index
    text = json.dumps(report, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
