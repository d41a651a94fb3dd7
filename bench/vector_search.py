"""Vector search alone: Flat (exact), HNSW and IVF-PQ on synthetic 512-d unit vectors.

    .venv/bin/python -m bench.vector_search --sizes 100000 1000000 --json-out bench/vectors.json

The vectors are drawn around 2,000 random centres (embeddings cluster; pure noise would be a
needlessly hard case). Queries are fresh draws from the same distribution. Each index is built
and searched through the service's own FaissVectorIndex with its default parameters (HNSW
efSearch 128, IVF nprobe 32; IVF sized by the service's rule: about 4*sqrt(n) lists, SQ8 codes
of one byte a dimension, PQ codes of d/8 bytes).
Recall@10 is measured against the exact Flat result of the same run; latency is per single
query, QPS for batches of 64.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from bench.report import emit
from index.planner import ivf_pq_spec, ivf_sq8_spec
from index.vectors import FaissVectorIndex

DIM = 512
K = 10


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`n` unit vectors around `centres` (of their dimension)."""
    d = centres.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        picks = centres[rng.integers(0, len(centres), m)]
        out[start : start + m] = unit(
            picks + rng.normal(0, 0.35, (m, d)).astype(np.float32) / np.sqrt(d) * 4
        )
    return out


def spec_for(kind: str, n: int) -> str:
    """The FAISS description the service would use, by its own sizing rules for IVF."""
    if kind == "IVF-PQ":
        return ivf_pq_spec(n, DIM)
    if kind == "IVF-SQ8":
        return ivf_sq8_spec(n)
    return kind


def build(spec: str, xb: np.ndarray) -> tuple[FaissVectorIndex, float]:
    """Built exactly as the service builds it (index.vectors), default search parameters."""
    started = time.perf_counter()
    labels = np.arange(len(xb), dtype=np.int64)
    index = FaissVectorIndex.build(DIM, spec, lambda: [(labels, xb)])
    return index, time.perf_counter() - started


def measure(index: FaissVectorIndex, xq: np.ndarray, truth: np.ndarray | None) -> dict[str, float]:
    singles = []
    for q in xq[:200]:
        started = time.perf_counter()
        index.search(q[None], K)
        singles.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    for start in range(0, len(xq), 64):
        index.search(xq[start : start + 64], K)
    qps = len(xq) / (time.perf_counter() - started)
    labels = index.search(xq, K)[1]
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
    parser.add_argument("--indexes", nargs="+", default=["Flat", "HNSW32", "IVF-SQ8", "IVF-PQ"])
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
            spec = spec_for(kind, n)
            index, build_s = build(spec, xb)
            result: dict[str, float | str] = {"spec": spec, **measure(index, xq, truth)}
            if kind == "Flat":
                truth = index.search(xq, K)[1]
            result["build_s"] = round(build_s, 1)
            report["results"][f"{kind}@{n}"] = result
            print(f"{kind:8} n={n:>9,}  {result}", flush=True)
            del index
    return emit(report, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
