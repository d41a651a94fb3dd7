"""The job queue: jobs are accepted at once, run one at a time in the background by the
handler of their kind, cancelled, and resumed after a restart.

Jobs are claimed from the ledger, not owned by the process that accepted them: each process
(replica) claims the longest-queued job when it is free, under a lease it renews while the job
runs. In a shared ledger a replica that dies loses its lease and another takes the job over;
one that stops releases its job at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.jobs.context import JobContext, JobHandler, JobStopped, job_error_text
from app.jobs.intake import BatchEntry, VectorEntry, stage_batch, stage_vectors
from app.jobs.ledger import (
    FINISHED,
    QUEUED_KINDS,
    JobItem,
    JobKind,
    JobLedger,
    JobStatus,
    JobView,
)
from app.jobs.staging import Staging, StagingWriter
from app.services.errors import (
    CollectionStateError,
    InvalidInputError,
    JobNotFoundError,
    JobStateError,
)
from app.services.items import new_item_id
from app.services.registry import CollectionRegistry
from app.services.threads import run_in
from index import UnavailableError

logger = logging.getLogger(__name__)


# A free runner looks for claimable jobs this often (a job accepted here wakes it at once)
CLAIM_POLL_S = 1.0
UNAVAILABLE_PAUSE_S = 2.0  # before looking for work again after a service was away


class UnknownJobKindError(Exception):
    """A job of a kind no handler runs (written by a newer release, or a bug)."""


class JobRunner:
    """Owns the job queue and the background task that works through it."""

    def __init__(
        self,
        ledger: JobLedger,
        collections: CollectionRegistry,
        handlers: Mapping[JobKind, JobHandler],
        staging: Staging,
        import_root: Path | None,
        lease_s: float = 30.0,
    ) -> None:
        self._ledger = ledger
        self._lease_s = lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._collections = collections
        self._handlers = dict(handlers)
        self._pool = collections.pools.store
        self._max_metadata_bytes = collections.limits.max_metadata_bytes
        self._staging = staging
        self._import_root = import_root
        self._wake = asyncio.Event()  # a job was queued here
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._cancelled: set[str] = set()
        self._lost: set[str] = set()  # running here, but no longer this runner's (see _renew)
        self._running: str | None = None
        self.interrupted_at_start = ledger.interrupt_unfinished()
        self._remove_orphaned_staging()

    def _remove_orphaned_staging(self) -> None:
        """Staged uploads of jobs that finished, or were never recorded (a crash at submit;
        in a shared ledger another replica may be recording one right now: those stay)."""
        for job_id in self._staging.job_ids():
            job = self._ledger.get(job_id)
            if (job is None and not self._ledger.shared) or (
                job is not None and job.status in ("done", "cancelled")
            ):
                self._staging.remove(job_id)

    # -- control --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name="xmr-batch-jobs")

    async def stop(self, timeout_s: float = 20.0) -> None:
        """Let the batch in progress finish, then give its job up and stop: `interrupted` in
        a ledger of its own, `queued` (for another replica, at once) in a shared one."""
        self._stopping = True
        if self._task is None:
            return
        self._wake.set()  # wake the worker if it is idle
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(
        self,
        entries: Sequence[BatchEntry],
        collection: str = "default",
        dedup_threshold: float | None = None,
    ) -> str:
        """Validate, stage and queue a batch job; its id. Bad paths reject the whole request.

        With `dedup_threshold`, an image as similar as that to a stored one is not stored.
        """
        if not entries:
            raise InvalidInputError("a batch needs at least one item")
        self._collections.get(collection)
        params = None if dedup_threshold is None else {"dedup_threshold": dedup_threshold}
        return await self._queue(
            collection,
            params,
            lambda staging: stage_batch(
                staging, entries, self._import_root, self._max_metadata_bytes
            ),
        )

    async def submit_vectors(
        self, vectors: np.ndarray, entries: Sequence[VectorEntry], collection: str = "default"
    ) -> str:
        """Check, stage and queue vectors made elsewhere as a batch job; its id. They are stored
        as the collection's model's (a model switch before the job runs fails its items)."""
        if not entries:
            raise InvalidInputError("send at least one vector")
        state = self._collections.get(collection).state
        if state.next is not None:
            raise CollectionStateError(
                f"collection {collection} is being re-embedded with another model: send vectors "
                "of its model when that is done"
            )
        generation = state.current
        params = {"precomputed_for": generation.model_id}
        return await self._queue(
            collection,
            params,
            lambda staging: stage_vectors(
                staging, vectors, entries, generation.dim, self._max_metadata_bytes
            ),
        )

    async def _queue(
        self,
        collection: str,
        params: dict[str, Any] | None,
        stage: Callable[[StagingWriter], list[JobItem]],
    ) -> str:
        job_id = new_item_id()
        try:
            items = await run_in(self._pool, stage, self._staging.writer(job_id))
            await run_in(
                self._pool, lambda: self._ledger.create(job_id, items, collection, "batch", params)
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await run_in(self._pool, self._staging.remove, job_id)
            raise
        self._wake.set()
        return job_id

    async def submit_over_items(
        self, collection: str, kind: JobKind, params: dict[str, Any]
    ) -> str:
        """Queue a job over a collection's stored items (duplicates, classify); its id."""
        self._collections.get(collection)
        job_id = new_item_id()
        await run_in(self._pool, lambda: self._ledger.create(job_id, [], collection, kind, params))
        self._wake.set()
        return job_id

    async def cancel(self, job_id: str) -> JobView:
        """Stop a job: a re-embedding drops its new generation; a batch keeps what is stored."""
        view = await self.get(job_id)
        if view.status in FINISHED:
            raise JobStateError(f"job {job_id} is {view.status} already")
        if view.kind == "reindex":
            collection = self._collections.get(view.collection)
            await self._collections.reindexer.abandon(collection)
        else:
            await self._mark_cancelled(job_id)
            if view.status == "queued":  # nobody runs it: nobody else removes its uploads
                await run_in(self._pool, self._staging.remove, job_id)
        return await self.get(job_id)

    async def cancel_jobs_of(self, collection: str, timeout_s: float = 30.0) -> None:
        """Before a collection is deleted: cancel its batch jobs, and let a running one stop."""
        ids = await run_in(self._pool, self._ledger.jobs_of, collection, ("queued", "running"))
        for job_id in ids:
            if (await self.get(job_id)).kind == "batch":
                await self._mark_cancelled(job_id)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._running in ids and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def delete_collection(self, name: str) -> None:
        """Delete a collection: refused (404, 409) before anything stops, then its batch jobs
        are cancelled, then it goes with everything in it."""
        await self._collections.refresh()
        self._collections.check_deletable(name)
        await self.cancel_jobs_of(name)
        await self._collections.delete(name)

    async def _mark_cancelled(self, job_id: str) -> None:
        self._cancelled.add(job_id)
        await run_in(self._pool, self._ledger.set_status, job_id, "cancelled")

    async def resume(self, job_id: str) -> JobView:
        view = await self.get(job_id)
        if view.status not in ("interrupted", "failed") or view.kind not in QUEUED_KINDS:
            raise JobStateError(
                f"job {job_id} is {view.status}; only interrupted or failed batch, duplicates "
                "and classify jobs resume"
            )
        self._cancelled.discard(job_id)
        await run_in(self._pool, self._ledger.set_status, job_id, "queued")
        self._wake.set()
        return await self.get(job_id)

    async def get(self, job_id: str) -> JobView:
        view = await run_in(self._pool, self._ledger.get, job_id)
        if view is None:
            raise JobNotFoundError(job_id)
        return view

    # -- execution ------------------------------------------------------------------------
    async def _work(self) -> None:
        while not self._stopping:
            try:
                job_id = await run_in(self._pool, self._ledger.claim, self.owner, self._lease_s)
            except Exception as e:  # the database may be away: try again after the pause
                logger.warning("could not look for queued jobs: %s", e)
                job_id = None
            if job_id is None:
                await self._idle()
                continue
            self._running = job_id
            try:
                await self._run(job_id)
            except UnavailableError as e:  # the database, Milvus or S3 away: not the job's fault
                await self._paused(job_id, e)
            except Exception as e:  # a job must never take the worker down with it
                logger.exception("job %s failed", job_id)
                await run_in(
                    self._pool, self._ledger.set_status, job_id, "failed", job_error_text(e)
                )
            finally:
                self._running = None
                self._lost.discard(job_id)

    async def _idle(self) -> None:
        """Wait until a job is queued here, or CLAIM_POLL_S for one queued elsewhere."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), CLAIM_POLL_S)
        self._wake.clear()

    async def _run(self, job_id: str) -> None:
        view = await self.get(job_id)
        handler = self._handlers.get(view.kind)
        if handler is None:
            raise UnknownJobKindError(f"no handler runs {view.kind!r} jobs")
        context = JobContext(
            view,
            self._ledger,
            self._pool,
            cancelled=lambda: job_id in self._cancelled or job_id in self._lost,
            stopping=lambda: self._stopping,
        )
        renewal = asyncio.create_task(self._renew(job_id), name=f"xmr-lease-{job_id}")
        try:
            await handler.run(context)
        except JobStopped:
            await self._stopped(job_id)
            return
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        await run_in(self._pool, self._staging.remove, job_id)

    async def _paused(self, job_id: str, error: UnavailableError) -> None:
        """Hand the job back to be taken up again (by any replica) once the service it needs
        answers; if even that fails, its lease runs out and it is taken up all the same."""
        logger.warning("job %s paused: %s; it is taken up again when that passes", job_id, error)
        with contextlib.suppress(Exception):
            await run_in(self._pool, self._ledger.release, job_id, self.owner, "queued")
        await asyncio.sleep(UNAVAILABLE_PAUSE_S)

    async def _stopped(self, job_id: str) -> None:
        """Record why a job stopped: cancelled (its status says so already), taken from this
        runner, or given up because the service stops."""
        if job_id in self._cancelled or (await self.get(job_id)).status == "cancelled":
            await self._finish_cancelled(job_id)
        elif job_id not in self._lost:
            status: JobStatus = "queued" if self._ledger.shared else "interrupted"
            await run_in(self._pool, self._ledger.release, job_id, self.owner, status)

    async def _renew(self, job_id: str) -> None:
        """Keep the lease while the job runs; a job that is no longer this runner's (cancelled
        elsewhere, or taken over after a lease that ran out) is stopped at its next check."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                kept = await run_in(
                    self._pool, self._ledger.renew, job_id, self.owner, self._lease_s
                )
            except Exception as e:  # the database may be back before the lease runs out
                logger.warning("could not renew the lease on job %s: %s", job_id, e)
                continue
            if not kept:
                logger.warning("job %s is no longer this process's; stopping it", job_id)
                self._lost.add(job_id)
                return

    async def _finish_cancelled(self, job_id: str) -> None:
        self._cancelled.discard(job_id)
        await run_in(self._pool, self._staging.remove, job_id)
