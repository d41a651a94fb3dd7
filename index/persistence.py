"""Saving the vector indexes: snapshots at a record sequence, and the tombstones they allow to
forget. The records stay the source of truth; a snapshot only shortens the next start-up."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from index.backends import VectorBackend
from index.errors import StorageError
from index.rebuild import Rebuilder
from index.records import VectorLog
from index.serving import ServingIndexes
from index.snapshots import save_snapshot
from index.types import KINDS, Kind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotTiming:
    """One snapshot: how long writes waited for it, how long the files took, their bytes."""

    seq: int
    write_lock_s: float  # the indexes are copied under the write lock
    write_s: float  # serialized, written, synced and renamed into place outside it
    bytes: int


class Snapshots:
    """Writes each index to disk when the records moved on past what was saved."""

    def __init__(
        self,
        folder: Path,
        serving: ServingIndexes,
        rebuilder: Rebuilder,
        backend: VectorBackend,
        log: VectorLog,
        model: tuple[str, int],
    ) -> None:
        self._folder = folder
        self._serving = serving
        self._rebuilder = rebuilder
        self._backend = backend
        self._log = log
        self._model_id, self._dim = model
        self._lock = threading.Lock()  # one snapshot at a time: files are written in seq order
        self.last: SnapshotTiming | None = None

    def is_dirty(self) -> bool:
        with self._serving.lock:
            seq = self._serving.applied_seq
            return any(self._serving.saved_seq[kind] < seq for kind in KINDS)

    def save(self) -> bool:
        """Write both indexes if the records moved on; True if anything was saved.

        The indexes are saved at the sequence they reflect (in a shared database the log may be
        further on). They are copied under the write lock, serialized and written to disk outside
        it (writes and searches wait for the copy only); what was saved is recorded under it
        again, for the index that was saved only: a background build may have swapped in a new
        one meanwhile, which still needs saving.
        """
        serving = self._serving
        with self._lock:
            started = time.perf_counter()
            with serving.lock:
                seq = serving.applied_seq
                indexes = serving.current()
                if not self._backend.keeps_snapshots:  # the backend keeps its own data
                    serving.saved_seq.update({kind: seq for kind in KINDS})
                stale = [
                    kind
                    for kind in KINDS
                    if self._backend.keeps_snapshots and serving.saved_seq[kind] < seq
                ]
                frozen = {kind: self._backend.freeze(indexes[kind]) for kind in stale}
                sizes = {kind: indexes[kind].stored for kind in stale}
                specs = {kind: indexes[kind].spec for kind in stale}
            locked = time.perf_counter()
            payloads = {kind: frozen.pop(kind)() for kind in stale}  # bytes made unlocked
            saved: list[Kind] = []
            for kind in stale:
                try:
                    save_snapshot(
                        self._folder,
                        kind,
                        payloads[kind],
                        seq,
                        sizes[kind],
                        self._model_id,
                        self._dim,
                        specs[kind],
                    )
                except OSError as e:
                    raise StorageError(
                        f"could not save the {kind} index snapshot: {e.strerror or e}; "
                        "the previous snapshot and all records are intact"
                    ) from e
                saved.append(kind)
            if not saved:
                return False
            self._record(seq, locked - started, time.perf_counter() - locked, payloads)
            with serving.lock:
                for kind in saved:
                    if serving[kind] is indexes[kind]:
                        serving.saved_seq[kind] = max(serving.saved_seq[kind], seq)
                # a background build replays the tombstones written after it started
                keep_from = self._rebuilder.oldest_replay_seqs()
                prune_to = min([*serving.saved_seq.values(), *keep_from])
            self._log.prune_tombstones(prune_to)
            return True

    def _record(self, seq: int, lock_s: float, write_s: float, payloads: dict[Kind, bytes]) -> None:
        size = sum(len(payload) for payload in payloads.values())
        self.last = SnapshotTiming(seq, round(lock_s, 4), round(write_s, 4), size)
        logger.info(
            "saved the indexes at record %d: %.1f MB, writes waited %.3f s, written in %.2f s",
            seq,
            size / 2**20,
            lock_s,
            write_s,
        )
