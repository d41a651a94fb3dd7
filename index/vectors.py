"""A FAISS inner-product index over unit vectors, keyed by stable int64 labels."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np


def check_vectors(xb: np.ndarray, d: int) -> np.ndarray:
    """Return `xb` as a C-contiguous float32 (n, d) array, or raise TypeError/ValueError."""
    if not isinstance(xb, np.ndarray):
        raise TypeError(f"vectors must be a numpy array, not {type(xb).__name__}")
    if xb.ndim != 2:
        raise ValueError(f"vectors must be 2-d, got shape {xb.shape}")
    if xb.shape[1] != d:
        raise ValueError(f"vectors have dimension {xb.shape[1]}, the index has {d}")
    if not np.isfinite(xb).all():
        raise ValueError("vectors contain NaN or infinity")
    return np.ascontiguousarray(xb, dtype=np.float32)


def check_labels(labels: np.ndarray | list[int], n: int | None = None) -> np.ndarray:
    ids = np.ascontiguousarray(np.asarray(labels, dtype=np.int64).reshape(-1))
    if n is not None and ids.shape[0] != n:
        raise ValueError(f"got {ids.shape[0]} labels for {n} vectors")
    return ids


class FaissVectorIndex:
    """Exact cosine search (inner product on normalized vectors) with add/remove by label.

    Searches may run concurrently; writes take the lock exclusively.
    """

    def __init__(self, d: int, index: faiss.Index | None = None) -> None:
        self.d = d
        # faiss's SWIG signatures do not type numpy arguments; Any keeps mypy honest elsewhere
        self._index: Any = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        if self._index.d != d:
            raise ValueError(f"index has dimension {self._index.d}, expected {d}")
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, labels: np.ndarray | list[int], xb: np.ndarray) -> None:
        xb = check_vectors(xb, self.d)
        ids = check_labels(labels, xb.shape[0])
        if ids.size == 0:
            return
        with self._lock:
            self._index.remove_ids(ids)  # re-adding a label replaces it rather than duplicating it
            self._index.add_with_ids(xb, ids)

    def remove(self, labels: np.ndarray | list[int]) -> int:
        ids = check_labels(labels)
        if ids.size == 0:
            return 0
        with self._lock:
            return int(self._index.remove_ids(ids))

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: (scores, labels), each (nq, k); missing slots have label -1."""
        xq = check_vectors(xq, self.d)
        if k < 1:
            raise ValueError("k must be at least 1")
        with self._lock:
            if self._index.ntotal == 0:
                empty_scores = np.full((xq.shape[0], k), -np.inf, dtype=np.float32)
                return empty_scores, np.full((xq.shape[0], k), -1, dtype=np.int64)
            D, I = self._index.search(xq, min(k, int(self._index.ntotal)))
        if D.shape[1] < k:
            pad = k - D.shape[1]
            D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.inf)
            I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
        return D, I

    def labels(self) -> np.ndarray:
        with self._lock:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def serialize(self) -> bytes:
        with self._lock:
            return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def deserialize(cls, data: bytes, d: int) -> FaissVectorIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(d, index)

    @classmethod
    def read(cls, path: Path, d: int) -> FaissVectorIndex:
        return cls.deserialize(path.read_bytes(), d)
