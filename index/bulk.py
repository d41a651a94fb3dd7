"""Bulk loading: many writes into a store that nothing searches meanwhile (an import into a
stopped server's data directory), with the vector indexes built once at the end instead of
kept up write by write.

Kept up write by write, an import of millions pays twice for the index: each new vector is
assigned to one of more and more IVF lists, and every size the plan passes (131k, 524k, 2.1M,
...) rebuilds the whole index on one core while the import goes on. Here the records are
written alone, then each kind they changed is built once, in the structure its final size
calls for, on every core.
"""

from __future__ import annotations

import functools

from index.backends import VectorBackend
from index.planner import planned_spec
from index.records import VectorLog
from index.serving import ServingIndexes
from index.types import KINDS, Kind, WriteResult


class BulkLoad:
    """The kinds a bulk load changed, and the build that brings their indexes up at its end."""

    def __init__(
        self, serving: ServingIndexes, backend: VectorBackend, log: VectorLog, dim: int
    ) -> None:
        self._serving = serving
        self._backend = backend
        self._log = log
        self._dim = dim
        self.changed: set[Kind] = set()

    def note(self, result: WriteResult) -> None:
        """A committed write, left out of the indexes until `finish`. Write lock held."""
        self.changed |= {k for k in KINDS if result.added[k] or result.removed[k]}

    def finish(self, threads: int) -> None:
        """Build each changed kind's index from the records up to now and serve it. Write lock
        held (nothing else writes); FAISS runs on `threads` cores."""
        from index.vectors import use_search_threads

        seq = self._log.current_seq()
        use_search_threads(threads)
        for kind in sorted(self.changed):
            spec = planned_spec(self._backend.options, self._log.count(kind), self._dim)
            chunks = functools.partial(self._log.vectors_after, kind, 0, self._dim, up_to_seq=seq)
            self._serving.swap(kind, self._backend.build(spec, chunks))
        self._serving.applied_seq = seq
