"""The vectors of recent query texts, so that a query asked again (the next page of results, a
popular search) skips the model.

Keyed by the text's token ids: two texts the tokenizer reads alike (case, spacing) share an
entry, and the vector is exactly the one the model made for those tokens. One cache belongs to
one loaded model (app.services.encoding), so a model switch starts from an empty one. Bounded
in bytes, least recently used first out; it lives on the event loop and needs no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

ENTRY_OVERHEAD_BYTES = 200  # the dict slot, the key and array objects, beside their buffers


@dataclass(frozen=True)
class QueryCacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int


class QueryVectorCache:
    """An LRU of token ids -> unit vector, at most `max_bytes` in all; 0 keeps nothing."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0

    @property
    def enabled(self) -> bool:
        return self._max_bytes > 0

    def get(self, key: bytes) -> np.ndarray | None:
        vector = self._entries.get(key)
        if vector is None:
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return vector

    def put(self, key: bytes, vector: np.ndarray) -> None:
        size = _entry_bytes(key, vector)
        if size > self._max_bytes or key in self._entries:
            return
        stored = vector.copy()  # not a view that keeps a whole batch's rows alive
        stored.flags.writeable = False  # handed to every later caller: none may change it
        self._entries[key] = stored
        self._bytes += size
        while self._bytes > self._max_bytes:
            old_key, old = self._entries.popitem(last=False)
            self._bytes -= _entry_bytes(old_key, old)

    def stats(self) -> QueryCacheStats:
        return QueryCacheStats(self._hits, self._misses, len(self._entries), self._bytes)


def token_key(row: np.ndarray) -> bytes:
    """A token row without its padding (id 0), as the key of its text."""
    length = int(np.count_nonzero(row))
    return np.ascontiguousarray(row[:length], dtype=np.int32).tobytes()


def _entry_bytes(key: bytes, vector: np.ndarray) -> int:
    return len(key) + vector.nbytes + ENTRY_OVERHEAD_BYTES
