"""A FAISS inner-product index over unit vectors, keyed by stable int64 labels.

The index structure is any FAISS factory string (`Flat`, `HNSW32`, `IVF1024,PQ64`, ...), always
wrapped in an IndexIDMap2 so that labels are the record store's. IndexIDMap2 can only remove
from structures that compact like Flat does, so every other structure (HNSW, IVF, PQ) deletes
lazily: removed labels are excluded from every search by an ID selector until the index is
rebuilt.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterable
from typing import Any

import faiss
import numpy as np

from index.planner import DEFAULT_EF_SEARCH, DEFAULT_NPROBE, EXACT_SPEC
from index.types import VectorChunks, check_labels, check_vectors

# faiss's SWIG wrappers take keyword arguments its type stubs do not know
_faiss: Any = faiss


def use_search_threads(count: int) -> None:
    """How many cores FAISS's OpenMP pool uses for calls from the current thread."""
    faiss.omp_set_num_threads(count)


def _factory(spec: str, d: int) -> Any:
    try:
        return faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"{spec!r} is not a FAISS index description for dimension {d}") from e


def new_faiss_index(spec: str, d: int) -> Any:
    """An empty IndexIDMap2 over `faiss.index_factory(d, spec)` with inner-product metric."""
    return faiss.IndexIDMap2(_factory(spec, d))  # faiss's wrapper keeps the inner index alive


def training_sample(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], size: int, d: int, seed: int = 0
) -> tuple[np.ndarray, int]:
    """A uniform random sample of up to `size` of the chunks' vectors, and how many there were.

    Reservoir sampling (Vitter's algorithm R), a chunk at a time: row t (1-based) replaces a
    random slot with probability size/t, so late rows are as likely to be drawn as early ones.
    """
    rng = np.random.default_rng(seed)
    sample = np.empty((size, d), dtype=np.float32)
    seen = 0
    for _, xb in chunks:
        xb = check_vectors(xb, d)
        fill = max(0, min(size - seen, len(xb)))
        sample[seen : seen + fill] = xb[:fill]
        rest = xb[fill:]
        if len(rest):
            position = np.arange(seen + fill + 1, seen + len(xb) + 1)
            drawn = rng.random(len(rest)) * position < size
            sample[rng.integers(0, size, int(drawn.sum()))] = rest[drawn]  # in order: last wins
        seen += len(xb)
    return sample[: min(seen, size)], seen


@functools.lru_cache(maxsize=64)
def min_training_vectors(spec: str, d: int) -> int:
    """How many vectors `spec` needs before it can be trained (0 for structures without training).

    FAISS asks for at least 39 points per IVF list; PQ and SQ codebooks want a few hundred.
    """
    inner = _factory(spec, d)
    if inner.is_trained:
        return 0
    try:
        return 39 * int(faiss.extract_index_ivf(inner).nlist)
    except RuntimeError:
        return 1_000


class FaissVectorIndex:
    """Cosine search (inner product on normalized vectors) with add/remove by label.

    Searches and writes are serialized by one lock: FAISS parallelises each search itself.
    """

    def __init__(
        self,
        d: int,
        index: faiss.Index | None = None,
        spec: str = EXACT_SPEC,
        ef_search: int = DEFAULT_EF_SEARCH,
        nprobe: int = DEFAULT_NPROBE,
    ) -> None:
        self.d = d
        self.spec = spec
        # faiss's SWIG signatures do not type numpy arguments; Any keeps mypy honest elsewhere
        self._index: Any = index if index is not None else new_faiss_index(spec, d)
        if self._index.d != d:
            raise ValueError(f"index has dimension {self._index.d}, expected {d}")
        if not isinstance(self._index, faiss.IndexIDMap2):
            raise TypeError("the FAISS index must be an IndexIDMap2")
        self._inner: Any = faiss.downcast_index(self._index.index)
        self._lazy_delete = not isinstance(self._inner, faiss.IndexFlat)
        self._deleted: set[int] = set()
        self._selector: Any = None  # built from _deleted when first needed
        self._max_label = -1
        self._ef_search = ef_search
        self._nprobe = nprobe
        self._lock = threading.RLock()
        if self._index.ntotal:
            self._max_label = int(self._all_labels().max())

    @classmethod
    def build(
        cls,
        d: int,
        spec: str,
        chunks: VectorChunks,
        ef_search: int = DEFAULT_EF_SEARCH,
        nprobe: int = DEFAULT_NPROBE,
        train_size: int = 100_000,
    ) -> FaissVectorIndex:
        """A new index of `spec` holding every (labels, vectors) chunk, trained on them first.

        A structure that needs training reads the chunks twice: once for a uniform sample of
        `train_size` vectors, once to add them all; at no point are they all in memory (10M
        vectors are 20 GB of float32).
        """
        index = cls(d, spec=spec, ef_search=ef_search, nprobe=nprobe)
        if not index._index.is_trained:
            sample, seen = training_sample(chunks(), train_size, d)
            if seen < min_training_vectors(spec, d):
                raise ValueError(f"{spec} needs more vectors to train than the {seen} given")
            index._index.train(sample)
            del sample
        for labels, xb in chunks():
            index.add(labels, xb)
        return index

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._deleted)

    @property
    def exact(self) -> bool:
        """Whether a search compares the query with every vector (Flat)."""
        return not self._lazy_delete

    @property
    def stored(self) -> int:
        """Vectors held, lazily deleted ones included."""
        return int(self._index.ntotal)

    @property
    def deleted_fraction(self) -> float:
        """Share of stored vectors that are deleted but still take space (lazy deletion)."""
        total = int(self._index.ntotal)
        return len(self._deleted) / total if total else 0.0

    def add(self, labels: np.ndarray | list[int], xb: np.ndarray) -> None:
        xb = check_vectors(xb, self.d)
        ids = check_labels(labels, xb.shape[0])
        if ids.size == 0:
            return
        with self._lock:
            # re-adding a label replaces it; labels above every stored one cannot be present
            seen = ids[ids <= self._max_label]
            if self._lazy_delete and any(int(x) in self._deleted for x in seen):
                raise ValueError("a deleted label cannot be added again to a lazily deleting index")
            if seen.size:
                self._remove_locked(seen)
            self._index.add_with_ids(xb, ids)
            self._max_label = max(self._max_label, int(ids.max()))

    def remove(self, labels: np.ndarray | list[int]) -> int:
        """Remove labels; returns how many were present."""
        ids = check_labels(labels)
        if ids.size == 0:
            return 0
        with self._lock:
            return self._remove_locked(ids)

    def _remove_locked(self, ids: np.ndarray) -> int:
        if not self._lazy_delete:
            return int(self._index.remove_ids(ids))
        stored = ids[np.isin(ids, self._all_labels())]
        present = {int(x) for x in stored} - self._deleted
        self._deleted.update(present)
        if present:
            self._selector = None
        return len(present)

    def search(
        self, xq: np.ndarray, k: int, allowed: np.ndarray | None = None, widen: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: (scores, labels), each (nq, k); missing slots have label -1.

        With `allowed`, only those labels are candidates: the filter is applied inside the
        search, so k results come back whenever k allowed vectors exist (exactly so for Flat).
        `widen` multiplies the search breadth of approximate structures (HNSW's efSearch, IVF's
        nprobe), up to all of it with math.inf: a filter leaves fewer candidates per list.
        """
        xq = check_vectors(xq, self.d)
        if k < 1:
            raise ValueError("k must be at least 1")
        with self._lock:
            live = len(self) if allowed is None else min(len(self), len(allowed))
            if live == 0:
                empty_scores = np.full((xq.shape[0], k), -np.inf, dtype=np.float32)
                return empty_scores, np.full((xq.shape[0], k), -1, dtype=np.int64)
            params, keep_alive = self._search_params(k, allowed, widen)
            D, I = self._index.search(xq, min(k, live), params=params)
            del keep_alive
        if D.shape[1] < k:
            pad = k - D.shape[1]
            D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.inf)
            I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
        return D, I

    def _search_params(
        self, k: int, allowed: np.ndarray | None, widen: float = 1.0
    ) -> tuple[Any, tuple[Any, ...]]:
        """FAISS search parameters, and the selector objects they point to (keep them alive)."""
        if self._deleted and self._selector is None:
            deleted = np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted))
            batch = faiss.IDSelectorBatch(deleted)
            self._selector = (faiss.IDSelectorNot(batch), batch)  # the Not keeps no reference
        parts: tuple[Any, ...] = self._selector if self._deleted else ()
        selector = parts[0] if parts else None
        if allowed is not None:
            wanted = faiss.IDSelectorBatch(check_labels(allowed))
            parts = (*parts, wanted)
            selector = wanted if selector is None else faiss.IDSelectorAnd(wanted, selector)
            parts = (*parts, selector)
        if isinstance(self._inner, faiss.IndexHNSW):
            ef = _widened(max(self._ef_search, k), widen, max(int(self._index.ntotal), k))
            return _faiss.SearchParametersHNSW(efSearch=ef, sel=selector), parts
        try:
            ivf = faiss.extract_index_ivf(self._inner)
        except RuntimeError:
            params = _faiss.SearchParameters(sel=selector) if selector is not None else None
            return params, parts
        nprobe = _widened(self._nprobe, widen, int(ivf.nlist))
        return _faiss.SearchParametersIVF(nprobe=nprobe, sel=selector), parts

    def labels(self) -> np.ndarray:
        with self._lock:
            labels = self._all_labels()
            if self._deleted:
                labels = labels[~np.isin(labels, list(self._deleted))]
            return labels

    def _all_labels(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    write_mark = 0  # kept in this process: every write is seen by the next search

    def show_writes_up_to(self, mark: int) -> None:
        return None

    def close(self) -> None:
        """Nothing to release: the index lives in memory (the VectorIndex contract asks)."""

    def drop(self) -> None:
        """Nothing outside the data directory to delete: its snapshots go with the folder."""

    def serialize(self) -> bytes:
        """The FAISS index as bytes; lazily deleted vectors are still in it (see reconcile)."""
        return self.freeze()()

    def freeze(self) -> Callable[[], bytes]:
        """A copy of the index as it is now, made under its lock (a memory copy: 0.4 s for
        1M SQ8 vectors), whose bytes are made when called, with no lock held (3 s more)."""
        with self._lock:
            copy = faiss.clone_index(self._index)
        return lambda: faiss.serialize_index(copy).tobytes()

    def reconcile(self, live_labels: np.ndarray) -> int:
        """Remove every stored label not in `live_labels`; returns how many were removed."""
        with self._lock:
            stale = self._all_labels()
            stale = stale[~np.isin(stale, live_labels)]
            return self._remove_locked(stale) if stale.size else 0

    @classmethod
    def deserialize(
        cls, data: bytes, d: int, spec: str = EXACT_SPEC, **options: int
    ) -> FaissVectorIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(d, index, spec=spec, **options)


def _widened(breadth: int, factor: float, most: int) -> int:
    if math.isinf(factor):
        return most
    return max(1, min(most, math.ceil(breadth * factor)))
