"""Building an IVF index on one core, as the service's background rebuild does: time and recall.

    python -m bench.ivf_build --items 1000000 IVF4096,SQ8 IVF4096_HNSW32,SQ8 IVF16384_HNSW32,PQ64

Vectors and queries around 2,000 centres (bench.vector_search's), built through
FaissVectorIndex.build from chunks of 10,000 (the records' page size), FAISS on one thread;
recall@10 of 200 queries against the exact (Flat) answer, and their mean latency. For
product-quantized structures also the recall after the store's re-ranking (index/refine.py:
REFINE_FACTOR times the candidates, ordered by their exact cosine), `refined_recall_at_10`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.report import emit
from bench.vector_search import DIM, clustered, unit
from index.refine import refine_depth, rescored
from index.vectors import FaissVectorIndex, use_search_threads

CHUNK = 10_000


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    shares = [len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]
    return round(float(np.mean(shares)), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("specs", nargs="+", help="FAISS factory strings")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    use_search_threads(1)
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(2000, DIM)).astype(np.float32))
    xq = clustered(200, centres, rng)
    xb = clustered(args.items, centres, rng)
    labels = np.arange(args.items)
    exact = FaissVectorIndex.build(DIM, "Flat", lambda: [(labels, xb)])
    truth = exact.search(xq, 10)[1]
    del exact
    report: dict = {"items": args.items, "results": {}}
    for spec in args.specs:
        started = time.perf_counter()
        index = FaissVectorIndex.build(
            DIM,
            spec,
            lambda: ((labels[s : s + CHUNK], xb[s : s + CHUNK]) for s in range(0, len(xb), CHUNK)),
        )
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        found = index.search(xq, 10)[1]
        search_ms = (time.perf_counter() - started) / len(xq) * 1000
        result = {"build_s": round(build_s, 1), "recall_at_10": recall_at_10(found, truth)}
        result["search_ms"] = round(search_ms, 2)
        depth = refine_depth(spec, 10)
        if depth > 10:
            started = time.perf_counter()
            candidates = index.search(xq, depth)[1]
            wanted = np.unique(candidates[candidates >= 0])
            refined = rescored(xq, candidates, wanted, xb[wanted], 10)[1]
            result["refined_search_ms"] = round((time.perf_counter() - started) / len(xq) * 1e3, 2)
            result["refined_recall_at_10"] = recall_at_10(refined, truth)
        report["results"][spec] = result
        print(spec, report["results"][spec], flush=True)
        del index
    return emit(report, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
