"""FAISS indexes in memory, snapshotted under `<data dir>/index` and replayed forward."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from index.backends import UNSAVED, VectorIndex
from index.errors import ModelMismatchError, SnapshotError
from index.planner import EXACT_SPEC, IndexOptions, planned_spec
from index.records import VectorLog
from index.snapshots import load_snapshot
from index.types import Kind, VectorChunks
from index.vectors import FaissVectorIndex

logger = logging.getLogger(__name__)


class FaissBackend:
    """In-memory FAISS indexes, snapshotted under `<data dir>/index` and replayed forward."""

    name = "faiss"
    keeps_snapshots = True
    shares_vectors = False

    def __init__(self, snapshot_dir: Path, model_id: str, dim: int, options: IndexOptions):
        self.snapshot_dir = snapshot_dir
        self.model_id = model_id
        self.dim = dim
        self.options = options
        if options.spec != "auto":
            planned_spec(options, 0, dim)  # a bad XMR_INDEX fails here, at start-up

    def open(self, kind: Kind, log: VectorLog, up_to_seq: int) -> tuple[VectorIndex, int]:
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
        if loaded is None or loaded[1].seq > up_to_seq:  # a snapshot ahead of these records
            return self._from_log(kind, log, up_to_seq), UNSAVED
        index, info = loaded
        # lazily deleted vectors are in the file but not in the records: drop them again
        index.reconcile(log.all_labels(kind))
        for labels, vectors in log.vectors_after(kind, info.seq, self.dim, up_to_seq=up_to_seq):
            index.add(labels, vectors)
        if _disagrees(len(index), kind, log, up_to_seq):
            logger.warning("the %s snapshot disagrees with the records; rebuilding", kind)
            return self._from_log(kind, log, up_to_seq), UNSAVED
        return index, info.seq

    def _from_log(self, kind: Kind, log: VectorLog, up_to_seq: int) -> FaissVectorIndex:
        """An exact index from the records; a better structure follows in the background."""
        index = self._new(EXACT_SPEC)
        for labels, vectors in log.vectors_after(kind, 0, self.dim, up_to_seq=up_to_seq):
            index.add(labels, vectors)
        logger.info("built the %s index from %d records", kind, len(index))
        return index

    def _new(self, spec: str) -> FaissVectorIndex:
        return FaissVectorIndex(
            self.dim, spec=spec, ef_search=self.options.ef_search, nprobe=self.options.nprobe
        )

    def reconcile(self, index: VectorIndex, log: VectorLog, kind: Kind) -> int:
        return 0  # kept in this process: it follows the log

    def planned_spec(self, index: VectorIndex) -> str | None:
        spec = planned_spec(self.options, len(index), self.dim, index.spec)
        too_deleted = index.deleted_fraction > self.options.rebuild_deleted_fraction
        return spec if spec != index.spec or too_deleted else None

    def build(self, spec: str, chunks: VectorChunks) -> VectorIndex:
        return FaissVectorIndex.build(
            self.dim, spec, chunks, ef_search=self.options.ef_search, nprobe=self.options.nprobe
        )

    def freeze(self, index: VectorIndex) -> Callable[[], bytes]:
        if not isinstance(index, FaissVectorIndex):
            raise TypeError(f"a FAISS snapshot of a {type(index).__name__}")
        return index.freeze()


def _disagrees(size: int, kind: Kind, log: VectorLog, up_to_seq: int) -> bool:
    """Whether an index of `size` vectors, at `up_to_seq`, holds another number than the records.

    Only decidable while nobody else writes: once the log moved past `up_to_seq` (another
    process sharing the database), the count is of another moment and the catch-up that
    follows brings the index along (index/follow.py).
    """
    count = log.count(kind)
    return size != count and log.current_seq() == up_to_seq
