"""Milvus Lite (a local file) or a Milvus server as the vector backend."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from index.backends import VectorIndex
from index.planner import IndexOptions
from index.records import VectorLog
from index.types import Kind, VectorChunks

logger = logging.getLogger(__name__)

_RECONCILE_CHUNK = 10_000  # vectors re-sent to Milvus per request while reconciling


class MilvusBackend:
    """Milvus Lite (a local file) or a Milvus server; it keeps its own data, no snapshots.

    A server (`http://...`) is one vector store for every process sharing the records: each
    write reaches it once, from the process that committed it. A Milvus Lite file belongs to one
    process, which follows the others' writes like a FAISS index does.
    """

    name = "milvus"
    keeps_snapshots = False

    def __init__(
        self, data_dir: Path, model_id: str, dim: int, options: IndexOptions, namespace: str
    ) -> None:
        from index.milvus import is_local

        self.uri = options.milvus_uri or str(data_dir / "milvus.db")
        self.shares_vectors = not is_local(self.uri)
        self.model_id = model_id
        self.dim = dim
        self.options = options
        self.namespace = namespace

    def open(self, kind: Kind, log: VectorLog, up_to_seq: int) -> tuple[VectorIndex, int]:
        from index.milvus import MilvusVectorIndex  # pymilvus: only where Milvus is used

        index = MilvusVectorIndex.open(
            self.uri,
            kind,
            self.model_id,
            self.dim,
            self.options.milvus_token,
            namespace=self.namespace,
        )
        self.reconcile(index, log, kind)
        return index, up_to_seq

    def reconcile(self, index: VectorIndex, log: VectorLog, kind: Kind) -> int:
        with log.exclusively():  # replicas starting together reconcile one after another
            changed = reconcile(index, log, kind, self.dim)
        if changed:
            logger.warning(
                "brought %d %s vectors in Milvus in line with the records", changed, kind
            )
        return changed

    def planned_spec(self, index: VectorIndex) -> str | None:
        return None  # Milvus structures its own indexes

    def build(self, spec: str, chunks: VectorChunks) -> VectorIndex:
        raise NotImplementedError("Milvus indexes are not rebuilt by xmr")

    def freeze(self, index: VectorIndex) -> Callable[[], bytes]:
        raise NotImplementedError("Milvus keeps its own data")


def reconcile(index: VectorIndex, log: VectorLog, kind: Kind, dim: int) -> int:
    """Make `index` hold exactly the live records' vectors of `kind`; how many changed.

    Other processes may be writing meanwhile, each adding its vectors after its record commits.
    So Milvus is listed before the records are read: a label in Milvus that is not live then
    was deleted (or left by a crash), never one whose commit came later. A vector re-sent for a
    record deleted meanwhile is removed again by the deletions logged since the start.
    """
    from index.milvus import MilvusVectorIndex

    assert isinstance(index, MilvusVectorIndex)
    before = log.current_seq()
    stored = index.labels()
    live = log.all_labels(kind)
    stale = stored[~np.isin(stored, live)]
    missing = live[~np.isin(live, stored)]
    index.remove(stale)
    for start in range(0, len(missing), _RECONCILE_CHUNK):
        labels, vectors = log.vectors_of(missing[start : start + _RECONCILE_CHUNK], dim)
        if len(labels):
            index.add(labels, vectors)
    if len(missing):
        deleted = np.array(log.tombstones_after(kind, before), dtype=np.int64)
        index.remove(deleted[np.isin(deleted, missing)])
    return int(stale.size + missing.size)
