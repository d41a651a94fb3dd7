"""The vector-index contract both backends fulfil, and the one factory that picks a backend.

`ItemStore` talks to a `VectorBackend` (how an index of one kind is opened, restructured and
saved) and the `VectorIndex`es it opens (add, remove, search); it never asks which backend it
has. FAISS (`index/faiss_backend.py`) keeps its indexes in memory and snapshots them beside the
records; Milvus (`index/milvus_backend.py`) keeps its own data and is reconciled with the
records when it opens. Each is imported when a store opens it, so importing the index package
loads neither.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from index.planner import IndexOptions
from index.records import VectorLog
from index.types import Kind, VectorChunks

BACKEND_NAMES = ("faiss", "milvus")
UNSAVED = -1  # the sequence an index "was saved at" when nothing on disk reflects it yet


class VectorIndex(Protocol):
    """Unit vectors under int64 labels (the record store's), searched by inner product."""

    @property
    def spec(self) -> str: ...

    @property
    def exact(self) -> bool: ...

    @property
    def stored(self) -> int:
        """Vectors held, lazily deleted ones included."""
        ...

    @property
    def deleted_fraction(self) -> float: ...

    def __len__(self) -> int: ...

    def add(self, labels: np.ndarray | list[int], xb: np.ndarray) -> None: ...

    def remove(self, labels: np.ndarray | list[int]) -> int: ...

    def search(
        self,
        xq: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        widen: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels), each (len(xq), k), best first; label -1 pads a short row."""
        ...

    @property
    def write_mark(self) -> int:
        """The newest mark of this index's own writes in a store processes share (0: none)."""
        ...

    def show_writes_up_to(self, mark: int) -> None:
        """Make later searches see every write of the shared store up to `mark`."""
        ...

    def close(self) -> None: ...

    def drop(self) -> None:
        """Delete what the index keeps outside the data directory (a Milvus collection)."""
        ...


class VectorBackend(Protocol):
    """How the indexes of one data directory are opened, restructured and saved."""

    name: str
    keeps_snapshots: bool  # the store saves this backend's indexes beside the records
    # one store every process sharing the records searches (a Milvus server): each write is
    # applied to it once, by the process that committed it, and nobody replays the others'
    shares_vectors: bool
    options: IndexOptions

    def open(self, kind: Kind, log: VectorLog, up_to_seq: int) -> tuple[VectorIndex, int]:
        """The kind's index in line with the records up to `up_to_seq`, and the sequence its
        saved copy is at."""
        ...

    def planned_spec(self, index: VectorIndex) -> str | None:
        """The structure `index` should be rebuilt into, or None to keep it."""
        ...

    def reconcile(self, index: VectorIndex, log: VectorLog, kind: Kind) -> int:
        """Bring an index kept outside the process in line with the records (after a write to
        it failed); how many vectors changed. In-process indexes replay the log instead: 0."""
        ...

    def build(self, spec: str, chunks: VectorChunks) -> VectorIndex: ...

    def freeze(self, index: VectorIndex) -> Callable[[], bytes]:
        """A snapshot of `index` taken now (fast: the caller holds the write lock), whose bytes
        are made when it is called (slow: with no lock held)."""
        ...


def open_backend(
    data_dir: Path, model_id: str, dim: int, options: IndexOptions, namespace: str = ""
) -> VectorBackend:
    """The backend `options.backend` names; `namespace` keeps collections apart in Milvus."""
    if options.backend == "faiss":
        from index.faiss_backend import FaissBackend

        return FaissBackend(data_dir / "index", model_id, dim, options)
    if options.backend == "milvus":
        from index.milvus_backend import MilvusBackend

        return MilvusBackend(data_dir, model_id, dim, options, namespace)
    raise ValueError(
        f"unknown index backend {options.backend!r}; expected one of {', '.join(BACKEND_NAMES)}"
    )
