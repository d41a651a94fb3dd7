"""The record contracts (index/records.py) in one SQLite file: WAL, synchronous=FULL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from index import sqlite_keywords as keywords
from index.errors import GenerationRetiredError, ItemNotFoundError, ModelMismatchError
from index.filters import MetadataFilter, field_index_name
from index.metadata import load_stored_metadata
from index.records import Records, labelled_vectors
from index.sqlite import SqliteDatabase, field_value_sql, where_sql
from index.sqlite_keywords import SqliteKeywordIndex, build_keywords
from index.types import KINDS, Kind, Record, RecordWrite, StoredBlob, WriteResult

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    label INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('image', 'text')),
    metadata TEXT,
    text TEXT,
    content_path TEXT,
    content_type TEXT,
    content_sha256 TEXT,
    model TEXT NOT NULL,
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_kind_seq ON items (kind, seq);
CREATE INDEX IF NOT EXISTS items_sha ON items (content_sha256);
CREATE INDEX IF NOT EXISTS items_content ON items (content_path) WHERE content_path IS NOT NULL;
CREATE TABLE IF NOT EXISTS tombstones (
    label INTEGER NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_kind_seq ON tombstones (kind, seq);
"""
    + keywords.SCHEMA
)

_COLUMNS = (
    "label, id, kind, metadata, text, content_path, content_type, content_sha256, model, "
    "created_at, updated_at"
)


def open_sqlite_records(path: Path) -> Records:
    db = SqliteDatabase(path, _SCHEMA)
    build_keywords(db)
    return Records(SqliteRecordStore(db), SqliteVectorLog(db), SqliteKeywordIndex(db))


class SqliteRecordStore:
    """Items, their vectors and tombstones; the writes of the RecordStore contract."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.path = db.path
        self._db = db
        self._conn = db.conn

    def close(self) -> None:
        self._db.close()

    def destroy(self) -> None:
        """Close; the file goes with the store's folder, which its owner removes."""
        self._db.close()

    # -- model identity -------------------------------------------------------------------
    def bind_model(self, model_id: str, dim: int) -> None:
        stored = self._meta()
        if "model" not in stored:
            with self._db.transaction():
                self._conn.execute("INSERT INTO meta VALUES ('model', ?)", (model_id,))
                self._conn.execute("INSERT INTO meta VALUES ('dim', ?)", (str(dim),))
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('seq', '0')")
            return
        if stored["model"] != model_id or int(stored["dim"]) != dim:
            raise ModelMismatchError(
                f"the data in {self.path.parent} was indexed with {stored['model']} "
                f"(dim {stored['dim']}), but the service loaded {model_id} (dim {dim}). "
                "Start with the same XMR_MODEL/XMR_PRETRAINED, or point XMR_DATA_DIR at a new "
                "directory and re-index"
            )

    def stored_model(self) -> tuple[str, int] | None:
        stored = self._meta()
        if "model" not in stored:
            return None
        return stored["model"], int(stored["dim"])

    def _meta(self) -> dict[str, str]:
        return dict(self._db.rows("SELECT key, value FROM meta"))

    # -- writes ---------------------------------------------------------------------------
    def upsert(self, writes: Sequence[RecordWrite], model_id: str) -> WriteResult:
        now = time.time()
        with self._db.transaction():
            result = WriteResult(seq=self._next_seq())
            for write in writes:
                item, blob = write.item, write.blob
                existing_created_at = self._remove_existing(item.id, result)
                created_at = item.created_at or existing_created_at or now
                cursor = self._conn.execute(
                    "INSERT INTO items (id, kind, metadata, text, content_path, content_type, "
                    "content_sha256, model, vector, seq, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.id,
                        item.kind,
                        _dump_metadata(item.metadata),
                        item.text,
                        None if blob is None else blob.path,
                        item.content_type,
                        None if blob is None else blob.sha256,
                        model_id,
                        write.vector_bytes(),
                        result.seq,
                        created_at,
                        now,
                    ),
                )
                label = int(cursor.lastrowid or 0)
                keywords.add(self._conn, label, item.text, item.metadata)
                result.added[item.kind].append((label, write.vector))
            self._collect_released_blobs(result)
        return result

    def delete(self, item_id: str) -> WriteResult:
        with self._db.transaction():
            result = WriteResult(seq=self._next_seq())
            if self._remove_existing(item_id, result) is None:
                raise ItemNotFoundError(item_id)
            self._collect_released_blobs(result)
        return result

    def _remove_existing(self, item_id: str, result: WriteResult) -> float | None:
        row = self._conn.execute(
            "SELECT label, kind, created_at, content_sha256, content_path FROM items WHERE id = ?",
            (item_id,),
        ).fetchone()
        if row is None:
            return None
        label, kind, created_at, sha, path = row
        self._conn.execute("DELETE FROM items WHERE label = ?", (label,))
        keywords.remove(self._conn, [label])
        self._conn.execute("INSERT INTO tombstones VALUES (?, ?, ?)", (label, kind, result.seq))
        result.removed[kind].append(int(label))
        if sha:
            result.released_blobs.append(StoredBlob(sha, path))
        return float(created_at)

    def _collect_released_blobs(self, result: WriteResult) -> None:
        result.released_blobs = [
            blob
            for blob in result.released_blobs
            if not self._conn.execute(
                "SELECT 1 FROM items WHERE content_sha256 = ? LIMIT 1", (blob.sha256,)
            ).fetchone()
        ]

    def retire(self) -> None:
        with self._db.transaction():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('retired', '1')")

    def unretire(self) -> None:
        with self._db.transaction():
            self._conn.execute("DELETE FROM meta WHERE key = 'retired'")

    def _check_not_retired(self) -> None:
        if self._conn.execute("SELECT 1 FROM meta WHERE key = 'retired'").fetchone():
            raise GenerationRetiredError("this generation was retired by a switch of model")

    def _next_seq(self) -> int:
        self._check_not_retired()
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        seq = int(row[0]) + 1 if row else 1
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(seq),))
        return seq

    def merge_tags(
        self, tags: dict[int, dict[str, Any]], max_bytes: int, overwrite: bool = False
    ) -> int:
        written = 0
        now = time.time()
        with self._db.transaction():
            self._check_not_retired()
            for label, tag in tags.items():
                row = self._conn.execute(
                    "SELECT text, metadata FROM items WHERE label = ?", (label,)
                ).fetchone()
                if row is None:
                    continue
                current = load_stored_metadata(row[1]) or {}
                if not overwrite and any(key in current for key in tag):
                    continue
                merged = {**current, **tag}
                text = _dump_metadata(merged) or ""
                if len(text.encode("utf-8")) > max_bytes:
                    continue
                self._conn.execute(
                    "UPDATE items SET metadata = ?, updated_at = ? WHERE label = ?",
                    (text, now, label),
                )
                keywords.remove(self._conn, [label])
                keywords.add(self._conn, label, row[0], merged)
                written += 1
        return written

    # -- reads ----------------------------------------------------------------------------
    def get(self, item_id: str) -> Record:
        rows = self._db.rows(f"SELECT {_COLUMNS} FROM items WHERE id = ?", (item_id,))
        if not rows:
            raise ItemNotFoundError(item_id)
        return _record(rows[0])

    def get_by_labels(self, labels: Sequence[int]) -> dict[int, Record]:
        sql = f"SELECT {_COLUMNS} FROM items WHERE label IN ({{marks}})"
        return {int(row[0]): _record(row) for row in self._db.rows_in(sql, _ints(labels))}

    def ids_by_sha256(self, hashes: Sequence[str]) -> dict[str, str]:
        sql = "SELECT content_sha256, id FROM items WHERE content_sha256 IN ({marks})"
        return {sha: item_id for sha, item_id in self._db.rows_in(sql, hashes)}

    def records_after(
        self, label: int, limit: int, kind: Kind | None = None, where: MetadataFilter | None = None
    ) -> list[Record]:
        clause, params = where_sql(where)
        kinds = list(KINDS) if kind is None else [kind]
        rows = self._db.rows(
            f"SELECT {_COLUMNS} FROM items WHERE label > ? AND kind IN (?, ?) AND ({clause}) "
            "ORDER BY label LIMIT ?",
            [label, kinds[0], kinds[-1], *params, limit],
        )
        return [_record(row) for row in rows]

    def labels_matching(
        self, kind: Kind, where: MetadataFilter, limit: int | None = None
    ) -> np.ndarray:
        clause, params = where_sql(where)
        rows = self._db.rows(
            f"SELECT label FROM items WHERE kind = ? AND ({clause}) LIMIT ?",
            [kind, *params, -1 if limit is None else limit],
        )
        return np.array([row[0] for row in rows], dtype=np.int64)

    def matching_among(self, kind: Kind, where: MetadataFilter, labels: np.ndarray) -> np.ndarray:
        clause, params = where_sql(where)
        # NOT INDEXED keeps the planner on the labels (rowids): an index on a filtered field
        # would have it walk every item with that value instead
        sql = (
            f"SELECT label FROM items NOT INDEXED WHERE kind = ? AND ({clause}) "
            "AND label IN ({marks})"
        )
        rows = self._db.rows_in(sql, _ints(labels), before=[kind, *params])
        return np.array([row[0] for row in rows], dtype=np.int64)

    def count_with_field(self, kind: Kind, field: str, where: MetadataFilter | None) -> int:
        clause, params = where_sql(where)
        rows = self._db.rows(
            "SELECT COUNT(*) FROM items WHERE kind = ? AND json_type(metadata, ?) IS NOT NULL "
            f"AND ({clause})",
            [kind, f'$."{field}"', *params],
        )
        return int(rows[0][0])

    def count_after(self, label: int) -> int:
        return int(self._db.rows("SELECT COUNT(*) FROM items WHERE label > ?", (label,))[0][0])

    def count_images_without_bytes(self) -> int:
        sql = "SELECT COUNT(*) FROM items WHERE kind = 'image' AND content_path IS NULL"
        return int(self._db.rows(sql)[0][0])

    def index_fields(self, fields: Sequence[str]) -> None:
        with self._db.transaction():
            for field in fields:
                self._conn.execute(
                    f'CREATE INDEX IF NOT EXISTS "{field_index_name(field)}" '
                    f"ON items (kind, {field_value_sql(field)})"
                )

    def all_ids(self) -> set[str]:
        return {row[0] for row in self._db.rows("SELECT id FROM items")}

    def max_label(self) -> int:
        rows = self._db.rows("SELECT MAX(label) FROM items")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def blob_paths(self) -> set[str]:
        rows = self._db.rows(
            "SELECT DISTINCT content_path FROM items WHERE content_path IS NOT NULL"
        )
        return {row[0] for row in rows}


class SqliteVectorLog:
    """The VectorLog contract over the items and tombstones tables."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._mark = 0

    def vector_store_mark(self) -> int:
        return self._mark  # one process writes and reads: nothing to share

    def advance_vector_store_mark(self, mark: int) -> None:
        self._mark = max(self._mark, mark)

    def exclusively(self) -> AbstractContextManager[None]:
        return nullcontext()  # one process has the file

    def current_seq(self) -> int:
        rows = self._db.rows("SELECT value FROM meta WHERE key = 'seq'")
        return int(rows[0][0]) if rows else 0

    def count(self, kind: Kind) -> int:
        return int(self._db.rows("SELECT COUNT(*) FROM items WHERE kind = ?", (kind,))[0][0])

    def all_labels(self, kind: Kind) -> np.ndarray:
        rows = self._db.rows("SELECT label FROM items WHERE kind = ?", (kind,))
        return np.array([row[0] for row in rows], dtype=np.int64)

    def vectors_after(
        self, kind: Kind, seq: int, dim: int, chunk: int = 10_000, up_to_seq: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        upper = up_to_seq if up_to_seq is not None else 2**62
        return self._pages(kind, seq, upper, dim, chunk)

    def _pages(
        self, kind: Kind, seq: int, upper: int, dim: int, chunk: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Keyset pages on (seq, label), the order of the (kind, seq) index, so each page is
        read straight from where the last one ended. Labels only grow (AUTOINCREMENT) and one
        process writes, so that is label order. (Paging on the label alone made SQLite read every
        remaining row of the kind and sort it for each page: quadratic, 4 minutes at 1M.)"""
        position = (seq, 2**62)  # (seq, label) past this: seq > `seq`
        while rows := self._db.rows(
            "SELECT label, vector, seq FROM items "
            "WHERE kind = ? AND (seq, label) > (?, ?) AND seq <= ? "
            "ORDER BY seq, label LIMIT ?",
            (kind, *position, upper, chunk),
        ):
            yield labelled_vectors(rows, dim)
            position = (int(rows[-1][2]), int(rows[-1][0]))

    def vectors_of(self, labels: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        wanted = np.unique(np.asarray(labels, dtype=np.int64))
        sql = "SELECT label, vector FROM items WHERE label IN ({marks}) ORDER BY label"
        rows = self._db.rows_in(sql, _ints(wanted))  # chunks ascend, so rows stay in order
        return labelled_vectors(rows, dim)

    def tombstones_after(self, kind: Kind, seq: int, up_to_seq: int | None = None) -> list[int]:
        upper = up_to_seq if up_to_seq is not None else 2**62
        rows = self._db.rows(
            "SELECT label FROM tombstones WHERE kind = ? AND seq > ? AND seq <= ?",
            (kind, seq, upper),
        )
        return [int(row[0]) for row in rows]

    def prune_tombstones(self, up_to_seq: int) -> None:
        with self._db.transaction():
            self._db.conn.execute("DELETE FROM tombstones WHERE seq <= ?", (up_to_seq,))


def _ints(values: Sequence[int] | np.ndarray) -> list[int]:
    return [int(x) for x in values]


def _dump_metadata(metadata: dict[str, Any] | None) -> str | None:
    return None if metadata is None else json.dumps(metadata, ensure_ascii=False)


def _record(row: tuple[Any, ...]) -> Record:
    label, item_id, kind, metadata, text, path, ctype, sha, model, created, updated = row
    return Record(
        label=int(label),
        id=item_id,
        kind=kind,
        metadata=load_stored_metadata(metadata),
        text=text,
        content_path=path,
        content_type=ctype,
        content_sha256=sha,
        model=model,
        created_at=float(created),
        updated_at=float(updated),
        payload_bytes=len(metadata or "") + len(text or ""),
    )
