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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from app.services.classify import ClassifyService
from app.services.encoding import EncodingService
from app.services.errors import CollectionNotFoundError, CollectionStateError
from app.services.items import ItemService
from app.services.models import LoadedModel, ModelPool
from app.services.search import SearchService
from app.services.threads import Pools, run_in
from index import IndexInfo, IndexOptions, Kind
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


@dataclass(frozen=True)
class Limits:
    """Per-request limits every collection's services apply (from Settings)."""

    max_k: int
    max_metadata_bytes: int
    max_response_bytes: int
    duplicates_sync_limit: int = 20_000


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
        state: CollectionState,
        store: ItemStore,
        models: ModelPool,
        pools: Pools,
        limits: Limits,
    ) -> None:
        self.folder = folder
        self.state = state
        self.store = store
        self.models = models
        self.pools = pools
        self.limits = limits
        self._change: asyncio.Event | None = None  # set at the next unpin or end of a switch
        self._writers = 0
        self._readers: dict[int, int] = {}  # id(store) -> requests using it
        self._switching = False
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
            await carry_last_writes()
            await run_in(self.pools.store, store.snapshot)
            await run_in(self.pools.store, self.folder.write, state)
            committed = True
        finally:
            self._switching = False
            if committed:
                self.store, self.state = store, state
            self._notify()
        # the switch is made: retiring the old generation must finish even if the caller stops
        await asyncio.shield(self._retire(old_store, old_generation))

    async def _retire(self, store: ItemStore, generation: Generation) -> None:
        try:
            await asyncio.wait_for(
                self._wait_until(lambda: self._readers.get(id(store), 0) == 0),
                OLD_READERS_GRACE_S,
            )
        except TimeoutError:
            logger.warning("closing %s's old generation under running searches", self.name)
        self._readers.pop(id(store), None)
        try:
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
        await run_in(self.pools.store, self.folder.write, state)
        self.state = state

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

    def close(self) -> None:
        self.closed = True
        self.store.close()

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
