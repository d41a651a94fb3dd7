"""The loaded models: one per distinct (model, weights, precision), shared by the collections.

At most `max_models` are loaded. A request takes a model for its duration (`acquire` ...
`release`); when another model is needed and none is free to load it, the least recently used
idle one is unloaded. If every loaded model is in use, the request is refused with
ModelsBusyError (503, retry) rather than made to wait for a model that may never be free.

Who may unload whom (`Purpose`): a search of a collection may unload any idle model. Background
work (a re-embedding's new model) and creating a collection may unload only idle models that
serve no collection: a model that serves searches is never unloaded to make room for them.

Every model runs on the one inference thread (see app.services.threads); each collection using
it has a lane of its own on the model's batchers. Once the service serves, loading (hashing
weights, exporting and checking a runtime) happens on the load thread, beside the models that
serve: a search of a loaded model never waits for a load. A load that fails for any reason is
a ModelLoadError (422), never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from app.services.classify import LabelVectors
from app.services.encoding import EncodingService
from app.services.errors import ModelsBusyError
from app.services.query_cache import QueryCacheStats
from app.services.threads import Pools, run_in
from index.layout import ModelSpec
from models import Encoder, ModelLoadError
from models.memory import release_free_memory
from models.tower_run import Tower, TowerRun

logger = logging.getLogger(__name__)

ModelLoader = Callable[[ModelSpec], Encoder]
Purpose = Literal["serve", "background"]
EncodingFactory = Callable[[Encoder], EncodingService]


@dataclass(frozen=True)
class RunningModel:
    """How a loaded model runs: its device, precision and runtime, and each tower's."""

    device: str
    precision: str
    runtime: str
    towers: dict[Tower, TowerRun]


@dataclass
class LoadedModel:
    """A model in memory, with one batcher pair that every collection using it shares, each
    collection's requests in a lane of their own (app.services.batcher), one bound on them all.
    """

    spec: ModelSpec
    encoder: Encoder
    encoding: EncodingService  # started once loaded; the collections' views share it
    encodings: dict[str, EncodingService] = field(default_factory=dict)  # by collection
    labels: LabelVectors = field(default_factory=LabelVectors)  # zero-shot label cache
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def encoding_for(self, collection: str) -> EncodingService:
        """The collection's lane on this model's batchers."""
        encoding = self.encodings.get(collection)
        if encoding is None:
            encoding = self.encodings[collection] = self.encoding.in_lane(collection)
        return encoding

    def queue_depths(self) -> dict[str, int]:
        """Items waiting per modality, over every collection's lane."""
        return self.encoding.queue_depths()

    def query_cache_stats(self) -> QueryCacheStats:
        """The model's query cache, shared by every collection's lane."""
        return self.encoding.query_cache_stats()

    async def stop(self) -> None:
        await self.encoding.stop()
        self.encoding.close()
        self.encodings.clear()


class ModelPool:
    """Loads, shares and unloads models; bounded by `max_models`."""

    def __init__(
        self,
        loader: ModelLoader,
        encoding_for: EncodingFactory,
        pools: Pools,
        max_models: int,
    ) -> None:
        self._loader = loader
        self._encoding_for = encoding_for
        self._pools = pools
        self.max_models = max_models
        self._loaded: dict[ModelSpec, LoadedModel] = {}
        self._loading = asyncio.Lock()  # one load at a time; loads are long and memory-heavy
        self.serving: Callable[[], set[ModelSpec]] = set  # the models collections serve with
        # before the service answers, loads have every core (the inference thread's): a first
        # export of ViT-B-32 takes 30 s there; once it serves, the load thread's one core
        self.started = False

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def peek(self, spec: ModelSpec) -> LoadedModel | None:
        """The model if it is loaded now, without taking it."""
        return self._loaded.get(spec)

    def running(self, spec: ModelSpec) -> RunningModel | None:
        """How the model runs, if it is loaded now."""
        loaded = self._loaded.get(spec)
        if loaded is None:
            return None
        encoder = loaded.encoder
        return RunningModel(encoder.device, encoder.precision, encoder.runtime, encoder.tower_runs)

    @asynccontextmanager
    async def use(self, spec: ModelSpec, purpose: Purpose = "serve") -> AsyncIterator[LoadedModel]:
        model = await self.acquire(spec, purpose)
        try:
            yield model
        finally:
            self.release(model)

    async def acquire(self, spec: ModelSpec, purpose: Purpose = "serve") -> LoadedModel:
        """The model for `spec`, loaded if needed; the caller must `release` it."""
        model = self._loaded.get(spec)
        if model is None:
            async with self._loading:
                model = self._loaded.get(spec)
                if model is None:
                    model = await self._load(spec, purpose)
        model.users += 1
        model.last_used = time.monotonic()
        return model

    def release(self, model: LoadedModel) -> None:
        model.users -= 1
        model.last_used = time.monotonic()

    async def _load(self, spec: ModelSpec, purpose: Purpose) -> LoadedModel:
        while len(self._loaded) >= self.max_models:
            idle = [m for m in self._loaded.values() if m.users == 0]
            if purpose != "serve":
                serving = self.serving()
                idle = [m for m in idle if m.spec not in serving]
            if not idle:
                raise ModelsBusyError(
                    f"all {self.max_models} loaded models are in use (XMR_MAX_MODELS); "
                    "retry shortly"
                )
            await self._unload(min(idle, key=lambda m: m.last_used))
        pool = self._pools.load if self.started else self._pools.inference
        encoder = await run_in(pool, self._load_or_explain, spec)
        encoding = self._encoding_for(encoder)
        encoding.start()
        model = LoadedModel(spec, encoder, encoding)
        self._loaded[spec] = model
        logger.info(
            "model %s is loaded (%d of at most %d)",
            encoder.model_id,
            len(self._loaded),
            self.max_models,
        )
        return model

    def _load_or_explain(self, spec: ModelSpec) -> Encoder:
        try:
            return self._loader(spec)
        except ModelLoadError:
            raise
        except Exception as e:  # the detail (paths, library internals) stays in the log
            logger.exception("loading %s %s failed", spec.model, spec.pretrained)
            raise ModelLoadError(
                f"the model {spec.model} could not be loaded ({type(e).__name__}); "
                "see the server log"
            ) from e

    async def _unload(self, model: LoadedModel) -> None:
        del self._loaded[model.spec]
        await model.stop()
        logger.info("unloaded model %s, idle the longest", model.encoder.model_id)
        await run_in(self._pools.inference, release_free_memory)

    async def close(self) -> None:
        for model in list(self._loaded.values()):
            await model.stop()
        self._loaded.clear()
