"""Re-ranking the candidates of a product-quantized index by their exact cosine.

IVF-PQ keeps d/8 bytes of each vector (64 for 512-d, against 512 for SQ8), which is what lets
10M vectors fit in well under a gigabyte, but its scores order close neighbours loosely: on
1M clustered 512-d vectors IVF4096,PQ64 found 0.30 of the true ten (BENCHMARKS.md). The records
keep every vector whole (float32 or float16), so a search asks the index for REFINE_FACTOR
times as many candidates, reads theirs from the records and orders them by the exact inner
product: the scores a caller sees are then true cosines, as on every other structure.

How deep to re-rank was measured at 10M (IVF16384,PQ64, BENCHMARKS.md): the codes alone found
0.19 of the true ten; re-ranking the best 100 found 0.61, 300 0.82, 1,000 0.97, whatever
nprobe. 50 per result (500 for k=10) found 0.92 through the service, for 21 ms a text query
against 11 ms with 10 per result: the vectors are read from the records (SQLite's pages).
"""

from __future__ import annotations

import re

import numpy as np

REFINE_FACTOR = 50
MAX_REFINED = 2000  # candidates read per query at most (a hybrid search asks for 1,000)
_CODES = re.compile(r"(?<!O)(PQ|RQ|LSQ)\d")  # OPQ is a rotation before the codes, not codes


def needs_refining(spec: str) -> bool:
    """Whether `spec` stores product-quantized codes and no full vectors to re-rank with
    itself (a `Refine(...)` part or an `RFlat` suffix does that inside FAISS)."""
    parts = [part.strip() for part in spec.split(",")]
    if any(part.startswith("Refine") or part == "RFlat" for part in parts):
        return False
    return any(_CODES.search(part) for part in parts)


def refine_depth(spec: str, k: int) -> int:
    """How many candidates to ask `spec`'s index for, to return the best `k`."""
    if not needs_refining(spec):
        return k
    return max(k, min(k * REFINE_FACTOR, MAX_REFINED))


def rescored(
    xq: np.ndarray, candidates: np.ndarray, stored_labels: np.ndarray, stored: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best `k` of each query's `candidates` (labels, -1 for none) by the exact inner
    product with their `stored` vectors (rows of `stored_labels`), best first. A candidate with
    no stored vector (deleted since the index search) drops out; -1 and -inf pad a short row."""
    position = {int(label): row for row, label in enumerate(stored_labels.tolist())}
    scores = np.full((len(xq), k), -np.inf, dtype=np.float32)
    labels = np.full((len(xq), k), -1, dtype=np.int64)
    for q, row in enumerate(candidates.tolist()):
        kept = [label for label in dict.fromkeys(row) if label >= 0 and label in position]
        if not kept:
            continue
        exact = stored[[position[label] for label in kept]] @ xq[q]
        best = np.argsort(-exact, kind="stable")[:k]
        scores[q, : len(best)] = exact[best]
        labels[q, : len(best)] = np.asarray(kept, dtype=np.int64)[best]
    return scores, labels
