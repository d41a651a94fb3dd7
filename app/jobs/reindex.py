"""Re-embedding a collection with another model, in the background, without downtime.

Every item of the serving generation is embedded again (images from their stored bytes, texts
from their records) into the collection's next generation, in write order, with a cursor saved
after each batch: a restart resumes at the cursor. Writes made meanwhile land in the serving
generation and are picked up by the cursor (a replaced item is written anew, so it comes after
it); deletions are carried over at the switch. When the cursor has caught up, the collection
switches (Collection.switch_to). A failure or a cancel removes the next generation and leaves
the collection as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.jobs.context import ReindexFailed, job_error_text
from app.jobs.ledger import JobLedger
from app.jobs.pipeline import run_pipeline
from app.services.collections import Collection, open_store, without_next
from app.services.encoding import EncodingService
from app.services.errors import CollectionStateError, JobStateError, ModelsBusyError
from app.services.items import new_item_id
from app.services.models import LoadedModel
from app.services.threads import run_in
from index import NewItem, Record, UnavailableError
from index.layout import (
    DEFAULT_COLLECTION,
    Generation,
    ModelSpec,
    ReindexCursor,
    read_cursor,
    with_identity,
    write_cursor,
)

if TYPE_CHECKING:
    from index.store import ItemStore

logger = logging.getLogger(__name__)
MODEL_RETRY_S = 1.0
UNAVAILABLE_PAUSE_S = 2.0  # before going on after storage was away
MAX_CATCH_UP_PASSES = 5


def check_reindexable(collection: Collection) -> None:
    """Through the API: any collection but `default`, which follows the settings."""
    if collection.name == DEFAULT_COLLECTION:
        raise CollectionStateError(
            "the default collection follows XMR_MODEL and XMR_PRETRAINED: change those and "
            "restart to re-embed it"
        )


async def check_every_image_has_bytes(collection: Collection) -> None:
    """Images imported as vectors alone cannot be embedded by another model: refuse, never
    lose them."""
    without = await run_in(
        collection.pools.store, collection.store.records.count_images_without_bytes
    )
    if without:
        raise CollectionStateError(
            f"{without} images of collection {collection.name} were imported as vectors, "
            "without their bytes: another model cannot embed them. Delete them, or import "
            "that model's vectors into a new collection"
        )


class Reindexer:
    """Starts, runs, resumes and cancels the re-embeddings of every collection."""

    def __init__(self, job_store: JobLedger, batch_size: int) -> None:
        self._job_store = job_store
        self._batch_size = batch_size
        self._tasks: dict[str, asyncio.Task[None]] = {}  # job id -> its task
        self._cancelled: set[str] = set()
        self._starting: set[str] = set()  # collections between the check and the commit

    async def start(
        self, collection: Collection, spec: ModelSpec, by_settings: bool = False
    ) -> str:
        """Begin switching `collection` to `spec`; the job's id. One re-embedding at a time."""
        if not by_settings:
            check_reindexable(collection)
        await check_every_image_has_bytes(collection)
        if collection.state.next is not None or collection.name in self._starting:
            raise JobStateError(
                f"collection {collection.name} is being re-embedded already "
                f"(job {collection.state.reindex_job})"
            )
        self._starting.add(collection.name)
        try:
            job_id = new_item_id()
            generation = collection.folder.new_generation(collection.state, spec)
            params = dict(vars(spec))
            await run_in(
                collection.pools.store,
                lambda: self._job_store.create(job_id, [], collection.name, "reindex", params),
            )
            await collection.set_state(
                replace(collection.state, next=generation, reindex_job=job_id)
            )
        finally:
            self._starting.discard(collection.name)
        self._launch(collection, job_id)
        return job_id

    def resume(self, collection: Collection) -> str | None:
        """At start-up: carry on with a re-embedding the last process left unfinished."""
        job_id = collection.state.reindex_job
        if collection.state.next is None or job_id is None or job_id in self._tasks:
            return None
        if self._job_store.get(job_id) is None:
            params = vars(collection.state.next.spec)
            self._job_store.create(job_id, [], collection.name, "reindex", dict(params))
        self._launch(collection, job_id)
        return job_id

    def _launch(self, collection: Collection, job_id: str) -> None:
        task = asyncio.create_task(self._run(collection, job_id), name=f"xmr-reindex-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def cancel(self, job_id: str) -> bool:
        """Stop a re-embedding and drop its generation; False if no such job is running."""
        task = self._tasks.get(job_id)
        if task is None:
            return False
        self._cancelled.add(job_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return True

    async def abandon(self, collection: Collection) -> None:
        """Give up the collection's re-embedding, running or left by the last process."""
        job_id = collection.state.reindex_job
        if job_id is not None and await self.cancel(job_id):
            return
        await self._abandon(collection, None)
        if job_id is not None and self._job_store.get(job_id) is not None:
            await run_in(collection.pools.store, self._job_store.set_status, job_id, "cancelled")

    async def stop(self) -> None:
        """Shutting down: stop every re-embedding where it is; each resumes at the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the work -------------------------------------------------------------------------
    async def _run(self, collection: Collection, job_id: str) -> None:
        store_pool = collection.pools.store
        await run_in(store_pool, self._job_store.set_status, job_id, "running")
        # a switch cut short (a crash after the fence, before the commit) left the serving
        # generation refusing writes: it serves on until this run switches
        await run_in(store_pool, collection.store.records.unretire)
        new_store: ItemStore | None = None
        try:
            model = await self._acquire(collection, job_id)
            try:
                opened = new_store = await self._open_next(collection, model)
                await self._close_in(collection, job_id, model, opened)
                final = replace(
                    collection.state, current=_next(collection), next=None, reindex_job=None
                )
                await collection.switch_to(
                    final, opened, lambda: self._finish(collection, job_id, model, opened)
                )
            finally:
                collection.models.release(model)
            await run_in(store_pool, self._job_store.set_status, job_id, "done")
            logger.info("collection %s now serves %s", collection.name, final.current.model_id)
        except asyncio.CancelledError:
            if new_store is not None and collection.store is new_store:
                pass  # switched already: nothing to undo
            elif job_id in self._cancelled:
                await self._abandon(collection, new_store)
                await run_in(store_pool, self._job_store.set_status, job_id, "cancelled")
            elif new_store is not None:  # shutting down: resume at the next start
                collection.next_store = None
                await run_in(store_pool, new_store.close)
            raise
        except Exception as e:
            if new_store is not None and collection.store is new_store:
                logger.exception("collection %s switched, but cleaning up failed", collection.name)
                await run_in(store_pool, self._job_store.set_status, job_id, "done")
                return
            logger.exception("re-embedding collection %s failed", collection.name)
            await self._abandon(collection, new_store)
            await run_in(
                store_pool, self._job_store.set_status, job_id, "failed", job_error_text(e)
            )
        finally:
            self._cancelled.discard(job_id)

    async def _acquire(self, collection: Collection, job_id: str) -> LoadedModel:
        """The new model; while no slot is free (models that serve collections are never
        unloaded for a re-embedding), wait for one, and say so in the job."""
        try:
            while True:
                try:
                    return await collection.models.acquire(_next(collection).spec, "background")
                except ModelsBusyError:
                    self._job_store.set_waiting(job_id, "a model slot")
                    await asyncio.sleep(MODEL_RETRY_S)
        finally:
            self._job_store.set_waiting(job_id, None)

    async def _open_next(self, collection: Collection, model: LoadedModel) -> ItemStore:
        generation = with_identity(_next(collection), model.encoder.model_id, model.encoder.dim)
        if generation != collection.state.next:
            await collection.set_state(replace(collection.state, next=generation))
        followed = collection.next_store
        if followed is not None and followed.data_dir == collection.folder.path(generation):
            return followed  # opened when another replica began it
        options = collection.store.options
        opened = await run_in(
            collection.pools.store, open_store, collection.folder, generation, options
        )
        collection.next_store = opened
        return opened

    async def _close_in(
        self, collection: Collection, job_id: str, model: LoadedModel, new_store: ItemStore
    ) -> None:
        """Before the switch: catch up in passes, each up to the records there when it began,
        while the backlog shrinks (writes that outpace the re-embedding are left to the
        switch, which holds them)."""
        pool = collection.pools.store
        left: int | None = None
        for _ in range(MAX_CATCH_UP_PASSES):
            target = await run_in(pool, collection.store.records.max_label)
            cursor = await self._catch_up(collection, job_id, model, new_store, target)
            backlog = await run_in(pool, collection.store.records.count_after, cursor.label)
            if backlog <= self._batch_size or (left is not None and backlog >= left):
                return
            left = backlog

    async def _catch_up(
        self,
        collection: Collection,
        job_id: str,
        model: LoadedModel,
        new_store: ItemStore,
        up_to_label: int | None = None,
    ) -> ReindexCursor:
        """Embed the serving generation's records past the cursor, until none are left (or
        past `up_to_label`), in a pipeline like a batch job's (app.jobs.pipeline), the cursor
        written after each batch; where it got. Storage that is away is waited for, and the
        work goes on from the cursor."""
        while True:
            try:
                return await self._catch_up_once(collection, job_id, model, new_store, up_to_label)
            except UnavailableError as e:  # the database, Milvus or S3 away for a moment
                await self._wait_for_storage(job_id, e)

    async def _catch_up_once(
        self,
        collection: Collection,
        job_id: str,
        model: LoadedModel,
        new_store: ItemStore,
        up_to_label: int | None,
    ) -> ReindexCursor:
        pool = collection.pools.store
        folder = collection.folder.path(_next(collection))
        cursor = await run_in(pool, read_cursor, folder)
        progress = _Progress(folder, cursor, job_id, self._job_store)
        stages = ReembedStages(
            collection.store,
            new_store,
            model.encoding_for(collection.name),
            progress,
            pool,
            self._batch_size,
        )
        reached = (
            (lambda: False)
            if up_to_label is None
            else (lambda: progress.cursor.label >= up_to_label)
        )
        await run_pipeline(await stages.next_after_label(cursor.label), stages, reached)
        return progress.cursor

    async def _wait_for_storage(self, job_id: str, error: UnavailableError) -> None:
        """A re-embedding waits for storage that is away and goes on from its cursor, as a
        batch job does (app.jobs.runner), instead of failing and throwing its work away."""
        logger.warning("re-embedding job %s waits: %s", job_id, error)
        self._job_store.set_waiting(job_id, "storage that is away")
        try:
            await asyncio.sleep(UNAVAILABLE_PAUSE_S)
        finally:
            self._job_store.set_waiting(job_id, None)

    async def _finish(
        self, collection: Collection, job_id: str, model: LoadedModel, new_store: ItemStore
    ) -> None:
        """With writes held: the last writes and every deletion carried into the new store."""
        await self._catch_up(collection, job_id, model, new_store)
        pool = collection.pools.store
        old_ids = await run_in(pool, collection.store.records.all_ids)
        new_ids = await run_in(pool, new_store.records.all_ids)
        for item_id in new_ids - old_ids:
            await run_in(pool, new_store.delete, item_id)

    async def _abandon(self, collection: Collection, new_store: ItemStore | None) -> None:
        """Drop the next generation: the collection stays exactly as it was."""
        generation = collection.state.next
        pool = collection.pools.store
        try:
            if new_store is None and generation is not None and generation.model_id:
                # left by an earlier process: open it to delete what it keeps in Milvus too
                options = collection.store.options
                new_store = await run_in(pool, open_store, collection.folder, generation, options)
            if new_store is not None:
                collection.next_store = None
                await run_in(pool, new_store.destroy)
        except Exception:  # its folder goes below all the same
            logger.exception("collection %s: closing the abandoned generation", collection.name)
        if generation is not None:
            await collection.set_state(without_next(collection.state))
            await run_in(pool, collection.folder.remove, generation)


def _next(collection: Collection) -> Generation:
    generation = collection.state.next
    if generation is None:
        raise CollectionStateError(f"collection {collection.name} has no re-embedding under way")
    return generation


class _Progress:
    """Where a re-embedding is: its cursor (in the next generation's folder) and its job."""

    def __init__(self, folder: Path, cursor: ReindexCursor, job_id: str, ledger: JobLedger) -> None:
        self.folder = folder
        self.cursor = cursor
        self.job_id = job_id
        self.ledger = ledger


class ReembedStages:
    """The pipeline stages of a re-embedding: stored records in, items of the new model out."""

    def __init__(
        self,
        old: ItemStore,
        new: ItemStore,
        encoding: EncodingService,
        progress: _Progress,
        pool: Executor,
        batch_size: int,
    ) -> None:
        self._old = old
        self._new = new
        self._encoding = encoding
        self._progress = progress
        self._pool = pool
        self._batch_size = batch_size

    async def next_after_label(self, label: int) -> list[Record]:
        return await run_in(self._pool, self._old.records.records_after, label, self._batch_size)

    async def next_after(self, batch: Sequence[Record]) -> list[Record]:
        return await self.next_after_label(batch[-1].label)

    async def load(self, batch: Sequence[Record]) -> tuple[dict[str, bytes], list[Any]]:
        """The stored bytes of the batch's images, decoded and prepared for the new model (with
        their thumbnails, for the new generation's blob store)."""
        images = [r for r in batch if r.kind == "image"]
        if not images:
            return {}, []
        data = [await run_in(self._pool, self._old.read_content, r) for r in images]
        prepared = await self._encoding.prepare_many(data, describe=True)
        for record, result in zip(images, prepared, strict=True):
            if isinstance(result, Exception):
                raise ReindexFailed(f"image {record.id} cannot be embedded again: {result}")
        return {r.id: d for r, d in zip(images, data, strict=True)}, prepared

    async def encode(
        self, batch: Sequence[Record], loaded: tuple[dict[str, bytes], list[Any]]
    ) -> tuple[list[NewItem], ReindexCursor]:
        """The records as items of the new generation (same ids, contents and metadata), and
        the cursor that says they are there."""
        blobs, prepared = loaded
        texts = [r for r in batch if r.kind == "text"]
        images = [r for r in batch if r.kind == "image"]
        vectors: dict[str, np.ndarray] = {}
        if texts:
            encoded = await self._encoding.encode_texts(
                [r.text or "" for r in texts], background=True
            )
            vectors.update({r.id: v for r, v in zip(texts, encoded, strict=True)})
        thumbnails: dict[str, bytes] = {}
        if images:
            encoded = await self._encoding.encode_prepared(
                [p.prepared for p in prepared], background=True
            )
            vectors.update({r.id: v for r, v in zip(images, encoded, strict=True)})
            thumbnails = {r.id: p.photo.thumbnail for r, p in zip(images, prepared, strict=True)}
        progress = self._progress
        progress.cursor = ReindexCursor(batch[-1].label, progress.cursor.done + len(batch))
        items = [
            NewItem.again(r, vectors[r.id], blobs.get(r.id), thumbnails.get(r.id)) for r in batch
        ]
        return items, progress.cursor

    async def store(self, encoded: tuple[list[NewItem], ReindexCursor]) -> None:
        """Write a batch into the new generation, then the cursor that says it is there."""
        items, cursor = encoded
        progress, pool = self._progress, self._pool
        await run_in(pool, self._new.upsert, items)
        await run_in(pool, write_cursor, progress.folder, cursor)
        left = await run_in(pool, self._old.records.count_after, cursor.label)
        await run_in(
            pool, progress.ledger.set_progress, progress.job_id, cursor.done + left, cursor.done
        )

    async def discard(self, loaded: tuple[dict[str, bytes], list[Any]]) -> None:
        """Nothing is held between loading and storing."""
