"""Rebuilding an index into another structure while the old one keeps serving.

When an index should change structure (it grew past the exact-search threshold, or too much
of an approximate index is deleted), a new one is built from the records written up to the
sequence the serving index reflects, on a thread of its own limited to one core (searches need
the others); under the write lock the writes the serving index took meanwhile are replayed into
it, and it is swapped in.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

from index.backends import VectorBackend, VectorIndex
from index.records import VectorLog
from index.serving import ServingIndexes
from index.types import Kind

logger = logging.getLogger(__name__)


class Rebuilder:
    """Plans, builds, replays and swaps; one build per kind at a time."""

    def __init__(
        self, serving: ServingIndexes, backend: VectorBackend, log: VectorLog, dim: int
    ) -> None:
        self._serving = serving
        self._backend = backend
        self._log = log
        self._dim = dim
        self._builds: dict[Kind, tuple[str, int, threading.Thread]] = {}  # under serving.lock

    def maybe_start(self, kind: Kind) -> None:
        """Start a background rebuild if the index should change structure; write lock held."""
        index = self._serving[kind]
        if kind in self._builds or self._serving.closing:
            return
        spec = self._backend.planned_spec(index)
        if spec is None:
            return
        seq = self._serving.applied_seq
        thread = threading.Thread(
            target=self._build, args=(kind, spec, seq), name=f"xmr-index-build-{kind}", daemon=True
        )
        self._builds[kind] = (spec, seq, thread)
        logger.info("building a %s %s index of %d vectors", spec, kind, len(index))
        thread.start()

    def _build(self, kind: Kind, spec: str, seq: int) -> None:
        from index.vectors import use_search_threads

        use_search_threads(1)
        try:
            chunks = functools.partial(self._log.vectors_after, kind, 0, self._dim, up_to_seq=seq)
            built: VectorIndex | None = self._backend.build(spec, chunks)
        except Exception:  # a failed build leaves the working index in place
            if self._serving.closing:  # the store closed under it: nothing failed
                logger.info("the %s %s index build stopped: the store closed", spec, kind)
            else:
                logger.exception("building the %s %s index failed", spec, kind)
            built = None
        with self._serving.lock:
            if built is not None and not self._serving.closing:
                applied = self._serving.applied_seq  # what the index it replaces reflects
                built.remove(self._log.tombstones_after(kind, seq, up_to_seq=applied))
                for labels, vectors in self._log.vectors_after(
                    kind, seq, self._dim, up_to_seq=applied
                ):
                    built.add(labels, vectors)
                self._serving.swap(kind, built)
                logger.info("the %s index is now %s (%d vectors)", kind, spec, len(built))
            self._builds.pop(kind, None)
            if built is not None:
                self.maybe_start(kind)  # the index may have grown past another plan meanwhile

    def building(self) -> dict[Kind, str]:
        """The structure each kind is being rebuilt into (lock-free: one copy of the dict)."""
        return {kind: spec for kind, (spec, _, _) in self._builds.copy().items()}

    def oldest_replay_seqs(self) -> list[int]:
        """The sequences running builds replay tombstones from; write lock held."""
        return [seq for _, seq, _ in self._builds.values()]

    def wait(self, timeout_s: float = 600.0) -> None:
        """Block until no build is running (one may start the next)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._serving.lock:
                threads = [thread for _, _, thread in self._builds.values()]
            if not threads:
                return
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
