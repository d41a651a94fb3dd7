"""The vector index that serves each kind now, and the write lock that orders changes to it."""

from __future__ import annotations

import threading

import numpy as np

from index.backends import UNSAVED, VectorIndex
from index.types import KINDS, Kind, WriteResult


class ServingIndexes:
    """One live VectorIndex per kind.

    `lock` (the store's write lock) guards which index serves each kind, the sequence of the
    log they reflect (`applied_seq`), the sequence each was saved at, the rebuilds under way and
    `closing`, and keeps each record write and its index update in one order. Searches read
    without it: swapping an entry is atomic under the GIL, and each index locks itself.
    """

    def __init__(self, opened: dict[Kind, tuple[VectorIndex, int]], applied_seq: int) -> None:
        self.lock = threading.Lock()
        self._indexes: dict[Kind, VectorIndex] = {kind: opened[kind][0] for kind in KINDS}
        self.saved_seq: dict[Kind, int] = {kind: opened[kind][1] for kind in KINDS}
        self.applied_seq = applied_seq
        self.closing = False

    def __getitem__(self, kind: Kind) -> VectorIndex:
        return self._indexes[kind]

    def current(self) -> dict[Kind, VectorIndex]:
        """Which index serves each kind, as one consistent copy (take it under the lock)."""
        return dict(self._indexes)

    def apply(self, result: WriteResult) -> list[Kind]:
        """Follow one record write; the kinds it changed. Lock held (see index/follow.py)."""
        changed: list[Kind] = []
        for kind in KINDS:
            index = self._indexes[kind]
            index.remove(result.removed[kind])
            added = result.added[kind]
            if added:
                index.add([label for label, _ in added], np.stack([v for _, v in added]))
            if added or result.removed[kind]:
                changed.append(kind)
        return changed

    def swap(self, kind: Kind, index: VectorIndex) -> None:
        """Serve `kind` from a rebuilt index, which no snapshot reflects yet. Lock held."""
        self._indexes[kind] = index
        self.saved_seq[kind] = UNSAVED

    def counts(self) -> dict[Kind, int]:
        return {kind: len(self._indexes[kind]) for kind in KINDS}

    def close(self) -> None:
        for index in self._indexes.values():
            index.close()

    def drop(self) -> None:
        """Delete what the indexes keep outside the data directory, then close them."""
        for index in self._indexes.values():
            index.drop()
            index.close()
