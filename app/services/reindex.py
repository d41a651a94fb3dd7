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
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.services.collections import Collection, open_store, without_next
from app.services.encoding import EncodingService
from app.services.errors import (
    CollectionStateError,
    InvalidInputError,
    JobStateError,
    ModelsBusyError,
)
from app.services.items import new_item_id
from app.services.job_store import JobStore
from app.services.models import LoadedModel
from app.services.threads import run_in
from index import ItemStore, NewItem, Record, StorageError
from index.layout import (
    DEFAULT_COLLECTION,
    Generation,
    ModelSpec,
    ReindexCursor,
    read_cursor,
    with_identity,
    write_cursor,
)
from models import ModelLoadError

logger = logging.getLogger(__name__)
MODEL_RETRY_S = 1.0


class ReindexFailed(Exception):
    """An item could not be embedded again; the message names it."""


def check_reindexable(collection: Collection) -> None:
    """Through the API: any collection but `default`, which follows the settings."""
    if collection.name == DEFAULT_COLLECTION:
        raise CollectionStateError(
            "the default collection follows XMR_MODEL and XMR_PRETRAINED: change those and "
            "restart to re-embed it"
        )


class Reindexer:
    """Starts, runs, resumes and cancels the re-embeddings of every collection."""

    def __init__(self, job_store: JobStore, batch_size: int) -> None:
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
        new_store: ItemStore | None = None
        try:
            model = await self._acquire(collection, job_id)
            try:
                opened = new_store = await self._open_next(collection, model)
                await self._catch_up(collection, job_id, model, opened)
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
                await run_in(store_pool, new_store.close)
            raise
        except Exception as e:
            if new_store is not None and collection.store is new_store:
                logger.exception("collection %s switched, but cleaning up failed", collection.name)
                await run_in(store_pool, self._job_store.set_status, job_id, "done")
                return
            logger.exception("re-embedding collection %s failed", collection.name)
            await self._abandon(collection, new_store)
            await run_in(store_pool, self._job_store.set_status, job_id, "failed", _public(e))
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
        options = collection.store.options
        return await run_in(
            collection.pools.store, open_store, collection.folder, generation, options
        )

    async def _catch_up(
        self,
        collection: Collection,
        job_id: str,
        model: LoadedModel,
        new_store: ItemStore,
    ) -> None:
        """Embed the serving generation's records past the cursor, until none are left.

        A pipeline like a batch job's: while batch n is encoded, batch n+1 is read and decoded
        and batch n-1 is written with its cursor (fsyncs the model need not wait for).
        """
        pool = collection.pools.store
        old = collection.store
        encoding = model.encoding_for(collection.name)
        folder = collection.folder.path(_next(collection))
        cursor = await run_in(pool, read_cursor, folder)
        records = await run_in(pool, old.records_after, cursor.label, self._batch_size)
        loading = asyncio.ensure_future(self._load(old, encoding, records, pool))
        storing: asyncio.Future[None] | None = None
        try:
            while records:
                blobs, prepared = await loading
                following = await run_in(
                    pool, old.records_after, records[-1].label, self._batch_size
                )
                loading = asyncio.ensure_future(self._load(old, encoding, following, pool))
                items = await self._encode(encoding, records, blobs, prepared)
                cursor = ReindexCursor(records[-1].label, cursor.done + len(records))
                if storing is not None:
                    await storing
                storing = asyncio.ensure_future(
                    self._store(old, new_store, items, folder, cursor, job_id, pool)
                )
                records = following
            if storing is not None:
                await storing
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
            if storing is not None and not storing.done():
                with contextlib.suppress(Exception):
                    await storing

    async def _store(
        self,
        old: ItemStore,
        new_store: ItemStore,
        items: list[NewItem],
        folder: Path,
        cursor: ReindexCursor,
        job_id: str,
        pool: Executor,
    ) -> None:
        """Write a batch into the new generation, then the cursor that says it is there."""
        await run_in(pool, new_store.upsert, items)
        await run_in(pool, write_cursor, folder, cursor)
        left = await run_in(pool, old.count_after, cursor.label)
        await run_in(pool, self._job_store.set_progress, job_id, cursor.done + left, cursor.done)

    async def _finish(
        self, collection: Collection, job_id: str, model: LoadedModel, new_store: ItemStore
    ) -> None:
        """With writes held: the last writes and every deletion carried into the new store."""
        await self._catch_up(collection, job_id, model, new_store)
        pool = collection.pools.store
        old_ids = await run_in(pool, collection.store.all_ids)
        new_ids = await run_in(pool, new_store.all_ids)
        for item_id in new_ids - old_ids:
            await run_in(pool, new_store.delete, item_id)

    async def _load(
        self, old: ItemStore, encoding: EncodingService, records: list[Record], pool: Executor
    ) -> tuple[dict[str, bytes], list[Any]]:
        """The stored bytes of the batch's images, decoded and prepared for the new model."""
        images = [r for r in records if r.kind == "image"]
        if not images:
            return {}, []
        data = [await run_in(pool, old.read_content, r) for r in images]
        prepared = await encoding.prepare_many(data)
        for record, result in zip(images, prepared, strict=True):
            if isinstance(result, Exception):
                raise ReindexFailed(f"image {record.id} cannot be embedded again: {result}")
        return {r.id: d for r, d in zip(images, data, strict=True)}, prepared

    async def _encode(
        self,
        encoding: EncodingService,
        records: list[Record],
        blobs: dict[str, bytes],
        prepared: list[Any],
    ) -> list[NewItem]:
        """The records as items of the new generation: same ids, contents and metadata."""
        texts = [r for r in records if r.kind == "text"]
        images = [r for r in records if r.kind == "image"]
        vectors: dict[str, np.ndarray] = {}
        if texts:
            encoded = await encoding.encode_texts([r.text or "" for r in texts], background=True)
            vectors.update({r.id: v for r, v in zip(texts, encoded, strict=True)})
        if images:
            encoded = await encoding.encode_prepared(prepared, background=True)
            vectors.update({r.id: v for r, v in zip(images, encoded, strict=True)})
        return [NewItem.again(r, vectors[r.id], blobs.get(r.id)) for r in records]

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


def _public(error: Exception) -> str:
    if isinstance(
        error,
        StorageError | InvalidInputError | ReindexFailed | CollectionStateError | ModelLoadError,
    ):
        return str(error)
    return f"internal error ({type(error).__name__}); see the server log"
