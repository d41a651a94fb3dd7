"""The job ledger (app/jobs/ledger.py) in one SQLite file: rows are read by column name."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.jobs.ledger import (
    MAX_ERRORS_SHOWN,
    QUEUED_KINDS,
    JobItem,
    JobKind,
    JobStatus,
    JobView,
    JobWaits,
    job_item_of,
    job_view_of,
)
from index.sqlite import open_database, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_items (
    job_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT,
    source TEXT,
    staged INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,
    status TEXT NOT NULL,
    error TEXT,
    blob_offset INTEGER,
    blob_length INTEGER,
    PRIMARY KEY (job_id, position)
);
CREATE INDEX IF NOT EXISTS job_items_pending ON job_items (job_id, status, position);
"""
# columns added after the first release: (name, SQL type and default)
_JOB_COLUMNS = (
    ("collection", "TEXT NOT NULL DEFAULT 'default'"),
    ("kind", "TEXT NOT NULL DEFAULT 'batch'"),
    ("params", "TEXT"),
    ("total", "INTEGER"),  # jobs without items count here; batch jobs count their job_items
    ("done_count", "INTEGER"),
    ("failed_count", "INTEGER"),
    ("run_started_at", "REAL"),
    ("run_started_done", "INTEGER"),
    ("result", "TEXT"),  # what a finished job found (duplicates: the groups)
    ("cursor", "INTEGER"),  # where a job over stored items goes on after a restart
    ("owner", "TEXT"),  # who runs it now, until lease_until
    ("lease_until", "REAL"),
)
_ITEM_COLUMNS = (
    ("blob_offset", "INTEGER"),
    ("blob_length", "INTEGER"),
    ("duplicate_of", "TEXT"),
    ("duplicate_score", "REAL"),
)


class SqliteJobLedger(JobWaits):
    """Jobs and job items in SQLite (WAL, synchronous=FULL), one connection and its lock."""

    shared = False  # one process: a job left running was interrupted

    def __init__(self, path: Path) -> None:
        self._conn = open_database(path, _SCHEMA)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()  # guards the connection: every statement takes it
        super().__init__()
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Files written before staged images had offsets get the columns (NULL: whole file)."""
        with self._transaction():
            for table, columns in (("job_items", _ITEM_COLUMNS), ("jobs", _JOB_COLUMNS)):
                present = {row["name"] for row in self._conn.execute(f"PRAGMA table_info({table})")}
                for column, declaration in columns:
                    if column not in present:
                        self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writes ---------------------------------------------------------------------------
    def create(
        self,
        job_id: str,
        items: Sequence[JobItem],
        collection: str = "default",
        kind: JobKind = "batch",
        params: dict[str, Any] | None = None,
    ) -> None:
        now = time.time()
        with self._transaction():
            self._conn.execute(
                "INSERT INTO jobs (id, status, created_at, updated_at, collection, kind, params) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, now, now, collection, kind, _dump(params)),
            )
            self._conn.executemany(
                "INSERT INTO job_items (job_id, position, item_id, kind, text, source, staged, "
                "metadata, status, error, blob_offset, blob_length) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        job_id,
                        item.position,
                        item.item_id,
                        item.kind,
                        item.text,
                        item.source,
                        int(item.staged),
                        _dump(item.metadata),
                        item.status,
                        item.error,
                        item.offset,
                        item.length,
                    )
                    for item in items
                ],
            )

    def set_status(self, job_id: str, status: JobStatus, error: str | None = None) -> None:
        with self._transaction():
            self._set_status_locked(job_id, status, error)

    def _set_status_locked(self, job_id: str, status: JobStatus, error: str | None = None) -> None:
        self._conn.execute(
            "UPDATE jobs SET status = ?, error = ?, updated_at = ? WHERE id = ?",
            (status, error, time.time(), job_id),
        )
        if status == "running":  # the rate is measured from here
            self._conn.execute(
                "UPDATE jobs SET run_started_at = ?, run_started_done = ? WHERE id = ?",
                (time.time(), self._done_locked(job_id), job_id),
            )

    def _done_locked(self, job_id: str) -> int:
        job = self._conn.execute(
            "SELECT kind, done_count FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if job is None:
            return 0
        if job["kind"] != "batch":
            return int(job["done_count"] or 0)
        counted = self._conn.execute(
            "SELECT COUNT(*) FROM job_items WHERE job_id = ? AND status = 'done'", (job_id,)
        ).fetchone()
        return int(counted[0])

    def set_progress(self, job_id: str, total: int, done: int, failed: int = 0) -> None:
        self._update(job_id, total=total, done_count=done, failed_count=failed)

    def set_result(self, job_id: str, result: dict[str, Any]) -> None:
        self._update(job_id, result=json.dumps(result))

    def set_cursor(self, job_id: str, cursor: int, total: int, done: int) -> None:
        self._update(job_id, cursor=cursor, total=total, done_count=done)

    def _update(self, job_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._transaction():
            self._conn.execute(
                f"UPDATE jobs SET {assignments}, updated_at = ? WHERE id = ?",
                (*columns.values(), time.time(), job_id),
            )

    def record_results(
        self,
        job_id: str,
        done: Sequence[int],
        failed: dict[int, str],
        duplicates: dict[int, tuple[str, float]] | None = None,
    ) -> None:
        with self._transaction():
            self._conn.executemany(
                "UPDATE job_items SET duplicate_of = ?, duplicate_score = ? "
                "WHERE job_id = ? AND position = ?",
                [(of, score, job_id, p) for p, (of, score) in (duplicates or {}).items()],
            )
            self._conn.executemany(
                "UPDATE job_items SET status = 'done', error = NULL "
                "WHERE job_id = ? AND position = ?",
                [(job_id, p) for p in done],
            )
            self._conn.executemany(
                "UPDATE job_items SET status = 'failed', error = ? "
                "WHERE job_id = ? AND position = ?",
                [(error, job_id, p) for p, error in failed.items()],
            )
            self._conn.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (time.time(), job_id))

    def claim(self, owner: str, lease_s: float) -> str | None:
        now = time.time()
        kinds = ",".join(f"'{kind}'" for kind in QUEUED_KINDS)
        with self._transaction():
            row = self._conn.execute(
                f"SELECT id FROM jobs WHERE status = 'queued' AND kind IN ({kinds}) "
                "ORDER BY updated_at, created_at LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            self._conn.execute(
                "UPDATE jobs SET owner = ?, lease_until = ? WHERE id = ?",
                (owner, now + lease_s, row["id"]),
            )
            self._set_status_locked(row["id"], "running")
        return str(row["id"])

    def renew(self, job_id: str, owner: str, lease_s: float) -> bool:
        with self._transaction():
            changed = self._conn.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ? AND status = 'running'",
                (time.time() + lease_s, job_id, owner),
            ).rowcount
        return changed == 1

    def release(self, job_id: str, owner: str, status: JobStatus) -> None:
        with self._transaction():
            self._conn.execute(
                "UPDATE jobs SET status = ?, owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE id = ? AND owner = ? AND status = 'running'",
                (status, time.time(), job_id, owner),
            )

    def interrupt_unfinished(self) -> list[str]:
        kinds = ",".join(f"'{kind}'" for kind in QUEUED_KINDS)
        unfinished = f"status IN ('queued', 'running') AND kind IN ({kinds})"
        with self._transaction():
            rows = self._conn.execute(f"SELECT id FROM jobs WHERE {unfinished}").fetchall()
            self._conn.execute(
                f"UPDATE jobs SET status = 'interrupted', updated_at = ? WHERE {unfinished}",
                (time.time(),),
            )
        return [row["id"] for row in rows]

    # -- reads ----------------------------------------------------------------------------
    def pending(self, job_id: str, limit: int, after_position: int = -1) -> list[JobItem]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM job_items WHERE job_id = ? AND status = 'pending' AND position > ? "
                "ORDER BY position LIMIT ?",
                (job_id, after_position, limit),
            ).fetchall()
        return [job_item_of(row) for row in rows]

    def jobs_of(self, collection: str, statuses: Sequence[str]) -> list[str]:
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id FROM jobs WHERE collection = ? AND status IN ({marks})",
                (collection, *statuses),
            ).fetchall()
        return [row["id"] for row in rows]

    def get(self, job_id: str) -> JobView | None:
        with self._lock:
            job = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None:
                return None
            counts = dict(
                self._conn.execute(
                    "SELECT status, COUNT(*) FROM job_items WHERE job_id = ? GROUP BY status",
                    (job_id,),
                ).fetchall()
            )
            errors = self._conn.execute(
                "SELECT position, item_id, error FROM job_items "
                "WHERE job_id = ? AND status = 'failed' ORDER BY position LIMIT ?",
                (job_id, MAX_ERRORS_SHOWN),
            ).fetchall()
            duplicates = self._conn.execute(
                "SELECT position, item_id, duplicate_of, duplicate_score FROM job_items "
                "WHERE job_id = ? AND duplicate_of IS NOT NULL ORDER BY position LIMIT ?",
                (job_id, MAX_ERRORS_SHOWN),
            ).fetchall()
        return job_view_of(job, counts, errors, duplicates, self.waiting_for(job_id))

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._conn, self._lock)


def _dump(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)
