"""Durable batch jobs: one SQLite file with each job and the state of each of its items."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from index.sqlite import open_database, transaction

JobStatus = Literal["queued", "running", "done", "failed", "interrupted", "cancelled"]
JobKind = Literal["batch", "reindex", "duplicates", "classify"]
# jobs run by the JobRunner's queue: interrupted by a stop, resumed on request
QUEUED_KINDS = ("batch", "duplicates", "classify")
ItemStatus = Literal["pending", "done", "failed"]
MAX_ERRORS_SHOWN = 1000

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


@dataclass(frozen=True)
class JobItem:
    """One unit of a batch job. Images have `source`; texts have `text`.

    `source` is a path relative to the import root, or for a staged upload the staging file
    that holds it at `offset`, `length` bytes.
    """

    position: int
    item_id: str
    kind: Literal["image", "text"]
    text: str | None = None
    source: str | None = None
    staged: bool = False
    metadata: dict[str, Any] | None = None
    status: ItemStatus = "pending"
    error: str | None = None
    offset: int | None = None
    length: int | None = None


@dataclass(frozen=True)
class ItemError:
    position: int
    id: str
    error: str


@dataclass(frozen=True)
class JobView:
    id: str
    status: JobStatus
    total: int
    done: int
    failed: int
    errors: list[ItemError]
    error: str | None
    created_at: float
    updated_at: float
    collection: str = "default"
    kind: JobKind = "batch"
    items_per_s: float | None = None  # since the job last started running
    eta_s: float | None = None
    params: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    duplicates: list[DuplicateOf] = field(default_factory=list)
    cursor: int = 0
    waiting_for: str | None = None  # while queued or running: what it waits for (not stored)


@dataclass(frozen=True)
class DuplicateOf:
    """A batch item that was not stored: an image as similar as the job's dedup threshold."""

    position: int
    id: str
    duplicate_of: str
    score: float


# columns added after the first release: (name, SQL type and default)
_JOB_COLUMNS = (
    ("collection", "TEXT NOT NULL DEFAULT 'default'"),
    ("kind", "TEXT NOT NULL DEFAULT 'batch'"),
    ("params", "TEXT"),
    ("total", "INTEGER"),  # reindex jobs count here; batch jobs count their job_items
    ("done_count", "INTEGER"),
    ("failed_count", "INTEGER"),
    ("run_started_at", "REAL"),
    ("run_started_done", "INTEGER"),
    ("result", "TEXT"),  # what a finished job found (duplicates: the groups)
    ("cursor", "INTEGER"),  # where a job over stored items goes on after a restart
)
_ITEM_COLUMNS = (
    ("blob_offset", "INTEGER"),
    ("blob_length", "INTEGER"),
    ("duplicate_of", "TEXT"),
    ("duplicate_score", "REAL"),
)


class JobStore:
    def __init__(self, path: Path) -> None:
        self._conn = open_database(path, _SCHEMA)
        self._lock = threading.RLock()  # guards the connection: every statement takes it
        self._waiting_for: dict[str, str] = {}  # job id -> what it waits for, while it does
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Files written before staged images had offsets get the columns (NULL: whole file)."""
        with self._transaction():
            present = {row[1] for row in self._conn.execute("PRAGMA table_info(job_items)")}
            for column, declaration in _ITEM_COLUMNS:
                if column not in present:
                    self._conn.execute(f"ALTER TABLE job_items ADD COLUMN {column} {declaration}")
            present = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
            for column, declaration in _JOB_COLUMNS:
                if column not in present:
                    self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

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
                (
                    job_id,
                    now,
                    now,
                    collection,
                    kind,
                    None if params is None else json.dumps(params),
                ),
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
                        None if item.metadata is None else json.dumps(item.metadata),
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
            self._conn.execute(
                "UPDATE jobs SET status = ?, error = ?, updated_at = ? WHERE id = ?",
                (status, error, time.time(), job_id),
            )
            if status == "running":  # the rate is measured from here
                done = self._done_locked(job_id)
                self._conn.execute(
                    "UPDATE jobs SET run_started_at = ?, run_started_done = ? WHERE id = ?",
                    (time.time(), done, job_id),
                )

    def _done_locked(self, job_id: str) -> int:
        row = self._conn.execute(
            "SELECT kind, done_count FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            return 0
        if row[0] != "batch":
            return int(row[1] or 0)
        counted = self._conn.execute(
            "SELECT COUNT(*) FROM job_items WHERE job_id = ? AND status = 'done'", (job_id,)
        ).fetchone()
        return int(counted[0])

    def set_progress(self, job_id: str, total: int, done: int, failed: int = 0) -> None:
        """Counts of a job that has no per-item rows (a re-embedding)."""
        with self._transaction():
            self._conn.execute(
                "UPDATE jobs SET total = ?, done_count = ?, failed_count = ?, updated_at = ? "
                "WHERE id = ?",
                (total, done, failed, time.time(), job_id),
            )

    def jobs_of(self, collection: str, statuses: Sequence[str]) -> list[str]:
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id FROM jobs WHERE collection = ? AND status IN ({marks})",
                (collection, *statuses),
            ).fetchall()
        return [row[0] for row in rows]

    def set_result(self, job_id: str, result: dict[str, Any]) -> None:
        with self._transaction():
            self._conn.execute(
                "UPDATE jobs SET result = ?, updated_at = ? WHERE id = ?",
                (json.dumps(result), time.time(), job_id),
            )

    def set_cursor(self, job_id: str, cursor: int, total: int, done: int) -> None:
        """A job over stored items: how far it got (labels up to `cursor` are done)."""
        with self._transaction():
            self._conn.execute(
                "UPDATE jobs SET cursor = ?, total = ?, done_count = ?, updated_at = ? "
                "WHERE id = ?",
                (cursor, total, done, time.time(), job_id),
            )

    def record_results(
        self,
        job_id: str,
        done: Sequence[int],
        failed: dict[int, str],
        duplicates: dict[int, tuple[str, float]] | None = None,
    ) -> None:
        """Mark items done (some as duplicates of stored ones) or failed, in one transaction."""
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

    def pending(self, job_id: str, limit: int, after_position: int = -1) -> list[JobItem]:
        """The next `limit` pending items past `after_position`, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT position, item_id, kind, text, source, staged, metadata, status, error, "
                "blob_offset, blob_length FROM job_items "
                "WHERE job_id = ? AND status = 'pending' AND position > ? "
                "ORDER BY position LIMIT ?",
                (job_id, after_position, limit),
            ).fetchall()
        return [
            JobItem(
                position=r[0],
                item_id=r[1],
                kind=r[2],
                text=r[3],
                source=r[4],
                staged=bool(r[5]),
                metadata=None if r[6] is None else json.loads(r[6]),
                status=r[7],
                error=r[8],
                offset=r[9],
                length=r[10],
            )
            for r in rows
        ]

    def set_waiting(self, job_id: str, waiting_for: str | None) -> None:
        """Say what a job waits for now (None: it waits for nothing); shown, never stored."""
        if waiting_for is None:
            self._waiting_for.pop(job_id, None)
        else:
            self._waiting_for[job_id] = waiting_for

    def get(self, job_id: str) -> JobView | None:
        with self._lock:
            job = self._conn.execute(
                "SELECT id, status, error, created_at, updated_at, collection, kind, params, "
                "total, done_count, failed_count, run_started_at, run_started_done, result, "
                "cursor FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
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
        if job[6] == "batch":
            total, done, failed = (
                sum(counts.values()),
                counts.get("done", 0),
                counts.get("failed", 0),
            )
        else:
            total, done, failed = int(job[8] or 0), int(job[9] or 0), int(job[10] or 0)
        rate, eta = _rate(job[1], job[11], job[12], done, total)
        return JobView(
            id=job[0],
            status=job[1],
            total=total,
            done=done,
            failed=failed,
            errors=[ItemError(position=e[0], id=e[1], error=e[2]) for e in errors],
            error=job[2],
            created_at=job[3],
            updated_at=job[4],
            collection=job[5],
            kind=job[6],
            items_per_s=rate,
            eta_s=eta,
            params=None if job[7] is None else json.loads(job[7]),
            result=None if job[13] is None else json.loads(job[13]),
            duplicates=[DuplicateOf(d[0], d[1], d[2], float(d[3])) for d in duplicates],
            cursor=int(job[14] or 0),
            waiting_for=self._waiting_for.get(job_id) if job[1] in ("queued", "running") else None,
        )

    def interrupt_unfinished(self) -> list[str]:
        """At start-up: queued jobs left queued or running by the last process are `interrupted`.

        Re-embeddings are resumed by their collection instead.
        """
        kinds = ",".join(f"'{kind}'" for kind in QUEUED_KINDS)
        with self._transaction():
            rows = self._conn.execute(
                f"SELECT id FROM jobs WHERE status IN ('queued', 'running') AND kind IN ({kinds})"
            ).fetchall()
            self._conn.execute(
                "UPDATE jobs SET status = 'interrupted', updated_at = ? "
                f"WHERE status IN ('queued', 'running') AND kind IN ({kinds})",
                (time.time(),),
            )
        return [row[0] for row in rows]

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._conn, self._lock)


def _rate(
    status: str, started_at: float | None, started_done: int | None, done: int, total: int
) -> tuple[float | None, float | None]:
    """Items per second since the job last started running, and the seconds left at that rate."""
    if status != "running" or started_at is None:
        return None, None
    elapsed = time.time() - started_at
    finished = done - int(started_done or 0)
    if elapsed <= 0 or finished <= 0:
        return None, None
    rate = finished / elapsed
    return rate, max(0, total - done) / rate
