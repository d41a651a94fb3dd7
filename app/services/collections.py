"""Collections: each a store of items made by one model, with its own generations.

A request uses a collection through `use()` (or `pin()` for work spanning several awaits), which
hands it one generation's store and, if asked, that generation's model: the query vector and
the vectors it is compared with always come from the same model. A re-embedding switches a
collection to its next generation with `switch_to`: new writes wait a moment, the writes in
flight finish, the caller carries the last of them over, the pointer file is replaced, and the
old generation is closed once the requests still reading it are done.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from app.services.classify import ClassifyService
from app.services.encoding import EncodingService
from app.services.errors import CollectionNotFoundError, CollectionStateError
from app.services.items import ItemService
from app.services.models import LoadedModel, ModelPool
from app.services.search import SearchService
from app.services.threads import Pools, run_in
from index import IndexInfo, IndexOptions, Kind
from index.catalog import CollectionCatalog
from index.layout import (
    DEFAULT_COLLECTION,
    CollectionFolder,
    CollectionState,
    Generation,
    namespace_of,
)

if TYPE_CHECKING:
    from index.store import ItemStore

logger = logging.getLogger(__name__)
OLD_READERS_GRACE_S = 60.0  # a search still reading the old generation after this is cut off
# how long a switched-from generation stays in a shared database for the other replicas, which
# switch at their next request (and within a second when idle)
SHARED_RETIRE_GRACE_S = 10.0


@dataclass(frozen=True)
class Limits:
    """Per-request limits every collection's services apply (from Settings)."""

    max_k: int
    max_metadata_bytes: int
    max_response_bytes: int
    duplicates_sync_limit: int = 20_000
    # image bytes served by a redirect to the object store, valid this long; None: streamed
    content_url_expiry_s: int | None = None
    keep_gps: bool = False  # images keep where they were taken (XMR_KEEP_GPS)


@dataclass(frozen=True)
class CollectionView:
    """What a collection is now: its description, sizes and index structures."""

    state: CollectionState
    counts: dict[Kind, int]
    indexes: dict[Kind, IndexInfo]


@dataclass
class Pin:
    """One generation of a collection held for a request: its store and maybe its model."""

    collection: Collection
    generation: Generation
    store: ItemStore
    model: LoadedModel | None
    write: bool
    released: bool = False
    encoding: EncodingService | None = None  # the collection's lane on the model held, if one is

    def hold(self, model: LoadedModel) -> None:
        """Hold `model` for this request: its encoding is the collection's own lane."""
        self.model = model
        self.encoding = model.encoding_for(self.collection.name)

    def require_encoding(self) -> EncodingService:
        if self.encoding is None:
            raise RuntimeError("encoding needs the pin to hold the model")
        return self.encoding

    @functools.cached_property
    def items(self) -> ItemService:
        return ItemService(
            self.store,
            self.encoding,
            self.collection.pools.store,
            self.collection.limits.max_metadata_bytes,
            self.collection.limits.content_url_expiry_s,
            self.collection.limits.keep_gps,
        )

    @functools.cached_property
    def search(self) -> SearchService:
        """Searches; those that encode a query need the pin to hold the model."""
        limits = self.collection.limits
        return SearchService(
            self.store,
            self.encoding,
            limits.max_k,
            self.collection.pools.store,
            max_response_bytes=limits.max_response_bytes,
            duplicates_sync_limit=limits.duplicates_sync_limit,
            background_pool=self.collection.pools.background,
        )

    @functools.cached_property
    def classify(self) -> ClassifyService:
        if self.model is None or self.encoding is None:
            raise RuntimeError("classifying needs the pin to hold the model")
        return ClassifyService(
            self.store,
            self.encoding,
            self.model.labels,
            self.model.encoder.logit_scale,
            self.collection.pools.store,
        )

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self.collection.unpin(self)


class Collection:
    """One collection: its description, the store that serves it and who is using which."""

    def __init__(
        self,
        folder: CollectionFolder,
        catalog: CollectionCatalog,
        state: CollectionState,
        store: ItemStore,
        models: ModelPool,
        pools: Pools,
        limits: Limits,
    ) -> None:
        self.folder = folder  # this process's files of each generation
        self.catalog = catalog
        self.state = state
        self.store = store
        # the next generation's store while a re-embedding fills it (here or on another replica)
        self.next_store: ItemStore | None = None
        self.models = models
        self.pools = pools
        self.limits = limits
        self._change: asyncio.Event | None = None  # set at the next unpin or end of a switch
        self._writers = 0
        self._readers: dict[int, int] = {}  # id(store) -> requests using it
        self._switching = False
        self._tasks: set[asyncio.Task[None]] = set()  # kept until done (asyncio holds weakly)
        self.closed = False

    def view(self) -> CollectionView:
        """The collection now; the store's counts and structures are read lock-free, so this
        is safe on the event loop."""
        return CollectionView(self.state, self.store.counts(), self.store.index_info())

    @property
    def name(self) -> str:
        return self.state.name

    async def pin(self, *, write: bool = False, model: bool = False) -> Pin:
        """Hold the serving generation (and its model); `write` waits out a switch under way."""
        if write:
            await self._wait_until(lambda: not self._switching)
        if self.closed:
            raise CollectionNotFoundError(self.name)
        # no await from the check above to here: the event loop makes this one step
        pin = Pin(self, self.state.current, self.store, None, write)
        self._writers += int(write)
        self._readers[id(pin.store)] = self._readers.get(id(pin.store), 0) + 1
        if model:
            try:
                loaded = await self.models.acquire(pin.generation.spec)
                pin.hold(loaded)
                self._check_model(pin.generation, loaded)
            except BaseException:
                await pin.release()
                raise
        return pin

    def _check_model(self, generation: Generation, model: LoadedModel) -> None:
        if model.encoder.model_id != generation.model_id:
            raise CollectionStateError(
                f"collection {self.name} holds vectors of {generation.model_id}, but its "
                f"model now loads as {model.encoder.model_id}: re-embed it"
            )

    async def unpin(self, pin: Pin) -> None:
        if pin.model is not None:
            self.models.release(pin.model)
        self._writers -= int(pin.write)
        self._readers[id(pin.store)] -= 1
        self._notify()

    def _notify(self) -> None:
        if self._change is not None:
            self._change.set()
            self._change = None

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        """Wait, without a lock on the hot path, until `done()` holds after some change."""
        while not done():
            if self._change is None:
                self._change = asyncio.Event()
            await self._change.wait()

    @asynccontextmanager
    async def use(self, *, write: bool = False, model: bool = False) -> AsyncIterator[Pin]:
        pin = await self.pin(write=write, model=model)
        try:
            yield pin
        finally:
            await pin.release()

    async def switch_to(
        self,
        state: CollectionState,
        store: ItemStore,
        carry_last_writes: Callable[[], Awaitable[None]],
    ) -> None:
        """Make `store` (described by `state`) serve, with no write lost and no search mixed.

        New writes wait; once the writes in flight are done, `carry_last_writes` brings the new
        store level with the old, `state` is committed, and the old store is retired.
        """
        self._switching = True
        await self._wait_until(lambda: self._writers == 0)
        old_store, old_generation = self.store, self.state.current
        committed = False
        try:
            # other replicas' writes to the old generation are refused from here (503, retried)
            await run_in(self.pools.store, old_store.records.retire)
            await carry_last_writes()
            await run_in(self.pools.store, store.snapshot)
            await run_in(self.pools.store, self.catalog.write, state)
            committed = True
        finally:
            self._switching = False
            if committed:
                self.store, self.state = store, state
                self.next_store = None
            else:
                await run_in(self.pools.store, old_store.records.unretire)
            self._notify()
        # the switch is made: retiring the old generation must finish even if the caller stops
        await asyncio.shield(self._retire(old_store, old_generation))

    async def _retire(self, store: ItemStore, generation: Generation, destroy: bool = True) -> None:
        """Close the old generation once no request here reads it: deleted with everything in
        it by the replica that switched (after the other replicas had time to switch too), only
        this replica's files of it elsewhere."""
        try:
            await asyncio.wait_for(
                self._wait_until(lambda: self._readers.get(id(store), 0) == 0),
                OLD_READERS_GRACE_S,
            )
        except TimeoutError:
            logger.warning("closing %s's old generation under running searches", self.name)
        self._readers.pop(id(store), None)
        try:
            if not destroy:
                await run_in(self.pools.store, store.close)
            else:
                if self.catalog.shared:
                    await asyncio.sleep(SHARED_RETIRE_GRACE_S)
                await run_in(self.pools.store, store.destroy)
            await run_in(self.pools.store, self.folder.remove, generation)
        except Exception:  # the next start removes what is left (CollectionFolder.remove_strays)
            logger.exception("collection %s: removing the old generation failed", self.name)
            return
        logger.info("collection %s: generation %r removed", self.name, generation.dir or "(root)")

    async def set_state(self, state: CollectionState) -> None:
        """Commit a description that keeps the serving generation (a re-embedding starts/ends)."""
        if state.current.dir != self.state.current.dir:
            raise ValueError("set_state cannot change the serving generation")
        await run_in(self.pools.store, self.catalog.write, state)
        self.state = state

    async def follow(self, state: CollectionState, options: IndexOptions) -> None:
        """Take up what another replica committed to the catalog: a re-embedding begun (its
        generation is followed from now, its model loaded, so the switch finds both ready),
        given up, or switched to; the old generation is closed here once unused (the switching
        replica deletes it)."""
        if state == self.state or self._switching:
            return
        if state.current.dir != self.state.current.dir:
            store = self.next_store
            if store is None or store.data_dir != self.folder.path(state.current):
                store = await run_in(
                    self.pools.store, open_store, self.folder, state.current, options
                )
            old_store, old_generation = self.store, self.state.current
            self.store, self.state, self.next_store = store, state, None
            self._notify()
            self._background(self._retire(old_store, old_generation, destroy=False))
            return
        if state.next is not None and state.next.model_id and self.next_store is None:
            self.next_store = await run_in(
                self.pools.store, open_store, self.folder, state.next, options
            )
            self._background(self._load_next_model(state.next))
        elif state.next is None and self.next_store is not None and self.state.next is not None:
            next_store, self.next_store = self.next_store, None
            await run_in(self.pools.store, next_store.close)
            await run_in(self.pools.store, self.folder.remove, self.state.next)
        self.state = state

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load_next_model(self, generation: Generation) -> None:
        try:
            async with self.models.use(generation.spec, "background"):
                pass  # loaded now, and kept while a slot is not needed for another
        except Exception as e:  # the switch loads it then
            logger.warning(
                "collection %s: could not load %s early: %s", self.name, generation.spec.model, e
            )

    async def close_when_unused(self, grace_s: float = OLD_READERS_GRACE_S) -> None:
        """Take no new requests (they get 404) and wait for those using the store to finish,
        as a generation retired by a switch does: a search is never cut off mid-way."""
        self.closed = True
        try:
            await asyncio.wait_for(
                self._wait_until(lambda: self._readers.get(id(self.store), 0) == 0), grace_s
            )
        except TimeoutError:
            logger.warning("deleting collection %s under requests still running", self.name)

    def close(self, save: bool = True) -> None:
        self.closed = True
        self.store.close(save)
        if self.next_store is not None:
            self.next_store.close(save)

    def destroy(self) -> None:
        """Close and delete everything of the serving generation (the collection is deleted)."""
        self.closed = True
        self.store.destroy()


def default_first(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (n != DEFAULT_COLLECTION, n))


def without_next(state: CollectionState) -> CollectionState:
    return replace(state, next=None, reindex_job=None)


def open_store(
    folder: CollectionFolder, generation: Generation, options: IndexOptions
) -> ItemStore:
    """The ItemStore of one generation (Milvus names it by collection and generation)."""
    from index.store import ItemStore  # FAISS or pymilvus load here, when a store opens

    namespace = namespace_of(folder.name, generation)
    return ItemStore(
        folder.path(generation), generation.model_id, generation.dim, options, namespace
    )
