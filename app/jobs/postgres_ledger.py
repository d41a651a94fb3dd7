"""The job ledger (app/jobs/ledger.py) in PostgreSQL, shared by every process on the database.

Tables live in the schema `xmr_jobs`, created under an advisory lock; every method is one
transaction (or one read) on a pooled connection, committed with `synchronous_commit` on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

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
from index.postgres_records import database_error, open_schema_pool

SCHEMA = "xmr_jobs"
_TABLES = """
CREATE TABLE IF NOT EXISTS {s}.jobs (
    id text PRIMARY KEY,
    status text NOT NULL,
    error text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    collection text NOT NULL DEFAULT 'default',
    kind text NOT NULL DEFAULT 'batch',
    params jsonb,
    total bigint,
    done_count bigint,
    failed_count bigint,
    run_started_at double precision,
    run_started_done bigint,
    result jsonb,
    cursor bigint,
    owner text,
    lease_until double precision
);
ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS lease_until double precision;
CREATE INDEX IF NOT EXISTS jobs_status ON {s}.jobs (status, kind);
CREATE TABLE IF NOT EXISTS {s}.job_items (
    job_id text NOT NULL,
    position bigint NOT NULL,
    item_id text NOT NULL,
    kind text NOT NULL,
    text text,
    source text,
    staged boolean NOT NULL DEFAULT false,
    metadata jsonb,
    status text NOT NULL,
    error text,
    blob_offset bigint,
    blob_length bigint,
    duplicate_of text,
    duplicate_score double precision,
    PRIMARY KEY (job_id, position)
);
CREATE INDEX IF NOT EXISTS job_items_pending ON {s}.job_items (job_id, status, position)
"""


class PostgresJobLedger(JobWaits):
    """Jobs and job items in PostgreSQL; what a job waits for is this process's (not stored).

    Several processes share it: a job is claimed with `FOR UPDATE SKIP LOCKED` (two claims
    never take the same row, and neither waits for the other) under a lease its owner renews.
    """

    shared = True

    def __init__(self, url: str) -> None:
        self._s = sql.Identifier(SCHEMA)
        super().__init__()
        self._pool = open_schema_pool(url, self._s, _TABLES, row_factory=dict_row)

    def close(self) -> None:
        self._pool.close()

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
        with self._transaction() as conn:
            conn.execute(
                self._q(
                    "INSERT INTO {s}.jobs (id, status, created_at, updated_at, collection, kind, "
                    "params) VALUES (%s, 'queued', %s, %s, %s, %s, %s)"
                ),
                (job_id, now, now, collection, kind, _jsonb(params)),
            )
            with conn.cursor() as cursor:
                cursor.executemany(
                    self._q(
                        "INSERT INTO {s}.job_items (job_id, position, item_id, kind, text, "
                        "source, staged, metadata, status, error, blob_offset, blob_length) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    ),
                    [
                        (
                            job_id,
                            item.position,
                            item.item_id,
                            item.kind,
                            item.text,
                            item.source,
                            item.staged,
                            _jsonb(item.metadata),
                            item.status,
                            item.error,
                            item.offset,
                            item.length,
                        )
                        for item in items
                    ],
                )

    def set_status(self, job_id: str, status: JobStatus, error: str | None = None) -> None:
        with self._transaction() as conn:
            self._set_status(conn, job_id, status, error)

    def _set_status(
        self,
        conn: psycopg.Connection[Any],
        job_id: str,
        status: JobStatus,
        error: str | None = None,
    ) -> None:
        now = time.time()
        conn.execute(
            self._q("UPDATE {s}.jobs SET status = %s, error = %s, updated_at = %s WHERE id = %s"),
            (status, error, now, job_id),
        )
        if status == "running":  # the rate is measured from here
            conn.execute(
                self._q(
                    "UPDATE {s}.jobs SET run_started_at = %s, run_started_done = CASE "
                    "WHEN kind = 'batch' THEN (SELECT count(*) FROM {s}.job_items "
                    "WHERE job_id = %s AND status = 'done') ELSE coalesce(done_count, 0) END "
                    "WHERE id = %s"
                ),
                (now, job_id, job_id),
            )

    def set_progress(self, job_id: str, total: int, done: int, failed: int = 0) -> None:
        self._update(job_id, total=total, done_count=done, failed_count=failed)

    def set_result(self, job_id: str, result: dict[str, Any]) -> None:
        self._update(job_id, result=Jsonb(result))

    def set_cursor(self, job_id: str, cursor: int, total: int, done: int) -> None:
        self._update(job_id, cursor=cursor, total=total, done_count=done)

    def _update(self, job_id: str, **columns: Any) -> None:
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(name)) for name in columns
        )
        statement = sql.SQL("UPDATE {s}.jobs SET {a}, updated_at = %s WHERE id = %s").format(
            s=self._s, a=assignments
        )
        with self._transaction() as conn:
            conn.execute(statement, (*columns.values(), time.time(), job_id))

    def record_results(
        self,
        job_id: str,
        done: Sequence[int],
        failed: dict[int, str],
        duplicates: dict[int, tuple[str, float]] | None = None,
    ) -> None:
        with self._transaction() as conn, conn.cursor() as cursor:
            cursor.executemany(
                self._q(
                    "UPDATE {s}.job_items SET duplicate_of = %s, duplicate_score = %s "
                    "WHERE job_id = %s AND position = %s"
                ),
                [(of, score, job_id, p) for p, (of, score) in (duplicates or {}).items()],
            )
            cursor.executemany(
                self._q(
                    "UPDATE {s}.job_items SET status = 'done', error = NULL "
                    "WHERE job_id = %s AND position = %s"
                ),
                [(job_id, p) for p in done],
            )
            cursor.executemany(
                self._q(
                    "UPDATE {s}.job_items SET status = 'failed', error = %s "
                    "WHERE job_id = %s AND position = %s"
                ),
                [(error, job_id, p) for p, error in failed.items()],
            )
            cursor.execute(
                self._q("UPDATE {s}.jobs SET updated_at = %s WHERE id = %s"), (time.time(), job_id)
            )

    def claim(self, owner: str, lease_s: float) -> str | None:
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute(
                self._q(
                    "SELECT id FROM {s}.jobs WHERE kind = ANY(%s) AND (status = 'queued' OR "
                    "(status = 'running' AND coalesce(lease_until, 0) < %s)) "
                    "ORDER BY updated_at, created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                ),
                (list(QUEUED_KINDS), now),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                self._q("UPDATE {s}.jobs SET owner = %s, lease_until = %s WHERE id = %s"),
                (owner, now + lease_s, row["id"]),
            )
            self._set_status(conn, row["id"], "running")
        return str(row["id"])

    def renew(self, job_id: str, owner: str, lease_s: float) -> bool:
        with self._transaction() as conn:
            renewed = conn.execute(
                self._q(
                    "UPDATE {s}.jobs SET lease_until = %s "
                    "WHERE id = %s AND owner = %s AND status = 'running'"
                ),
                (time.time() + lease_s, job_id, owner),
            ).rowcount
        return renewed == 1

    def release(self, job_id: str, owner: str, status: JobStatus) -> None:
        with self._transaction() as conn:
            conn.execute(
                self._q(
                    "UPDATE {s}.jobs SET status = %s, owner = NULL, lease_until = NULL, "
                    "updated_at = %s WHERE id = %s AND owner = %s AND status = 'running'"
                ),
                (status, time.time(), job_id, owner),
            )

    def interrupt_unfinished(self) -> list[str]:
        return []  # other processes may be running them: an expired lease frees a job

    # -- reads ----------------------------------------------------------------------------
    def pending(self, job_id: str, limit: int, after_position: int = -1) -> list[JobItem]:
        rows = self._rows(
            "SELECT * FROM {s}.job_items WHERE job_id = %s AND status = 'pending' "
            "AND position > %s ORDER BY position LIMIT %s",
            (job_id, after_position, limit),
        )
        return [job_item_of(row) for row in rows]

    def jobs_of(self, collection: str, statuses: Sequence[str]) -> list[str]:
        rows = self._rows(
            "SELECT id FROM {s}.jobs WHERE collection = %s AND status = ANY(%s)",
            (collection, list(statuses)),
        )
        return [row["id"] for row in rows]

    def get(self, job_id: str) -> JobView | None:
        with self._connection() as conn:
            job = conn.execute(
                self._q("SELECT * FROM {s}.jobs WHERE id = %s"), (job_id,)
            ).fetchone()
            if job is None:
                return None
            counts = {
                row["status"]: int(row["n"])
                for row in conn.execute(
                    self._q(
                        "SELECT status, count(*) AS n FROM {s}.job_items WHERE job_id = %s "
                        "GROUP BY status"
                    ),
                    (job_id,),
                )
            }
            errors = conn.execute(
                self._q(
                    "SELECT position, item_id, error FROM {s}.job_items WHERE job_id = %s "
                    "AND status = 'failed' ORDER BY position LIMIT %s"
                ),
                (job_id, MAX_ERRORS_SHOWN),
            ).fetchall()
            duplicates = conn.execute(
                self._q(
                    "SELECT position, item_id, duplicate_of, duplicate_score FROM {s}.job_items "
                    "WHERE job_id = %s AND duplicate_of IS NOT NULL ORDER BY position LIMIT %s"
                ),
                (job_id, MAX_ERRORS_SHOWN),
            ).fetchall()
        return job_view_of(job, counts, errors, duplicates, self.waiting_for(job_id))

    # -- connections ----------------------------------------------------------------------
    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    def _rows(self, text: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        with self._connection() as conn:
            return conn.execute(self._q(text), params).fetchall()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as e:
            raise database_error(e, "use the job ledger in") from e

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self._connection() as conn, conn.transaction():
            yield conn


def _jsonb(value: dict[str, Any] | None) -> Jsonb | None:
    return None if value is None else Jsonb(value)
