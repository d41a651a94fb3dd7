"""The collection catalog contract: every collection's description (which generation serves,
which is being filled, the model of each), and the factory that opens it.

`FolderCatalog` keeps each description in its collection's folder (`collection.json`, replaced
by atomic rename), as one process has always done; `index/postgres_catalog.py` keeps them in
PostgreSQL, where every replica reads them. A description written is the commit point of a
collection's creation or of its switch to a new generation. `version()` changes with every
write and deletion, so a replica learns with one small read whether anything changed.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Protocol

from index.layout import (
    DEFAULT_COLLECTION,
    STATE_FILE,
    CollectionFolder,
    CollectionState,
    collection_names,
)


class CollectionCatalog(Protocol):
    shared: bool  # other processes write it too: a replica follows their changes

    def names(self) -> list[str]:
        """Every collection described, `default` included if it is, sorted."""
        ...

    def read(self, name: str) -> CollectionState | None: ...

    def write(self, state: CollectionState) -> None:
        """Replace a collection's description (StorageError if it cannot be saved)."""
        ...

    def create(self, state: CollectionState) -> CollectionState:
        """Describe a collection unless it is described already; the description that holds."""
        ...

    def delete(self, name: str) -> None: ...

    def version(self) -> int:
        """A number that changes whenever a description is written or deleted."""
        ...

    def close(self) -> None: ...


class FolderCatalog:
    """Each collection's `collection.json` in its folder under the data directory."""

    shared = False

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._changes = itertools.count(1)
        self._version = 0

    def names(self) -> list[str]:
        found = collection_names(self._data_dir)
        if (CollectionFolder(self._data_dir, DEFAULT_COLLECTION).root / STATE_FILE).exists():
            found = [DEFAULT_COLLECTION, *found]
        return sorted(found)

    def read(self, name: str) -> CollectionState | None:
        return CollectionFolder(self._data_dir, name).read()

    def write(self, state: CollectionState) -> None:
        CollectionFolder(self._data_dir, state.name).write(state)
        self._version = next(self._changes)

    def create(self, state: CollectionState) -> CollectionState:
        existing = self.read(state.name)
        if existing is not None:
            return existing
        self.write(state)
        return state

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (CollectionFolder(self._data_dir, name).root / STATE_FILE).unlink()
        self._version = next(self._changes)

    def version(self) -> int:
        return self._version

    def close(self) -> None:
        pass


def open_catalog(data_dir: Path, database_url: str | None = None) -> CollectionCatalog:
    """The catalog: files in `data_dir` when `database_url` is None, else that database."""
    if database_url is None:
        return FolderCatalog(data_dir)
    from index.postgres_catalog import PostgresCatalog  # psycopg: only where used

    return PostgresCatalog(database_url)
