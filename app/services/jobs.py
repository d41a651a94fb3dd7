"""Batch indexing jobs: accepted at once, run in the background in batches, resumable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.services.collections import Pin
from app.services.errors import ImportPathError, InvalidInputError, JobNotFoundError, JobStateError
from app.services.import_files import read_import_file
from app.services.intake import BatchEntry, stage_batch
from app.services.item_jobs import (
    DuplicatesQuery,
    TagRequest,
    find_duplicates,
    items_to_tag,
    tag_next,
)
from app.services.items import ImageInput, TextInput, new_item_id
from app.services.job_store import QUEUED_KINDS, JobItem, JobKind, JobStore, JobView
from app.services.registry import CollectionRegistry
from app.services.staging import read_staged
from app.services.threads import run_in
from index import NewItem, StorageError, TooManyDuplicatesError

logger = logging.getLogger(__name__)


@dataclass
class _LoadedBatch:
    """A batch's images read and prepared ahead of encoding, and the items that failed."""

    pin: Pin
    images: list[tuple[ImageInput, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


@dataclass
class _EncodedBatch:
    """A batch's items with their vectors, ready to store, and the positions done or failed."""

    items: list[NewItem] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # of `items`, in the job
    done: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class _Stopped(Exception):
    """A job over stored items saw that it was cancelled or that the service is stopping."""


class JobRunner:
    """Owns the batch-job queue and the background task that works through it."""

    def __init__(
        self,
        store: JobStore,
        collections: CollectionRegistry,
        staging_dir: Path,
        import_root: Path | None,
        batch_size: int,
        max_file_bytes: int,
    ) -> None:
        self._store = store
        self._collections = collections
        self._pool = collections.pools.store
        self._max_metadata_bytes = collections.limits.max_metadata_bytes
        self._staging_dir = staging_dir
        self._import_root = import_root
        self._batch_size = batch_size
        self._max_file_bytes = max_file_bytes
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._cancelled: set[str] = set()
        self._running: str | None = None
        self.interrupted_at_start = store.interrupt_unfinished()
        self._remove_orphaned_staging()

    def _remove_orphaned_staging(self) -> None:
        """Staged uploads of jobs that finished, or were never recorded (a crash at submit)."""
        if not self._staging_dir.is_dir():
            return
        for folder in self._staging_dir.iterdir():
            job = self._store.get(folder.name)
            if job is None or job.status in ("done", "cancelled"):
                shutil.rmtree(folder, ignore_errors=True)

    # -- control --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name="xmr-batch-jobs")

    async def stop(self, timeout_s: float = 20.0) -> None:
        """Let the batch in progress finish, then mark its job `interrupted` and stop."""
        self._stopping = True
        if self._task is None:
            return
        self._queue.put_nowait("")  # wake the worker if it is idle
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
        """Validate, stage and queue a job; returns its id. Bad paths reject the whole request.

        With `dedup_threshold`, an image as similar as that to a stored one is not stored.
        """
        if not entries:
            raise InvalidInputError("a batch needs at least one item")
        self._collections.get(collection)
        job_id = new_item_id()
        params = None if dedup_threshold is None else {"dedup_threshold": dedup_threshold}
        try:
            job_items = await run_in(
                self._pool,
                stage_batch,
                self._staging_dir / job_id,
                entries,
                self._import_root,
                self._max_metadata_bytes,
            )
            await run_in(
                self._pool,
                lambda: self._store.create(job_id, job_items, collection, "batch", params),
            )
        except BaseException:
            await run_in(self._pool, shutil.rmtree, self._staging_dir / job_id, True)
            raise
        self._queue.put_nowait(job_id)
        return job_id

    async def submit_over_items(
        self, collection: str, kind: JobKind, params: dict[str, Any]
    ) -> str:
        """Queue a job over a collection's stored items (duplicates, classify); its id."""
        self._collections.get(collection)
        job_id = new_item_id()
        await run_in(self._pool, lambda: self._store.create(job_id, [], collection, kind, params))
        self._queue.put_nowait(job_id)
        return job_id

    async def cancel(self, job_id: str) -> JobView:
        """Stop a job: a re-embedding drops its new generation; a batch keeps what is stored."""
        view = await self.get(job_id)
        if view.status in ("done", "failed", "cancelled"):
            raise JobStateError(f"job {job_id} is {view.status} already")
        if view.kind == "reindex":
            collection = self._collections.get(view.collection)
            await self._collections.reindexer.abandon(collection)
        else:
            self._cancelled.add(job_id)
            await run_in(self._pool, self._store.set_status, job_id, "cancelled")
        return await self.get(job_id)

    async def cancel_jobs_of(self, collection: str, timeout_s: float = 30.0) -> None:
        """Before a collection is deleted: cancel its batch jobs, and let a running one stop."""
        ids = await run_in(self._pool, self._store.jobs_of, collection, ("queued", "running"))
        for job_id in ids:
            view = await self.get(job_id)
            if view.kind == "batch":
                self._cancelled.add(job_id)
                await run_in(self._pool, self._store.set_status, job_id, "cancelled")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._running in ids and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def resume(self, job_id: str) -> JobView:
        view = await self.get(job_id)
        if view.status not in ("interrupted", "failed") or view.kind not in QUEUED_KINDS:
            raise JobStateError(
                f"job {job_id} is {view.status}; only interrupted or failed batch, duplicates "
                "and classify jobs resume"
            )
        self._cancelled.discard(job_id)
        await run_in(self._pool, self._store.set_status, job_id, "queued")
        self._queue.put_nowait(job_id)
        return await self.get(job_id)

    async def get(self, job_id: str) -> JobView:
        view = await run_in(self._pool, self._store.get, job_id)
        if view is None:
            raise JobNotFoundError(job_id)
        return view

    # -- execution ------------------------------------------------------------------------
    async def _work(self) -> None:
        while not self._stopping:
            job_id = await self._queue.get()
            if self._stopping or not job_id:
                continue
            if job_id in self._cancelled:
                self._cancelled.discard(job_id)
                await run_in(self._pool, shutil.rmtree, self._staging_dir / job_id, True)
                continue
            self._running = job_id
            try:
                kind = (await self.get(job_id)).kind
                if kind == "duplicates":
                    await self._run_duplicates(job_id)
                elif kind == "classify":
                    await self._run_tagging(job_id)
                else:
                    await self._run_job(job_id)
            except Exception as e:  # a job must never take the worker down with it
                logger.exception("batch job %s failed", job_id)
                await run_in(self._pool, self._store.set_status, job_id, "failed", _public(e))
            finally:
                self._running = None

    async def _run_job(self, job_id: str) -> None:
        """Work through the pending items as a pipeline of three stages.

        While batch n is encoded, batch n+1 is read and decoded and batch n-1 is written (its
        fsyncs are I/O waits the model need not sit through). A batch is recorded as done only
        once its items are durably stored. Each batch holds its collection's generation from
        reading to storing, so a switch of model waits for it and never splits it.
        """
        view = await self.get(job_id)
        collection = self._collections.get(view.collection)
        dedup = (view.params or {}).get("dedup_threshold")
        await run_in(self._pool, self._store.set_status, job_id, "running")
        batch = await run_in(self._pool, self._store.pending, job_id, self._batch_size)
        loading = asyncio.ensure_future(self._load(collection.pin, batch))
        storing: asyncio.Future[None] | None = None
        try:
            while batch:
                if self._stopping or job_id in self._cancelled:
                    break
                loaded = await loading
                following = await run_in(
                    self._pool, self._store.pending, job_id, self._batch_size, batch[-1].position
                )
                loading = asyncio.ensure_future(self._load(collection.pin, following))
                try:
                    encoded = await self._encode(batch, loaded)
                except BaseException:
                    await loaded.pin.release()
                    raise
                if storing is not None:
                    await storing
                storing = asyncio.ensure_future(
                    self._store_batch(job_id, encoded, loaded.pin, dedup)
                )
                batch = following
            if storing is not None:
                await storing
        finally:
            await _drop_loading(loading)
            if storing is not None and not storing.done():
                with contextlib.suppress(Exception):
                    await storing  # a write under way completes and is recorded
        if job_id in self._cancelled:
            self._cancelled.discard(job_id)
            await run_in(self._pool, shutil.rmtree, self._staging_dir / job_id, True)
            return
        if batch and self._stopping:
            await run_in(self._pool, self._store.set_status, job_id, "interrupted")
            return
        await run_in(self._pool, self._store.set_status, job_id, "done")
        await run_in(self._pool, shutil.rmtree, self._staging_dir / job_id, True)

    async def _load(
        self, pin_collection: Callable[..., Awaitable[Pin]], batch: Sequence[JobItem]
    ) -> _LoadedBatch:
        """Read, decode and prepare the images of a batch; failures are kept by position."""
        pin = await pin_collection(write=True, model=True)
        try:
            loaded = _LoadedBatch(pin)
            sources: list[JobItem] = []
            blobs: list[bytes] = []
            for item in (i for i in batch if i.kind == "image"):
                try:
                    blobs.append(await run_in(self._pool, self._read_source, item))
                    sources.append(item)
                except InvalidInputError as e:
                    loaded.failed[item.position] = str(e)
            prepared = await pin.items.encoding.prepare_many(blobs)
        except BaseException:
            await pin.release()
            raise
        loaded.images = [
            (ImageInput(data, item.item_id, item.metadata), result)
            for item, data, result in zip(sources, blobs, prepared, strict=True)
        ]
        loaded.positions = [item.position for item in sources]
        return loaded

    async def _encode(self, batch: Sequence[JobItem], loaded: _LoadedBatch) -> _EncodedBatch:
        items = loaded.pin.items
        encoded = _EncodedBatch(failed=dict(loaded.failed))
        texts = [item for item in batch if item.kind == "text"]
        if texts:
            encoded.items += await items.encode_texts(
                [TextInput(text=t.text or "", id=t.item_id, metadata=t.metadata) for t in texts],
                background=True,
            )
            encoded.positions += [t.position for t in texts]
        if loaded.images:
            images, decode_failures = await items.encode_images(
                [inp for inp, _ in loaded.images],
                [prepared for _, prepared in loaded.images],
                background=True,
            )
            encoded.items += images
            encoded.positions += [
                p for slot, p in enumerate(loaded.positions) if slot not in decode_failures
            ]
            for slot, reason in decode_failures.items():
                encoded.failed[loaded.positions[slot]] = reason
        encoded.done = [item.position for item in batch if item.position not in encoded.failed]
        return encoded

    async def _store_batch(
        self, job_id: str, encoded: _EncodedBatch, pin: Pin, dedup: float | None
    ) -> None:
        duplicates: dict[int, tuple[str, float]] = {}
        try:
            if dedup is None:
                await pin.items.store_items(encoded.items)
            else:
                _, found = await pin.items.store_distinct(encoded.items, dedup)
                duplicates = {
                    encoded.positions[d.position]: (d.existing_id, d.score) for d in found
                }
        finally:
            await pin.release()
        await run_in(
            self._pool,
            self._store.record_results,
            job_id,
            encoded.done,
            encoded.failed,
            duplicates,
        )

    # -- jobs over stored items -----------------------------------------------------------
    async def _run_duplicates(self, job_id: str) -> None:
        """Find the groups (one scan of the index, in the background thread) and keep them."""
        view = await self.get(job_id)
        query = DuplicatesQuery(**(view.params or {}))
        collection = self._collections.get(view.collection)
        await run_in(self._pool, self._store.set_status, job_id, "running")

        def progress(done: int, total: int) -> None:
            if self._stopping or job_id in self._cancelled:
                raise _Stopped
            self._store.set_progress(job_id, total, done)

        pools = self._collections.pools
        try:
            async with collection.use() as pin:
                page = await find_duplicates(pin.store, pools.background, query, progress)
        except _Stopped:
            await self._stopped(job_id)
            return
        await run_in(self._pool, self._store.set_result, job_id, page.as_json())
        await run_in(self._pool, self._store.set_status, job_id, "done")

    async def _run_tagging(self, job_id: str) -> None:
        """Label the collection's items batch by batch from the job's cursor (resumable)."""
        view = await self.get(job_id)
        params = dict(view.params or {})
        up_to = int(params.pop("up_to_label"))
        request = TagRequest(**params)
        collection = self._collections.get(view.collection)
        await run_in(self._pool, self._store.set_status, job_id, "running")
        cursor, done = view.cursor, view.done
        async with collection.use() as pin:
            total = done + await items_to_tag(pin.store, self._pool, request, cursor, up_to)
        await run_in(self._pool, self._store.set_cursor, job_id, cursor, total, done)
        while True:
            if self._stopping or job_id in self._cancelled:
                await self._stopped(job_id)
                return
            async with collection.use(write=True, model=True) as pin:
                step = await tag_next(
                    pin.store,
                    pin.classify,
                    self._pool,
                    request,
                    cursor,
                    up_to,
                    collection.limits.max_metadata_bytes,
                )
            if step is None:
                break
            cursor, tagged = step
            done += tagged
            await run_in(self._pool, self._store.set_cursor, job_id, cursor, total, done)
        await run_in(self._pool, self._store.set_status, job_id, "done")

    async def _stopped(self, job_id: str) -> None:
        if job_id in self._cancelled:
            self._cancelled.discard(job_id)  # its status says cancelled already
        else:
            await run_in(self._pool, self._store.set_status, job_id, "interrupted")

    def _read_source(self, item: JobItem) -> bytes:
        """An item's image bytes; any problem with the file is that item's error, not the job's."""
        source = item.source or ""
        if item.staged:
            try:
                return read_staged(source, item.offset, item.length)
            except OSError as e:
                raise InvalidInputError(f"the staged upload is lost ({e.strerror or e})") from e
        if self._import_root is None:
            raise ImportPathError("image_path items need XMR_IMPORT_ROOT to be set on the server")
        if os.path.isabs(source):  # recorded by an older release as a resolved absolute path
            source = os.path.relpath(source, self._import_root.resolve())
        return read_import_file(self._import_root, source, self._max_file_bytes)


async def _drop_loading(loading: asyncio.Future[_LoadedBatch]) -> None:
    """Stop a batch being loaded ahead and let go of the generation it holds."""
    loading.cancel()
    try:
        loaded = await loading
    except (asyncio.CancelledError, Exception):
        return
    await loaded.pin.release()


def _public(error: Exception) -> str:
    """A message safe to show to clients: the domain errors' own text, else only the type."""
    if isinstance(error, StorageError | InvalidInputError | TooManyDuplicatesError):
        return str(error)
    return f"internal error ({type(error).__name__}); see the server log"
