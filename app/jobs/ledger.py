"""The job ledger contract: every job, its status and counts, and the state of each item of a
batch, kept durably so that a restart knows what was left; one factory opens it.

`app/jobs/sqlite_ledger.py` keeps it in one SQLite file beside the collections,
`app/jobs/postgres_ledger.py` in PostgreSQL; another database is one new module that fulfils
`JobLedger` and one more branch of `open_ledger`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

JobStatus = Literal["queued", "running", "done", "failed", "interrupted", "cancelled"]
JobKind = Literal["batch", "reindex", "duplicates", "classify"]
JOB_KINDS: tuple[JobKind, ...] = ("batch", "reindex", "duplicates", "classify")
JOB_STATUSES: tuple[JobStatus, ...] = (
    "queued",
    "running",
    "done",
    "failed",
    "interrupted",
    "cancelled",
)
FINISHED: tuple[JobStatus, ...] = ("done", "failed", "cancelled")
# jobs run by the JobRunner's queue: interrupted by a stop, resumed on request
QUEUED_KINDS: tuple[JobKind, ...] = ("batch", "duplicates", "classify")
ItemStatus = Literal["pending", "done", "failed"]
MAX_ERRORS_SHOWN = 1000
LEDGERS = ("sqlite", "postgresql")


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
class DuplicateOf:
    """A batch item that was not stored: an image as similar as the job's dedup threshold."""

    position: int
    id: str
    duplicate_of: str
    score: float


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


class JobLedger(Protocol):
    """Jobs and their items; every method is one transaction (or one consistent read).

    A queued job is run by whoever claims it: the claim makes it `running` under a lease that
    its owner renews while it works. In a `shared` ledger (several processes on one database)
    a job whose lease ran out, because its owner died, is claimed again by another process
    and goes on from what its items or cursor say is done.
    """

    shared: bool

    def create(
        self,
        job_id: str,
        items: Sequence[JobItem],
        collection: str = "default",
        kind: JobKind = "batch",
        params: dict[str, Any] | None = None,
    ) -> None: ...

    def get(self, job_id: str) -> JobView | None: ...

    def set_status(self, job_id: str, status: JobStatus, error: str | None = None) -> None:
        """Entering `running` starts the clock the job's rate is measured by."""
        ...

    def set_progress(self, job_id: str, total: int, done: int, failed: int = 0) -> None:
        """Counts of a job that has no per-item rows (a re-embedding, a duplicates scan)."""
        ...

    def set_cursor(self, job_id: str, cursor: int, total: int, done: int) -> None:
        """A job over stored items: how far it got (labels up to `cursor` are done)."""
        ...

    def set_result(self, job_id: str, result: dict[str, Any]) -> None: ...

    def set_waiting(self, job_id: str, waiting_for: str | None) -> None:
        """Say what a job waits for now (None: nothing); shown while it waits, never stored."""
        ...

    def pending(self, job_id: str, limit: int, after_position: int = -1) -> list[JobItem]:
        """The next `limit` pending items past `after_position`, in order."""
        ...

    def record_results(
        self,
        job_id: str,
        done: Sequence[int],
        failed: dict[int, str],
        duplicates: dict[int, tuple[str, float]] | None = None,
    ) -> None:
        """Mark items done (some as duplicates of stored ones) or failed, in one transaction."""
        ...

    def jobs_of(self, collection: str, statuses: Sequence[str]) -> list[str]: ...

    def claim(self, owner: str, lease_s: float) -> str | None:
        """Take the longest-queued job of QUEUED_KINDS (in a shared ledger also a running one
        whose lease ran out): it becomes `running`, owned by `owner` for `lease_s` seconds.
        Its id, or None when there is none; two owners never take the same job."""
        ...

    def renew(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Extend `owner`'s lease on its running job; False when the job is no longer that
        (cancelled, finished or taken over after the lease ran out)."""
        ...

    def release(self, job_id: str, owner: str, status: JobStatus) -> None:
        """Give up `owner`'s running job, leaving it `status` (queued: for another process to
        take at once); nothing if the job is no longer `owner`'s."""
        ...

    def interrupt_unfinished(self) -> list[str]:
        """At start-up: queued jobs left queued or running by the last process become
        `interrupted` (re-embeddings are resumed by their collection instead). A shared ledger
        changes nothing: other processes may be running them, and leases tell."""
        ...

    def close(self) -> None: ...


class JobWaits:
    """What each job waits for now (a model slot, ...): this process's view, shown while the
    job is queued or running and never stored. Both ledgers keep it alike."""

    def __init__(self) -> None:
        self._waiting_for: dict[str, str] = {}

    def set_waiting(self, job_id: str, waiting_for: str | None) -> None:
        if waiting_for is None:
            self._waiting_for.pop(job_id, None)
        else:
            self._waiting_for[job_id] = waiting_for

    def waiting_for(self, job_id: str) -> str | None:
        return self._waiting_for.get(job_id)


def open_ledger(data_dir: Path, database_url: str | None = None) -> JobLedger:
    """The job ledger: SQLite in `data_dir` when `database_url` is None, else the database it
    names (`postgresql://...`)."""
    if database_url is None:
        from app.jobs.sqlite_ledger import SqliteJobLedger

        return SqliteJobLedger(data_dir / "jobs.sqlite3")
    scheme = database_url.split("://", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        from app.jobs.postgres_ledger import PostgresJobLedger  # psycopg: only where used

        return PostgresJobLedger(database_url)
    raise ValueError(
        f"unknown job ledger {scheme!r} in the database URL; expected one of "
        f"{', '.join(LEDGERS)} (none for SQLite in the data directory, postgresql://...)"
    )


Row = Mapping[str, Any]  # a row by column name (sqlite3.Row, psycopg's dict_row)


def job_item_of(row: Row) -> JobItem:
    """A job item from its row in either ledger."""
    return JobItem(
        position=int(row["position"]),
        item_id=row["item_id"],
        kind=row["kind"],
        text=row["text"],
        source=row["source"],
        staged=bool(row["staged"]),
        metadata=_decoded(row["metadata"]),
        status=row["status"],
        error=row["error"],
        offset=row["blob_offset"],
        length=row["blob_length"],
    )


def job_view_of(
    job: Row,
    counts: dict[str, int],
    errors: Sequence[Row],
    duplicates: Sequence[Row],
    waiting_for: str | None,
) -> JobView:
    """A job as clients see it, from its row, its items' counts by status, its first failed
    and duplicate items, and what it waits for (shown while it is queued or running)."""
    if job["kind"] == "batch":
        total, done, failed = sum(counts.values()), counts.get("done", 0), counts.get("failed", 0)
    else:
        total, done = int(job["total"] or 0), int(job["done_count"] or 0)
        failed = int(job["failed_count"] or 0)
    rate, eta = _rate(job, done, total)
    unfinished = job["status"] in ("queued", "running")
    return JobView(
        id=job["id"],
        status=job["status"],
        total=total,
        done=done,
        failed=failed,
        errors=[ItemError(int(e["position"]), e["item_id"], e["error"]) for e in errors],
        error=job["error"],
        created_at=job["created_at"],
        updated_at=job["updated_at"],
        collection=job["collection"],
        kind=job["kind"],
        items_per_s=rate,
        eta_s=eta,
        params=_decoded(job["params"]),
        result=_decoded(job["result"]),
        duplicates=[
            DuplicateOf(
                int(d["position"]), d["item_id"], d["duplicate_of"], float(d["duplicate_score"])
            )
            for d in duplicates
        ],
        cursor=int(job["cursor"] or 0),
        waiting_for=waiting_for if unfinished else None,
    )


def _rate(job: Row, done: int, total: int) -> tuple[float | None, float | None]:
    """Items per second since the job last started running, and the seconds left at that rate."""
    started_at = job["run_started_at"]
    if job["status"] != "running" or started_at is None:
        return None, None
    elapsed = time.time() - started_at
    finished = done - int(job["run_started_done"] or 0)
    if elapsed <= 0 or finished <= 0:
        return None, None
    rate = finished / elapsed
    return rate, max(0, total - done) / rate


def _decoded(value: Any) -> Any:
    """A JSON column: SQLite hands back its text, PostgreSQL's jsonb the value."""
    return json.loads(value) if isinstance(value, str) else value
