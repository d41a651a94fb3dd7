"""What a job handler is given and how it stops: one context per run, one way to stop.

A handler runs one job of its kind. It asks `job.check()` between steps (and a scan that runs
in a thread reports through `job.progress`, which checks too): when the job was cancelled or
the service is stopping, that raises JobStopped, and the runner records what that means
(a cancelled job keeps its status, an interrupted one resumes on request).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from app.jobs.ledger import JobLedger, JobStatus, JobView
from app.services.errors import CollectionStateError, InvalidInputError
from app.services.threads import run_in
from index import StorageError, TooManyDuplicatesError
from models import ModelLoadError


class JobStopped(Exception):
    """The job was cancelled or the service is stopping; raised by JobContext.check."""


class ReindexFailed(Exception):
    """An item could not be embedded again; the message names it."""


# errors whose own text a job shows; any other shows only its type
_SHOWN = (
    StorageError,
    InvalidInputError,
    TooManyDuplicatesError,
    ReindexFailed,
    CollectionStateError,
    ModelLoadError,
)


def job_error_text(error: Exception) -> str:
    """What a failed job says to clients: a domain error's text, else only the error's type."""
    if isinstance(error, _SHOWN):
        return str(error)
    return f"internal error ({type(error).__name__}); see the server log"


@dataclass
class JobContext:
    """One run of one job: its view when it started, its ledger, and whether to stop."""

    view: JobView
    ledger: JobLedger
    pool: Executor  # the store pool: ledger calls run there
    cancelled: Callable[[], bool]
    stopping: Callable[[], bool]  # the service is shutting down

    @property
    def job_id(self) -> str:
        return self.view.id

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.view.params or {})

    def should_stop(self) -> bool:
        return self.cancelled() or self.stopping()

    def check(self) -> None:
        """Raise JobStopped if the job was cancelled or the service is stopping."""
        if self.should_stop():
            raise JobStopped

    def progress(self, done: int, total: int) -> None:
        """For work in a thread: check, then record the counts (runs on the caller's thread)."""
        self.check()
        self.ledger.set_progress(self.job_id, total, done)

    async def set_status(self, status: JobStatus) -> None:
        await run_in(self.pool, self.ledger.set_status, self.job_id, status)

    async def set_cursor(self, cursor: int, total: int, done: int) -> None:
        await run_in(self.pool, self.ledger.set_cursor, self.job_id, cursor, total, done)

    async def set_result(self, result: dict[str, Any]) -> None:
        await run_in(self.pool, self.ledger.set_result, self.job_id, result)


class JobHandler(Protocol):
    """Runs jobs of one kind to the end, or raises (JobStopped, or the error it failed with)."""

    async def run(self, job: JobContext) -> None: ...
