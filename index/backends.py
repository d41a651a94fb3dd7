"""The vector-index contract both backends fulfil, and the one factory that picks a backend.

`ItemStore` talks to a `VectorBackend` (how an index of one kind is opened, restructured and
saved) and the `VectorIndex`es it opens (add, remove, search); it never asks which backend it
has. FAISS keeps its indexes in memory and snapshots them beside the records; Milvus keeps its
own data and is reconciled with the records when it opens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from index.errors import ModelMismatchError, SnapshotError
from index.planner import IndexOptions, planned_spec
from index.records import Kind, RecordStore
from index.snapshots import load_snapshot
from index.vectors import EXACT_SPEC, FaissVectorIndex

logger = logging.getLogger(__name__)

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

    def close(self) -> None: ...

    def drop(self) -> None:
        """Delete what the index keeps outside the data directory (a Milvus collection)."""
        ...


class VectorBackend(Protocol):
    """How the indexes of one data directory are opened, restructured and saved."""

    name: str
    keeps_snapshots: bool  # the store saves this backend's indexes beside the records
    options: IndexOptions

    def open(self, kind: Kind, records: RecordStore) -> tuple[VectorIndex, int]:
        """The kind's index in line with the records, and the sequence its saved copy is at."""
        ...

    def planned_spec(self, index: VectorIndex) -> str | None:
        """The structure `index` should be rebuilt into, or None to keep it."""
        ...

    def build(self, spec: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> VectorIndex: ...

    def serialize(self, index: VectorIndex) -> bytes: ...


class FaissBackend:
    """In-memory FAISS indexes, snapshotted under `<data dir>/index` and replayed forward."""

    name = "faiss"
    keeps_snapshots = True

    def __init__(self, snapshot_dir: Path, model_id: str, dim: int, options: IndexOptions):
        self.snapshot_dir = snapshot_dir
        self.model_id = model_id
        self.dim = dim
        self.options = options
        if options.spec != "auto":
            planned_spec(options, 0, dim)  # a bad XMR_INDEX fails here, at start-up

    def open(self, kind: Kind, records: RecordStore) -> tuple[VectorIndex, int]:
        try:
            loaded = load_snapshot(
                self.snapshot_dir,
                kind,
                self.model_id,
                self.dim,
                ef_search=self.options.ef_search,
                nprobe=self.options.nprobe,
            )
        except (SnapshotError, ModelMismatchError) as e:
            logger.warning("rebuilding the %s index from the records: %s", kind, e)
            loaded = None
        if loaded is None:
            return self._from_records(kind, records), UNSAVED
        index, info = loaded
        # lazily deleted vectors are in the file but not in the records: drop them again
        index.reconcile(records.all_labels(kind))
        for labels, vectors in records.vectors_after(kind, info.seq, self.dim):
            index.add(labels, vectors)
        if len(index) != records.count(kind):
            logger.warning("the %s snapshot disagrees with the records; rebuilding", kind)
            return self._from_records(kind, records), UNSAVED
        return index, info.seq

    def _from_records(self, kind: Kind, records: RecordStore) -> FaissVectorIndex:
        """An exact index from the records; a better structure follows in the background."""
        index = self._new(EXACT_SPEC)
        for labels, vectors in records.vectors_after(kind, 0, self.dim):
            index.add(labels, vectors)
        logger.info("built the %s index from %d records", kind, len(index))
        return index

    def _new(self, spec: str) -> FaissVectorIndex:
        return FaissVectorIndex(
            self.dim, spec=spec, ef_search=self.options.ef_search, nprobe=self.options.nprobe
        )

    def planned_spec(self, index: VectorIndex) -> str | None:
        spec = planned_spec(self.options, len(index), self.dim, index.spec)
        too_deleted = index.deleted_fraction > self.options.rebuild_deleted_fraction
        return spec if spec != index.spec or too_deleted else None

    def build(self, spec: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> VectorIndex:
        return FaissVectorIndex.build(
            self.dim, spec, chunks, ef_search=self.options.ef_search, nprobe=self.options.nprobe
        )

    def serialize(self, index: VectorIndex) -> bytes:
        if not isinstance(index, FaissVectorIndex):
            raise TypeError(f"a FAISS snapshot of a {type(index).__name__}")
        return index.serialize()


class MilvusBackend:
    """Milvus Lite (a local file) or a Milvus server; it keeps its own data, no snapshots."""

    name = "milvus"
    keeps_snapshots = False

    def __init__(
        self, data_dir: Path, model_id: str, dim: int, options: IndexOptions, namespace: str
    ) -> None:
        self.uri = options.milvus_uri or str(data_dir / "milvus.db")
        self.model_id = model_id
        self.dim = dim
        self.options = options
        self.namespace = namespace

    def open(self, kind: Kind, records: RecordStore) -> tuple[VectorIndex, int]:
        from index.milvus import MilvusVectorIndex  # pymilvus: only where Milvus is used

        index = MilvusVectorIndex.open(
            self.uri,
            kind,
            self.model_id,
            self.dim,
            self.options.milvus_token,
            namespace=self.namespace,
        )
        changed = index.reconcile_with(
            records.all_labels(kind), records.vectors_after(kind, 0, self.dim)
        )
        if changed:
            logger.warning(
                "brought %d %s vectors in Milvus in line with the records", changed, kind
            )
        return index, records.current_seq()

    def planned_spec(self, index: VectorIndex) -> str | None:
        return None  # Milvus structures its own indexes

    def build(self, spec: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> VectorIndex:
        raise NotImplementedError("Milvus indexes are not rebuilt by xmr")

    def serialize(self, index: VectorIndex) -> bytes:
        raise NotImplementedError("Milvus keeps its own data")


def open_backend(
    data_dir: Path, model_id: str, dim: int, options: IndexOptions, namespace: str = ""
) -> VectorBackend:
    """The backend `options.backend` names; `namespace` keeps collections apart in Milvus."""
    if options.backend == "faiss":
        return FaissBackend(data_dir / "index", model_id, dim, options)
    if options.backend == "milvus":
        return MilvusBackend(data_dir, model_id, dim, options, namespace)
    raise ValueError(
        f"unknown index backend {options.backend!r}; expected one of {', '.join(BACKEND_NAMES)}"
    )
