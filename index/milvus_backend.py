"""Milvus Lite (a local file) or a Milvus server as the vector backend."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from index.backends import VectorIndex
from index.planner import IndexOptions
from index.records import VectorLog
from index.types import Kind

logger = logging.getLogger(__name__)


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
        changed = index.reconcile_with(log.all_labels(kind), log.vectors_after(kind, 0, self.dim))
        if changed:
            logger.warning(
                "brought %d %s vectors in Milvus in line with the records", changed, kind
            )
        return index, up_to_seq

    def planned_spec(self, index: VectorIndex) -> str | None:
        return None  # Milvus structures its own indexes

    def build(self, spec: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> VectorIndex:
        raise NotImplementedError("Milvus indexes are not rebuilt by xmr")

    def serialize(self, index: VectorIndex) -> bytes:
        raise NotImplementedError("Milvus keeps its own data")
