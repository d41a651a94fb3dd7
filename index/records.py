"""The record contracts: items with their metadata, the sequence log the vector indexes replay,
and the keyword index; one factory opens all three over one database.

The records are the source of truth. Each write is one transaction that bumps a sequence
number; rows carry the sequence of the write that made them and deletions leave tombstones, so
a vector index saved at sequence S is brought up to date by replaying what came after S.
`index/sqlite_records.py` keeps them in one SQLite file per store, `index/postgres_records.py`
in a PostgreSQL schema per store; another database is one new module that fulfils these
Protocols and one more branch of `open_records`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from index.filters import MetadataFilter
from index.keywords import KeywordQuery
from index.types import Kind, Record, RecordWrite, WriteResult

RECORD_STORES = ("sqlite", "postgresql")


class RecordStore(Protocol):
    """Items by id and label: written in transactions, read by id, label, cursor or filter."""

    def bind_model(self, model_id: str, dim: int) -> None:
        """Record the model on first use; ModelMismatchError if the vectors came from another."""
        ...

    def stored_model(self) -> tuple[str, int] | None: ...

    def upsert(self, writes: Sequence[RecordWrite], model_id: str) -> WriteResult:
        """Insert or replace items by id, atomically; a replaced item gets a new label."""
        ...

    def delete(self, item_id: str) -> WriteResult:
        """Remove an item (ItemNotFoundError if absent), leaving a tombstone."""
        ...

    def merge_tags(self, tags: dict[int, dict[str, Any]], max_bytes: int, overwrite: bool) -> int:
        """Merge tags into the current metadata of the records with those labels in one
        transaction; how many were written. A label no longer stored is skipped, and so is a
        record whose metadata would grow past `max_bytes` or, unless `overwrite`, that has one of
        the keys already."""
        ...

    def get(self, item_id: str) -> Record: ...

    def get_by_labels(self, labels: Sequence[int]) -> dict[int, Record]: ...

    def ids_by_sha256(self, hashes: Sequence[str]) -> dict[str, str]:
        """For each SHA-256 that some stored image has, the id of one such image."""
        ...

    def records_after(
        self, label: int, limit: int, kind: Kind | None = None, where: MetadataFilter | None = None
    ) -> list[Record]:
        """Up to `limit` records with labels above `label` in write order (a job's cursor), of
        one `kind` and matching `where` if given."""
        ...

    def labels_matching(
        self, kind: Kind, where: MetadataFilter, limit: int | None = None
    ) -> np.ndarray:
        """Labels of the items of `kind` that match `where`; any `limit` of them when given."""
        ...

    def matching_among(self, kind: Kind, where: MetadataFilter, labels: np.ndarray) -> np.ndarray:
        """Those of `labels` whose items are of `kind` and match `where` (any order)."""
        ...

    def count_with_field(self, kind: Kind, field: str, where: MetadataFilter | None) -> int:
        """How many items of `kind` (matching `where`) have the top-level metadata key `field`."""
        ...

    def count_after(self, label: int) -> int: ...

    def count_images_without_bytes(self) -> int:
        """Images stored as vectors alone (imported): no model can embed them again."""
        ...

    def index_fields(self, fields: Sequence[str]) -> None:
        """Make filters on these metadata fields (equality and `in`) fast: an index on each
        field's value per kind, built now where missing (XMR_FILTER_FIELDS)."""
        ...

    def all_ids(self) -> set[str]: ...

    def max_label(self) -> int: ...

    def blob_paths(self) -> set[str]:
        """Every blob path a record points to."""
        ...

    def retire(self) -> None:
        """Refuse every later write (GenerationRetiredError), from any process, once the writes
        under way are committed: the fence of a switch to a new generation."""
        ...

    def unretire(self) -> None:
        """Take writes again: the switch that retired this generation did not happen."""
        ...

    def close(self) -> None:
        """Release the database; the log and keyword index over it close with it."""
        ...

    def destroy(self) -> None:
        """Close and delete everything this store holds (a deleted collection, a retired
        generation), so that a store opened later under the same name starts empty."""
        ...


class VectorLog(Protocol):
    """The vectors in write order and the deletions since a sequence: what indexes replay."""

    def current_seq(self) -> int: ...

    def count(self, kind: Kind) -> int: ...

    def all_labels(self, kind: Kind) -> np.ndarray: ...

    def vectors_after(
        self, kind: Kind, seq: int, dim: int, chunk: int = 10_000, up_to_seq: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(labels, vectors) of `kind` written after `seq` and not after `up_to_seq`, in chunks."""
        ...

    def vectors_of(self, labels: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, vectors) of the stored items among `labels`, in label order."""
        ...

    def tombstones_after(self, kind: Kind, seq: int, up_to_seq: int | None = None) -> list[int]:
        """Labels of `kind` deleted after `seq` and not after `up_to_seq`."""
        ...

    def prune_tombstones(self, up_to_seq: int) -> None:
        """Forget deletions that every saved index already reflects (a log shared by several
        processes keeps them a while longer, for the processes that have not caught up)."""
        ...

    def vector_store_mark(self) -> int:
        """The newest write mark (a Milvus timestamp) of a vector store the processes share
        that any of them acknowledged: searches wait until the store shows it; 0 if none."""
        ...

    def advance_vector_store_mark(self, mark: int) -> None:
        """Raise the mark to `mark` (never lowers it), before the write is acknowledged."""
        ...

    def exclusively(self) -> AbstractContextManager[None]:
        """Held by one process at a time among those sharing this log (the start-up
        reconciliation of a vector store they share); a log of one process needs no lock."""
        ...


class KeywordIndex(Protocol):
    """BM25 over each item's text and metadata values, kept in step by every record write."""

    def search(
        self,
        kind: Kind,
        query: KeywordQuery,
        limit: int,
        where: MetadataFilter | None = None,
        offset: int = 0,
    ) -> list[tuple[int, float]]:
        """(label, score) of the items of `kind` holding any of the query's words and none of
        its excluded ones, best (highest) first; none when the query has no word."""
        ...

    def scores(self, query: KeywordQuery, labels: Sequence[int]) -> dict[int, float]:
        """The score of each of `labels` that matches `query` (as `search` scores it)."""
        ...


@dataclass(frozen=True)
class Records:
    """The three views of one database; `shared` when other processes may write to it too."""

    items: RecordStore
    log: VectorLog
    keywords: KeywordIndex
    shared: bool = False


POSTGRES_SCHEMES = ("postgresql", "postgres")


def store_key(namespace: str) -> str:
    """A name for a store's namespace that is safe as a folder or schema name: readable, at most
    49 characters, distinct per namespace."""
    readable = re.sub(r"[^a-z0-9_]+", "_", namespace.lower())[:40] or "default"
    return f"{readable}_{hashlib.sha256(namespace.encode()).hexdigest()[:8]}"


def database_problem(database_url: str, timeout_s: int = 5) -> str | None:
    """Why records cannot be kept at `database_url`, in one line (an unknown scheme, a database
    that does not answer within `timeout_s`); None when it answers."""
    scheme = database_url.split("://", 1)[0].lower()
    if scheme not in POSTGRES_SCHEMES:
        return f"unknown database {scheme!r}; expected postgresql://user:password@host:port/db"
    import psycopg  # only where a database is configured

    try:
        psycopg.connect(database_url, connect_timeout=timeout_s).close()
    except psycopg.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[0] if lines else type(e).__name__
        return f"PostgreSQL does not answer: {reason}"
    return None


def open_records(data_dir: Path, database_url: str | None = None, namespace: str = "") -> Records:
    """The records of a store: SQLite in `data_dir` when `database_url` is None, else the
    database it names (`postgresql://...`: one schema per `namespace`)."""
    if database_url is None:
        from index.sqlite_records import open_sqlite_records

        return open_sqlite_records(data_dir / "records.sqlite3")
    scheme = database_url.split("://", 1)[0].lower()
    if scheme in POSTGRES_SCHEMES:
        from index.postgres_records import open_postgres_records  # psycopg: only where used

        return open_postgres_records(database_url, namespace)
    raise ValueError(
        f"unknown record store {scheme!r} in the database URL; expected one of "
        f"{', '.join(RECORD_STORES)} (none for SQLite in the data directory, postgresql://...)"
    )


def stored_model(
    data_dir: Path, database_url: str | None = None, namespace: str = ""
) -> tuple[str, int] | None:
    """The model a store's records were indexed with; None when it has none yet (in SQLite no
    records are created by asking)."""
    if database_url is None and not (data_dir / "records.sqlite3").exists():
        return None
    records = open_records(data_dir, database_url, namespace)
    try:
        return records.items.stored_model()
    finally:
        records.items.close()


def labelled_vectors(rows: Sequence[tuple[Any, Any]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, float32 vectors) from rows of (label, float32 or float16 bytes), in their order.

    A row's length says how it was stored (XMR_RECORD_VECTORS may have changed in between)."""
    labels = np.array([row[0] for row in rows], dtype=np.int64)
    joined = b"".join(bytes(row[1]) for row in rows)
    if len(joined) == len(rows) * dim * 4:
        vectors = np.frombuffer(joined, dtype=np.float32)
    elif len(joined) == len(rows) * dim * 2:
        vectors = _from_float16(np.frombuffer(joined, dtype=np.float16).reshape(len(rows), dim))
    else:  # both kinds: row by row
        vectors = np.concatenate([_row_vector(bytes(row[1]), dim) for row in rows])
    return labels, vectors.reshape(len(rows), dim)


def _row_vector(data: bytes, dim: int) -> np.ndarray:
    if len(data) == dim * 2:
        return _from_float16(np.frombuffer(data, dtype=np.float16).reshape(1, dim))
    return np.frombuffer(data, dtype=np.float32).reshape(1, dim)


def _from_float16(rows: np.ndarray) -> np.ndarray:
    """Float16 rows as unit float32 again: rounding moved each norm by up to 5e-4, which would
    scale the row's scores by as much; normalized, only its direction moved (cosine > 0.9999998)."""
    vectors = rows.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def vectors_in_pages(
    fetch_after: Callable[[int], Sequence[tuple[Any, Any]]], dim: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(labels, vectors) page by page: `fetch_after(label)` gives the rows past `label`, in
    label order, until none are left (a keyset scan: no page is read twice)."""
    last_label = -1
    while rows := fetch_after(last_label):
        labels, vectors = labelled_vectors(rows, dim)
        yield labels, vectors
        last_label = int(labels[-1])
