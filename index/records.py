"""The record store: SQLite, the source of truth for every item and its vector.

Each write is one transaction that bumps a sequence number; rows carry the sequence of the write
that made them and deletions leave tombstones, so a FAISS snapshot taken at sequence S can be
brought up to date by replaying what came after S.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from index import keywords
from index.errors import ItemNotFoundError, ModelMismatchError
from index.filters import MetadataFilter
from index.metadata import load_stored_metadata
from index.sqlite import open_database, transaction

Kind = Literal["image", "text"]
KINDS: tuple[Kind, Kind] = ("image", "text")

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


@dataclass(frozen=True)
class Record:
    """An indexed item as the API shows it (without its vector)."""

    label: int
    id: str
    kind: Kind
    metadata: dict[str, Any] | None
    text: str | None
    content_path: str | None
    content_type: str | None
    content_sha256: str | None
    model: str
    created_at: float
    updated_at: float
    payload_bytes: int = 0  # stored metadata JSON and text: what a response carries of it


@dataclass(frozen=True)
class RecordInput:
    """What a write stores for one item; `vector` is float32 (dim,)."""

    id: str
    kind: Kind
    vector: np.ndarray
    metadata: dict[str, Any] | None = None
    text: str | None = None
    content_path: str | None = None
    content_type: str | None = None
    content_sha256: str | None = None
    created_at: float | None = None  # kept from the item's first write (re-embedding carries it)


@dataclass
class WriteResult:
    """What one write changed, for the vector indexes to follow."""

    seq: int
    added: dict[Kind, list[tuple[int, np.ndarray]]] = field(
        default_factory=lambda: {"image": [], "text": []}
    )
    removed: dict[Kind, list[int]] = field(default_factory=lambda: {"image": [], "text": []})
    released_blobs: list[tuple[str, str]] = field(default_factory=list)  # (sha256, path)


class RecordStore:
    """Items, their vectors and tombstones in one SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_database(path, _SCHEMA)
        self._lock = threading.RLock()
        self._build_keywords()

    def _build_keywords(self) -> None:
        """Fill the keyword index from the items once (a database made before it existed)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM meta WHERE key = ?", (keywords.BUILT_KEY,)
            ).fetchone()
            if row is not None:
                return
            with self._transaction():
                self._conn.execute("DELETE FROM keywords")
                rows = self._conn.execute("SELECT label, text, metadata FROM items")
                for label, text, metadata in rows.fetchall():
                    keywords.add(self._conn, label, text, load_stored_metadata(metadata))
                self._conn.execute("INSERT INTO meta VALUES (?, '1')", (keywords.BUILT_KEY,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- model identity -------------------------------------------------------------------
    def bind_model(self, model_id: str, dim: int) -> None:
        """Record the model on first use; refuse a store whose vectors came from another model."""
        with self._lock:
            stored = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            if "model" not in stored:
                with self._transaction():
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
        with self._lock:
            stored = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if "model" not in stored:
            return None
        return stored["model"], int(stored["dim"])

    # -- writes ---------------------------------------------------------------------------
    def upsert(self, items: Sequence[RecordInput], model_id: str) -> WriteResult:
        """Insert or replace items by id, atomically; a replaced item gets a new label."""
        now = time.time()
        with self._lock, self._transaction():
            seq = self._next_seq()
            result = WriteResult(seq=seq)
            for item in items:
                existing_created_at = self._remove_existing(item.id, seq, result)
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
                        item.content_path,
                        item.content_type,
                        item.content_sha256,
                        model_id,
                        np.ascontiguousarray(item.vector, dtype=np.float32).tobytes(),
                        seq,
                        created_at,
                        now,
                    ),
                )
                label = int(cursor.lastrowid or 0)
                keywords.add(self._conn, label, item.text, item.metadata)
                result.added[item.kind].append((label, item.vector))
            self._collect_released_blobs(result)
        return result

    def delete(self, item_id: str) -> WriteResult:
        with self._lock, self._transaction():
            seq = self._next_seq()
            result = WriteResult(seq=seq)
            if self._remove_existing(item_id, seq, result) is None:
                raise ItemNotFoundError(item_id)
            self._collect_released_blobs(result)
        return result

    def _remove_existing(self, item_id: str, seq: int, result: WriteResult) -> float | None:
        row = self._conn.execute(
            "SELECT label, kind, created_at, content_sha256, content_path FROM items WHERE id = ?",
            (item_id,),
        ).fetchone()
        if row is None:
            return None
        label, kind, created_at, sha, path = row
        self._conn.execute("DELETE FROM items WHERE label = ?", (label,))
        keywords.remove(self._conn, [label])
        self._conn.execute("INSERT INTO tombstones VALUES (?, ?, ?)", (label, kind, seq))
        result.removed[kind].append(int(label))
        if sha:
            result.released_blobs.append((sha, path))
        return float(created_at)

    def _collect_released_blobs(self, result: WriteResult) -> None:
        still_used = {
            sha
            for sha, _ in result.released_blobs
            if self._conn.execute(
                "SELECT 1 FROM items WHERE content_sha256 = ? LIMIT 1", (sha,)
            ).fetchone()
        }
        result.released_blobs = [(s, p) for s, p in result.released_blobs if s not in still_used]

    def _next_seq(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        seq = int(row[0]) + 1 if row else 1
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(seq),))
        return seq

    def prune_tombstones(self, up_to_seq: int) -> None:
        """Forget deletions that every snapshot already reflects."""
        with self._lock, self._transaction():
            self._conn.execute("DELETE FROM tombstones WHERE seq <= ?", (up_to_seq,))

    # -- reads ----------------------------------------------------------------------------
    def current_seq(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        return int(row[0]) if row else 0

    def get(self, item_id: str) -> Record:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM items WHERE id = ?", (item_id,)
            ).fetchone()
        if row is None:
            raise ItemNotFoundError(item_id)
        return _record(row)

    def get_by_labels(self, labels: Sequence[int]) -> dict[int, Record]:
        if not labels:
            return {}
        marks = ",".join("?" * len(labels))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM items WHERE label IN ({marks})", [int(x) for x in labels]
            ).fetchall()
        return {int(row[0]): _record(row) for row in rows}

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._conn.execute(f"SELECT id FROM items WHERE id IN ({marks})", list(ids))
            return {row[0] for row in rows.fetchall()}

    def ids_by_sha256(self, hashes: Sequence[str]) -> dict[str, str]:
        """For each SHA-256 that some stored image has, the id of one such image."""
        found: dict[str, str] = {}
        for start in range(0, len(hashes), 500):  # SQLite caps the number of parameters
            chunk = list(hashes[start : start + 500])
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT content_sha256, id FROM items WHERE content_sha256 IN ({marks})",
                    chunk,
                ).fetchall()
            found.update({sha: item_id for sha, item_id in rows})
        return found

    def count(self, kind: Kind) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM items WHERE kind = ?", (kind,))
            return int(row.fetchone()[0])

    def vectors_after(
        self,
        kind: Kind,
        seq: int,
        dim: int,
        chunk: int = 10_000,
        up_to_seq: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(labels, vectors) of `kind` written after `seq` and not after `up_to_seq`, in chunks."""
        last_label = -1
        upper = up_to_seq if up_to_seq is not None else 2**62
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT label, vector FROM items "
                    "WHERE kind = ? AND seq > ? AND seq <= ? AND label > ? "
                    "ORDER BY label LIMIT ?",
                    (kind, seq, upper, last_label, chunk),
                ).fetchall()
            if not rows:
                return
            labels = np.array([row[0] for row in rows], dtype=np.int64)
            vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32)
            yield labels, vectors.reshape(len(rows), dim)
            last_label = int(labels[-1])

    def records_after(
        self,
        label: int,
        limit: int,
        kind: Kind | None = None,
        where: MetadataFilter | None = None,
    ) -> list[Record]:
        """Up to `limit` records with labels above `label`, in write order (labels only grow),
        of one `kind` and matching `where` if given."""
        clause, params = where.sql() if where is not None else ("1", [])
        kinds = list(KINDS) if kind is None else [kind]
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM items WHERE label > ? AND kind IN (?, ?) AND ({clause}) "
                "ORDER BY label LIMIT ?",
                [label, kinds[0], kinds[-1], *params, limit],
            ).fetchall()
        return [_record(row) for row in rows]

    def merge_tags(
        self, tags: dict[int, dict[str, Any]], max_bytes: int, overwrite: bool = False
    ) -> int:
        """Merge `tags` into the current metadata of the records with those labels, in one
        transaction; how many were written.

        A label no longer stored (the item was rewritten, which gives it a new label, or deleted)
        is skipped, and so is a record whose metadata would grow past `max_bytes` or, unless
        `overwrite`, that has one of the keys already: nothing a client wrote is lost.
        """
        written = 0
        now = time.time()
        with self._lock, self._transaction():
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

    def count_with_field(self, kind: Kind, field: str, where: MetadataFilter | None) -> int:
        """How many items of `kind` (matching `where`) have the top-level metadata key `field`."""
        clause, params = where.sql() if where is not None else ("1", [])
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM items WHERE kind = ? AND json_type(metadata, ?) IS NOT NULL "
                f"AND ({clause})",
                [kind, f'$."{field}"', *params],
            ).fetchone()
        return int(row[0])

    def count_after(self, label: int) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM items WHERE label > ?", (label,))
            return int(row.fetchone()[0])

    def all_ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT id FROM items")}

    def max_label(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT MAX(label) FROM items").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def tombstones_after(self, kind: Kind, seq: int) -> list[int]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT label FROM tombstones WHERE kind = ? AND seq > ?", (kind, seq)
            ).fetchall()
        return [int(row[0]) for row in rows]

    def vectors_of(self, labels: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, vectors) of the stored items among `labels`, in label order."""
        found: list[np.ndarray] = []
        vectors: list[bytes] = []
        wanted = np.unique(np.asarray(labels, dtype=np.int64))
        for start in range(0, len(wanted), 5000):  # SQLite caps the number of parameters
            chunk = [int(x) for x in wanted[start : start + 5000]]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT label, vector FROM items WHERE label IN ({marks}) ORDER BY label",
                    chunk,
                ).fetchall()
            found.append(np.array([row[0] for row in rows], dtype=np.int64))
            vectors.extend(row[1] for row in rows)
        matrix = np.frombuffer(b"".join(vectors), dtype=np.float32).reshape(-1, dim)
        return (np.concatenate(found) if found else np.zeros(0, np.int64)), matrix

    def labels_matching(self, kind: Kind, where: MetadataFilter) -> np.ndarray:
        """Labels of the items of `kind` whose metadata satisfies the filter."""
        clause, params = where.sql()
        with self._lock:
            rows = self._conn.execute(
                f"SELECT label FROM items WHERE kind = ? AND ({clause})", [kind, *params]
            ).fetchall()
        return np.array([row[0] for row in rows], dtype=np.int64)

    def keyword_search(
        self,
        kind: Kind,
        match: str,
        limit: int,
        where: MetadataFilter | None = None,
        offset: int = 0,
    ) -> list[tuple[int, float]]:
        """(label, BM25 score) of the items of `kind` matching `match`, best first.

        Scores are FTS5's bm25() negated, so that higher is better like a cosine.
        """
        clause, params = where.sql() if where is not None else ("1", [])
        with self._lock:
            rows = self._conn.execute(
                "SELECT items.label, -bm25(keywords) AS score FROM keywords "
                "JOIN items ON items.label = keywords.rowid "
                f"WHERE keywords MATCH ? AND items.kind = ? AND ({clause}) "
                "ORDER BY score DESC, items.label LIMIT ? OFFSET ?",
                [match, kind, *params, limit, offset],
            ).fetchall()
        return [(int(label), float(score)) for label, score in rows]

    def keyword_scores(self, match: str, labels: Sequence[int]) -> dict[int, float]:
        """The BM25 score of each of `labels` that matches `match` (as keyword_search scores)."""
        marks = ",".join("?" * len(labels))
        with self._lock:
            rows = self._conn.execute(
                "SELECT rowid, -bm25(keywords) FROM keywords "
                f"WHERE keywords MATCH ? AND rowid IN ({marks})",
                [match, *(int(x) for x in labels)],
            ).fetchall()
        return {int(label): float(score) for label, score in rows}

    def all_labels(self, kind: Kind) -> np.ndarray:
        with self._lock:
            rows = self._conn.execute("SELECT label FROM items WHERE kind = ?", (kind,)).fetchall()
        return np.array([row[0] for row in rows], dtype=np.int64)

    def blob_paths(self) -> set[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT content_path FROM items WHERE content_path IS NOT NULL"
            ).fetchall()
        return {row[0] for row in rows}

    # -- helpers --------------------------------------------------------------------------
    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._conn, self._lock)


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
