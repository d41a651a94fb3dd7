"""Which FAISS structure an index of a given size should use (after autofaiss's rule of thumb).

Exact search (Flat) while the index is small; past a threshold IVF with 8-bit scalar
quantization while it fits the memory budget (a quarter of the vectors' size), IVF-PQ (d/8 bytes
a vector) beyond. Measured on 512-d vectors (BENCHMARKS.md), IVF-SQ8 kept recall@10 at 0.98 at
100k and 1M vectors, faster than HNSW32, whose recall fell to 0.76 at 1M with 4x the memory;
HNSW stays available as a fixed choice. A fixed description (`XMR_INDEX=HNSW32`) is used as soon
as there are enough vectors to train it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from index.types import VectorDtype

AUTO = "auto"
EXACT_SPEC = "Flat"
DEFAULT_EF_SEARCH = 128
DEFAULT_NPROBE = 32


@dataclass(frozen=True)
class IndexOptions:
    """How the vector indexes are built and searched."""

    spec: str = AUTO  # "auto" or a FAISS factory string
    approx_threshold: int = 100_000  # auto: exact search below this many vectors
    memory_budget_mb: float = 4096.0  # auto: IVF-SQ8 while it fits, else IVF-PQ
    rebuild_deleted_fraction: float = 0.2  # rebuild approximate indexes past this share deleted
    ef_search: int = DEFAULT_EF_SEARCH
    nprobe: int = DEFAULT_NPROBE
    backend: str = "faiss"  # or "milvus"
    milvus_uri: str | None = None  # a local file (Milvus Lite) or http://host:19530
    milvus_token: str | None = None
    database_url: str | None = None  # the records in PostgreSQL (XMR_DATABASE_URL); None: SQLite
    blob_dir: Path | None = None  # XMR_BLOB_DIR: one folder per store under it; None: in the store
    blob_url: str | None = None  # XMR_BLOB_URL: s3://bucket/prefix, a prefix per store under it
    s3_endpoint_url: str | None = None  # XMR_S3_ENDPOINT_URL: an S3-compatible store, not AWS
    filter_fields: tuple[str, ...] = ()  # XMR_FILTER_FIELDS: metadata fields with an index
    record_vectors: VectorDtype = "float32"  # XMR_RECORD_VECTORS: the copy beside each record


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
    """One byte a dimension plus the label, and some slack for the lists."""
    return int(n * (d + 8) * 1.05)


def planned_spec(options: IndexOptions, n: int, d: int, current: str = EXACT_SPEC) -> str:
    """The structure an index of `n` vectors should have now.

    `current` adds hysteresis: an approximate index only returns to Flat below half the
    threshold, so an index near the threshold is not rebuilt back and forth.
    """
    if options.spec != AUTO:
        from index.vectors import min_training_vectors  # FAISS: only where an index is built

        enough = n >= min_training_vectors(options.spec, d)
        return options.spec if enough or current == options.spec else EXACT_SPEC
    threshold = options.approx_threshold
    if n < threshold and (current == EXACT_SPEC or n < threshold // 2):
        return EXACT_SPEC
    if sq8_bytes(n, d) <= options.memory_budget_mb * 1024 * 1024:
        return ivf_sq8_spec(n)
    return ivf_pq_spec(n, d)
