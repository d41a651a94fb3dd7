"""Which FAISS structure an index of a given size should use (after autofaiss's rule of thumb).

Exact search (Flat) while the index is small; past a threshold HNSW while its graph fits the
memory budget, then IVF with 8-bit scalar quantization (4x smaller than the vectors, recall@10
about 0.98), and IVF-PQ (32x smaller, recall lower) only when even that does not fit.
A fixed description (`XMR_INDEX=HNSW32`) is used as soon as there are enough vectors to train it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from index.vectors import DEFAULT_EF_SEARCH, DEFAULT_NPROBE, EXACT_SPEC, min_training_vectors

AUTO = "auto"
HNSW_M = 32


@dataclass(frozen=True)
class IndexOptions:
    """How the vector indexes are built and searched."""

    spec: str = AUTO  # "auto" or a FAISS factory string
    approx_threshold: int = 100_000  # auto: exact search below this many vectors
    memory_budget_mb: float = 4096.0  # auto: HNSW while its size fits, then IVF-SQ8, then IVF-PQ
    rebuild_deleted_fraction: float = 0.2  # rebuild approximate indexes past this share deleted
    ef_search: int = DEFAULT_EF_SEARCH
    nprobe: int = DEFAULT_NPROBE


def hnsw_bytes(n: int, d: int, m: int = HNSW_M) -> int:
    """Vectors plus the level-0 graph (2M links of 4 bytes) and upper levels (about 10%)."""
    return int(n * (4 * d + 2 * m * 4 * 1.1 + 16))


def ivf_lists(n: int) -> int:
    """About 4*sqrt(n) inverted lists, a power of two, with 39 training points for each."""
    nlist = min(2 ** round(math.log2(max(4 * math.sqrt(n), 1))), 65_536)
    while nlist > 1 and 39 * nlist > n:
        nlist //= 2
    return nlist


def ivf_sq8_spec(n: int) -> str:
    return f"IVF{ivf_lists(n)},SQ8"


def ivf_pq_spec(n: int, d: int) -> str:
    """IVF with d/8 one-byte PQ codes (or the nearest code count that divides d)."""
    m = next(m for m in (d // 8, d // 4, d // 2, d) if m > 0 and d % m == 0)
    return f"IVF{ivf_lists(n)},PQ{m}"


def sq8_bytes(n: int, d: int) -> int:
    return int(n * (d + 8) * 1.05)


def planned_spec(options: IndexOptions, n: int, d: int, current: str = EXACT_SPEC) -> str:
    """The structure an index of `n` vectors should have now.

    `current` adds hysteresis: an approximate index only returns to Flat below half the
    threshold, so an index near the threshold is not rebuilt back and forth.
    """
    if options.spec != AUTO:
        enough = n >= min_training_vectors(options.spec, d)
        return options.spec if enough or current == options.spec else EXACT_SPEC
    threshold = options.approx_threshold
    if n < threshold and (current == EXACT_SPEC or n < threshold // 2):
        return EXACT_SPEC
    budget = options.memory_budget_mb * 1024 * 1024
    if hnsw_bytes(n, d) <= budget:
        return f"HNSW{HNSW_M}"
    if sq8_bytes(n, d) <= budget:
        return ivf_sq8_spec(n)
    return ivf_pq_spec(n, d)
