"""The collections of one data directory: opened at start-up, created and deleted through the API.

`default` is the data directory's own collection and follows the settings' model: started with
another model than the one its vectors were made with, it keeps serving them with that model and
re-embeds to the configured one in the background (app.jobs.reindex).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from app.jobs.reindex import Reindexer, check_reindexable
from app.services.collections import Collection, Limits, default_first, open_store
from app.services.errors import (
    CollectionExistsError,
    CollectionLimitError,
    CollectionNotFoundError,
    CollectionStateError,
    InvalidInputError,
    ResourcesExhaustedError,
)
from app.services.model_policy import AllowedModels
from app.services.models import ModelPool
from app.services.threads import Pools, run_in
from index import IndexOptions, ModelMismatchError
from index.catalog import CollectionCatalog, FolderCatalog
from index.layout import (
    COLLECTION_NAME,
    DEFAULT_COLLECTION,
    CollectionFolder,
    CollectionState,
    Generation,
    ModelSpec,
    is_collection_name,
    new_state,
)
from index.records import stored_model
from models.export_cache import remove_exports

if TYPE_CHECKING:
    from index.store import ItemStore

logger = logging.getLogger(__name__)


class CollectionRegistry:
    def __init__(
        self,
        data_dir: Path,
        options: IndexOptions,
        models: ModelPool,
        pools: Pools,
        limits: Limits,
        reindexer: Reindexer,
        policy: AllowedModels,
        max_collections: int = 100,
        export_root: Path | None = None,
        catalog: CollectionCatalog | None = None,
    ) -> None:
        self.export_root = export_root  # runtime exports (models.export_cache)
        self.data_dir = data_dir
        self.policy = policy
        self.max_collections = max_collections
        self.options = options
        self.models = models
        self.pools = pools
        self.limits = limits
        self.reindexer = reindexer
        self.catalog = catalog or FolderCatalog(data_dir)
        self._collections: dict[str, Collection] = {}
        self._changing = asyncio.Lock()  # creations, deletions and refreshes, one at a time
        self._seen_version: int | None = None  # of the shared catalog, when last followed
        models.serving = self.serving_models

    # -- start-up -------------------------------------------------------------------------
    async def open_all(self, default_spec: ModelSpec) -> None:
        """Open `default` (made or adopted with `default_spec`) and every other collection."""
        await self._open_default(default_spec)
        for name in await run_in(self.pools.store, self.catalog.names):
            if name == DEFAULT_COLLECTION:
                continue
            state = await run_in(self.pools.store, self.catalog.read, name)
            if state is None:
                continue
            self._collections[name] = await self._open(CollectionFolder(self.data_dir, name), state)
        for collection in self._collections.values():
            job = self.reindexer.resume(collection)
            if job is not None:
                logger.info("collection %s: re-embedding resumed (job %s)", collection.name, job)

    async def _open_default(self, spec: ModelSpec) -> None:
        folder = CollectionFolder(self.data_dir, DEFAULT_COLLECTION)
        await run_in(self.pools.store, folder.root.mkdir, 0o777, True, True)
        state = await run_in(self.pools.store, self.catalog.read, DEFAULT_COLLECTION)
        if state is None:
            state = await self._adopt_default(folder, spec)
        collection = await self._open(folder, state)
        self._collections[DEFAULT_COLLECTION] = collection
        await self._check_weights(collection)
        await self._follow_settings(collection, spec)

    async def _check_weights(self, collection: Collection) -> None:
        """Load the serving model now; refuse weights that changed under the same name."""
        current = collection.state.current
        async with self.models.use(current.spec) as model:
            loaded_id = model.encoder.model_id
        if loaded_id != current.model_id:
            collection.close()
            raise ModelMismatchError(
                f"the data in {collection.folder.root} was indexed with {current.model_id}, "
                f"but {current.spec.model} now loads as {loaded_id}: the weights changed under "
                "the same name. Restore them, or point XMR_DATA_DIR at a new directory"
            )

    async def _adopt_default(self, folder: CollectionFolder, spec: ModelSpec) -> CollectionState:
        """The description of a data directory without one: new, or written before collections."""
        async with self.models.use(spec) as model:
            model_id, dim = model.encoder.model_id, model.encoder.dim
        stored = await run_in(
            self.pools.store, stored_model, folder.root, self.options.database_url
        )
        made_by = spec
        if stored is not None and stored != (model_id, dim):
            # vectors of another model: serve them with it (as named in the records)
            model_id, dim = stored
            name, _, pretrained = model_id.partition("/")
            made_by = ModelSpec(name, pretrained, spec.precision)
        state = new_state(DEFAULT_COLLECTION, Generation("", made_by, model_id, dim))
        # replicas starting together adopt it once: the first description holds
        return await run_in(self.pools.store, self.catalog.create, state)

    async def _follow_settings(self, collection: Collection, spec: ModelSpec) -> None:
        """Re-embed `default` to the configured model if it serves another one.

        Other settings for the same weights (a precision, a tag spelled out that was the
        default) make the same vectors within cosine 0.9999: the description follows them, no
        re-embedding.
        """
        state = collection.state
        if state.next is not None and state.next.spec == spec:
            return  # under way already; resumed with the others
        if await self._same_weights(state.current, spec):
            if state.next is not None:  # configured back to the serving model
                await self.reindexer.abandon(collection)
            if collection.state.current.spec != spec:
                current = replace(collection.state.current, spec=spec)
                await collection.set_state(replace(collection.state, current=current))
            return
        if state.next is not None:
            # configured to yet another model: the half-made generation is of no use now
            await self.reindexer.abandon(collection)
        logger.warning(
            "the default collection holds vectors of %s; XMR_MODEL/XMR_PRETRAINED now ask for "
            "%s %s: serving the existing vectors and re-embedding in the background",
            state.current.model_id,
            spec.model,
            spec.pretrained or "(default weights)",
        )
        await self.reindexer.start(collection, spec, by_settings=True)

    async def _same_weights(self, generation: Generation, spec: ModelSpec) -> bool:
        if (generation.spec.model, generation.spec.pretrained) == (spec.model, spec.pretrained):
            return True
        async with self.models.use(spec) as model:  # loaded now; the re-embedding needs it
            return model.encoder.model_id == generation.model_id

    async def _open(self, folder: CollectionFolder, state: CollectionState) -> Collection:
        removed = await run_in(self.pools.store, folder.remove_strays, state)
        if removed:
            logger.info("collection %s: removed leftover generations %s", state.name, removed)
        store: ItemStore = await run_in(
            self.pools.store, open_store, folder, state.current, self.options
        )
        return Collection(folder, self.catalog, state, store, self.models, self.pools, self.limits)

    async def refresh(self) -> None:
        """Follow what other replicas changed in a shared catalog (collections created,
        deleted, re-embedding or switched): one small read when nothing did."""
        if not self.catalog.shared:
            return
        version = await run_in(self.pools.store, self.catalog.version)
        if version == self._seen_version:
            return
        async with self._changing:
            version = await run_in(self.pools.store, self.catalog.version)
            if version == self._seen_version:
                return
            names = set(await run_in(self.pools.store, self.catalog.names))
            for name in sorted(names):
                state = await run_in(self.pools.store, self.catalog.read, name)
                collection = self._collections.get(name)
                if state is None:
                    continue
                if collection is not None and collection.state.created_at != state.created_at:
                    await self._forget(name)  # deleted and made again under the same name
                    collection = None
                if collection is None:
                    folder = CollectionFolder(self.data_dir, name)
                    self._collections[name] = await self._open(folder, state)
                    logger.info("collection %s: made on another replica, opened", name)
                else:
                    await collection.follow(state, self.options)
            for name in set(self._collections) - names - {DEFAULT_COLLECTION}:
                await self._forget(name)
            self._seen_version = version

    async def _forget(self, name: str) -> None:
        """A collection another replica deleted: closed here, and this replica's files go."""
        collection = self._collections.pop(name)
        await collection.close_when_unused()
        await run_in(self.pools.store, collection.close, False)
        await run_in(self.pools.store, collection.folder.delete)
        logger.info("collection %s: deleted on another replica, closed", name)

    def serving_models(self) -> set[ModelSpec]:
        """The models collections serve their searches with now."""
        return {c.state.current.spec for c in self._collections.values() if not c.closed}

    # -- the API --------------------------------------------------------------------------
    def get(self, name: str) -> Collection:
        collection = self._collections.get(name)
        if collection is None or collection.closed:
            raise CollectionNotFoundError(name)
        return collection

    def default(self) -> Collection:
        """The collection the /v1 routes use: it follows XMR_MODEL."""
        return self.get(DEFAULT_COLLECTION)

    def all(self) -> list[Collection]:
        return [self._collections[n] for n in default_first(list(self._collections))]

    async def create(self, name: str, spec: ModelSpec) -> Collection:
        """A new empty collection; its model is loaded to learn (and check) it."""
        if not is_collection_name(name):
            raise InvalidInputError(
                f"a collection name must match {COLLECTION_NAME.pattern} "
                "(lowercase letters, digits, _ and -; at most 63 characters)"
            )
        self.policy.check(spec)
        await self.refresh()
        async with self._changing:
            if name in self._collections:
                raise CollectionExistsError(name)
            if len(self._collections) >= self.max_collections:
                raise CollectionLimitError(
                    f"this server holds {len(self._collections)} collections, the most "
                    "XMR_MAX_COLLECTIONS allows; delete one first"
                )
            # never unloads a model that serves: no slot, no create (503, retry)
            async with self.models.use(spec, "background") as model:
                generation = Generation("", spec, model.encoder.model_id, model.encoder.dim)
            folder = CollectionFolder(self.data_dir, name)
            state = new_state(name, generation)
            if await run_in(self.pools.store, self.catalog.create, state) != state:
                raise CollectionExistsError(name)  # made on another replica just now
            try:
                collection = await self._open(folder, state)
            except BaseException as e:  # nothing half-made comes back as a collection later
                await run_in(self.pools.store, self.catalog.delete, name)
                await run_in(self.pools.store, folder.delete)
                if out_of_descriptors(e):
                    raise ResourcesExhaustedError(
                        "the server has too many open files to open another collection now"
                    ) from e
                raise
            self._collections[name] = collection
            logger.info("collection %s created with %s", name, generation.model_id)
            return collection

    async def reindex(self, name: str, spec: ModelSpec) -> str:
        """Start re-embedding collection `name` with `spec`, a model clients may name."""
        collection = self.get(name)
        check_reindexable(collection)
        self.policy.check(spec)
        return await self.reindexer.start(collection, spec)

    def check_deletable(self, name: str) -> None:
        if name == DEFAULT_COLLECTION:
            raise CollectionStateError("the default collection cannot be deleted")
        self.get(name)

    async def delete(self, name: str) -> None:
        """Remove a collection with everything in it; its re-embedding is stopped first."""
        self.check_deletable(name)
        async with self._changing:
            collection = self.get(name)
            if collection.state.reindex_job is not None:
                await self.reindexer.cancel(collection.state.reindex_job)
            await collection.close_when_unused()
            await run_in(self.pools.store, self.catalog.delete, name)
            await run_in(self.pools.store, collection.destroy)
            await run_in(self.pools.store, collection.folder.delete)
            del self._collections[name]
            logger.info("collection %s deleted", name)
            await self._remove_unused_exports(_model_ids(collection.state))

    async def _remove_unused_exports(self, model_ids: set[str]) -> None:
        """Runtime exports of models no collection uses any more are deleted (a gigabyte each
        for a large model): they would otherwise stay in the cache for good."""
        in_use = set().union(*(_model_ids(c.state) for c in self._collections.values()))
        for model_id in sorted(model_ids - in_use):
            removed = await run_in(self.pools.store, remove_exports, model_id, self.export_root)
            if removed:
                logger.info("removed the runtime exports of %s, used by no collection", model_id)

    def close(self) -> None:
        for collection in self._collections.values():
            collection.close()
        self.catalog.close()


def out_of_descriptors(error: BaseException) -> bool:
    """Whether `error`, or one it was raised from, is the process running out of descriptors
    (SQLite says only "unable to open database file")."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.EMFILE, errno.ENFILE):
            return True
        if "unable to open database file" in str(seen) and _descriptors_nearly_used():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _descriptors_nearly_used() -> bool:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        return len(os.listdir("/proc/self/fd")) >= soft - 16
    except OSError:
        return False


def _model_ids(state: CollectionState) -> set[str]:
    generations = [state.current] + ([state.next] if state.next is not None else [])
    return {generation.model_id for generation in generations}
