"""Keeping the serving indexes at a sequence of the record log.

A process's own writes are applied as they commit. When the records are shared with other
processes (PostgreSQL, several replicas), their writes are replayed from the log: before each
search (one indexed query for the log's sequence, so a write acknowledged anywhere is found by
the next search everywhere) and once a second between searches, so an idle replica does not
fall behind. A replay covers exactly the sequences after the one the indexes reflect, up to the
one read, so nothing is applied twice and nothing is skipped.

A vector store shared by every process (a Milvus server) is not replayed: each process applies
its own writes to it. Those can land out of the log's order: a record written here and deleted
by another process at once may have its vector added after the other's removal. So after
adding, the writer removes again whatever of it the log says was deleted since its commit. Each
writer then raises the store's write mark in the log (Milvus' timestamp of its write) before the
write is acknowledged, and each search waits until the store shows the mark it read first. A
write the shared store failed (it was away) leaves its committed records without vectors: the
follower's thread reconciles the store with the records once it answers again (`repair`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from index.errors import StorageError
from index.records import VectorLog
from index.serving import ServingIndexes
from index.types import KINDS, Kind, WriteResult

logger = logging.getLogger(__name__)

FOLLOW_INTERVAL_S = 1.0


class LogFollower:
    """Applies writes to the serving indexes in sequence order; `shared` replays other
    processes' writes too; `shared_store` (a store every process writes to) makes each write
    undo what was deleted of it meanwhile. `on_change(kind)` runs, write lock held, for each
    kind that changed (a rebuild may be due)."""

    def __init__(
        self,
        serving: ServingIndexes,
        log: VectorLog,
        dim: int,
        shared: bool,
        on_change: Callable[[Kind], None],
        shared_store: bool = False,
        repair: Callable[[Kind], object] | None = None,
    ) -> None:
        self._serving = serving
        self._log = log
        self._dim = dim
        self.shared = shared
        self.shared_store = shared_store
        self._mark_noted = 0
        self._repair = repair
        self.needs_repair = False
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, result: WriteResult) -> None:
        """Apply this process's committed write. Write lock held.

        The next sequence is applied as it is; a gap means other processes wrote in between,
        and the log is replayed up to and including this write.
        """
        serving = self._serving
        if self.shared_store:
            changed = self._apply_to_shared_store(result)
        elif not self.shared or result.seq == serving.applied_seq + 1:
            changed = serving.apply(result)
            serving.applied_seq = max(serving.applied_seq, result.seq)
        else:
            changed = self.replay_to(result.seq)
        for kind in changed:
            self._on_change(kind)

    def _apply_to_shared_store(self, result: WriteResult) -> list[Kind]:
        """This process's write, applied once to the store every process shares; if the store
        fails it, the records are committed already: it is repaired when it answers again."""
        try:
            changed = self._serving.apply(result)
            self._remove_deleted_since(result)
            self._note_write_mark()
        except StorageError:
            self.needs_repair = True
            raise
        self._serving.applied_seq = max(self._serving.applied_seq, result.seq)
        return changed

    def repair(self) -> None:
        """Reconcile the shared store with the records after a write it failed (takes the
        write lock)."""
        if not self.needs_repair or self._repair is None:
            return
        with self._serving.lock:
            if self._serving.closing:
                return
            for kind in KINDS:
                self._repair(kind)
            self.needs_repair = False
            logger.warning("the shared vector store answers again; repaired")

    def _remove_deleted_since(self, result: WriteResult) -> None:
        """Remove the vectors this write added whose records were deleted after its commit
        (their removal may have reached the shared store before this write's add)."""
        for kind in KINDS:
            if not result.added[kind]:
                continue
            added = {label for label, _ in result.added[kind]}
            deleted = [x for x in self._log.tombstones_after(kind, result.seq) if x in added]
            if deleted:
                self._serving[kind].remove(deleted)

    def _note_write_mark(self) -> None:
        mark = max(self._serving[kind].write_mark for kind in KINDS)
        if mark > self._mark_noted:
            self._log.advance_vector_store_mark(mark)
            self._mark_noted = mark

    def catch_up(self) -> None:
        """Replay what other processes wrote, up to the log's current sequence; with a shared
        store, have the next searches wait for every write acknowledged so far."""
        if self.shared_store:
            mark = self._log.vector_store_mark()
            for kind in KINDS:
                self._serving[kind].show_writes_up_to(mark)
        if not self.shared:
            return
        target = self._log.current_seq()
        if target <= self._serving.applied_seq:  # unlocked read: an int, only ever grows
            return
        with self._serving.lock:
            if self._serving.closing:
                return
            for kind in self.replay_to(target):
                self._on_change(kind)

    def replay_to(self, target: int) -> list[Kind]:
        """Apply the log's writes after the applied sequence up to `target`. Write lock held."""
        serving = self._serving
        applied = serving.applied_seq
        if target <= applied:
            return []
        changed: list[Kind] = []
        for kind in KINDS:
            index = serving[kind]
            removed = self._log.tombstones_after(kind, applied, up_to_seq=target)
            index.remove(removed)
            added = 0
            for labels, vectors in self._log.vectors_after(
                kind, applied, self._dim, up_to_seq=target
            ):
                index.add(labels, vectors)
                added += len(labels)
            if removed or added:
                changed.append(kind)
        serving.applied_seq = target
        return changed

    # -- between searches -------------------------------------------------------------------
    def start(self) -> None:
        """Catch up (or repair a shared store) once a second on a thread of its own."""
        if not (self.shared or self.shared_store) or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="xmr-log-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FOLLOW_INTERVAL_S):
            try:
                self.catch_up()
                self.repair()
            except Exception as e:  # the database may be away; the next round tries again
                logger.warning("could not catch up with the shared records: %s", e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
