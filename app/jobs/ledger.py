"""The job ledger contract: every job, its status and counts, and the state of each item of a
batch, kept durably so that a restart knows what was left; one factory opens it.

`app/jobs/sqlite_ledger.py` keeps it in one SQLite file beside the collections; another
database is one new module that fulfils `JobLedger` and one more name in LEDGERS.
"""

from __future__ import annotations

from collections.abc import Sequence
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
LEDGERS = ("sqlite",)


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
    """Jobs and their items; every method is one transaction (or one consistent read)."""

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

    def interrupt_unfinished(self) -> list[str]:
        """At start-up: queued jobs left queued or running by the last process become
        `interrupted` (re-embeddings are resumed by their collection instead)."""
        ...

    def close(self) -> None: ...


def open_ledger(data_dir: Path, name: str = "sqlite") -> JobLedger:
    """The job ledger `name` (one of LEDGERS) of a data directory."""
    if name == "sqlite":
        from app.jobs.sqlite_ledger import SqliteJobLedger

        return SqliteJobLedger(data_dir / "jobs.sqlite3")
    raise ValueError(f"unknown job ledger {name!r}; expected one of {', '.join(LEDGERS)}")
