"""Batch jobs: many items indexed in the background, in batches, resumable after a restart.

Each batch holds its collection's generation from reading to storing, so a switch of model
waits for it and never splits it; a batch is recorded as done only once its items are durably
stored. With a Ray cluster (XMR_RAY_ADDRESS) a batch's images are decoded and encoded there,
sent as soon as the batch is read (while the one before is stored); the vectors come back and
are stored here, through the same write path as every other write. A batch of vectors made
elsewhere (`POST .../vectors`) reads them from its staging and stores them as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.jobs.context import JobContext, JobStopped
from app.jobs.import_files import read_import_file
from app.jobs.ledger import JobItem
from app.jobs.pipeline import run_pipeline
from app.jobs.staging import Staging
from app.services.collections import Collection, Pin
from app.services.errors import ImportPathError, InvalidInputError
from app.services.items import ImageInput, TextInput, image_items
from app.services.registry import CollectionRegistry
from app.services.threads import run_in
from index import NewItem
from models.photos import Photo
from models.ray_embedder import RayImageEmbedder, RemoteModel

# rows of a vectors job stored in one write: nothing to encode, so a write is the unit of cost
VECTOR_BATCH = 2048


@dataclass(frozen=True)
class Sources:
    """Where a batch's images are read from: its staged uploads or the import root."""

    import_root: Path | None
    max_file_bytes: int
    staging: Staging

    def read(self, item: JobItem) -> bytes:
        """An item's image bytes; any problem with the file is that item's error, not the job's."""
        source = item.source or ""
        if item.staged:
            try:
                return self.staging.read(source, item.offset, item.length)
            except OSError as e:
                raise InvalidInputError(f"the staged upload is lost ({e.strerror or e})") from e
        if self.import_root is None:
            raise ImportPathError("image_path items need XMR_IMPORT_ROOT to be set on the server")
        if os.path.isabs(source):  # recorded by an older release as a resolved absolute path
            source = os.path.relpath(source, self.import_root.resolve())
        return read_import_file(self.import_root, source, self.max_file_bytes)


@dataclass
class LoadedBatch:
    """A batch's images read and prepared ahead of encoding (or sent to the Ray cluster: the
    embedding under way), and the items that failed."""

    pin: Pin
    images: list[tuple[ImageInput, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    remote: asyncio.Task[tuple[np.ndarray, list[str], list[Photo | None]]] | None = None
    precomputed: list[tuple[int, NewItem]] = field(default_factory=list)  # (position, item)


@dataclass
class EncodedBatch:
    """A batch's items with their vectors, ready to store, and the positions done or failed."""

    pin: Pin
    items: list[NewItem] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # of `items`, in the job
    done: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class BatchStages:
    """The pipeline stages of one batch job."""

    def __init__(
        self,
        job: JobContext,
        collection: Collection,
        sources: Sources,
        batch_size: int,
        remote: RayImageEmbedder | None = None,
    ) -> None:
        self._job = job
        self._collection = collection
        self._sources = sources
        self._batch_size = batch_size
        self._remote = remote
        self._dedup: float | None = job.params.get("dedup_threshold")

    async def first(self) -> list[JobItem]:
        return await run_in(
            self._job.pool, self._job.ledger.pending, self._job.job_id, self._batch_size
        )

    async def next_after(self, batch: Sequence[JobItem]) -> list[JobItem]:
        job = self._job
        last = batch[-1].position
        return await run_in(job.pool, job.ledger.pending, job.job_id, self._batch_size, last)

    async def load(self, batch: Sequence[JobItem]) -> LoadedBatch:
        """Read, decode and prepare the images of a batch; failures are kept by position."""
        pin = await self._collection.pin(write=True, model=True)
        try:
            loaded = LoadedBatch(pin)
            sources: list[JobItem] = []
            blobs: list[bytes] = []
            for item in (i for i in batch if i.kind == "image"):
                try:
                    blobs.append(await run_in(self._job.pool, self._sources.read, item))
                    sources.append(item)
                except InvalidInputError as e:
                    loaded.failed[item.position] = str(e)
            if self._remote is not None and pin.model is not None:
                prepared: list[Any] = [None] * len(blobs)
                if blobs:
                    spec = pin.model.spec
                    model = RemoteModel(spec.model, spec.pretrained, spec.precision)
                    loaded.remote = asyncio.ensure_future(self._remote.embed(model, blobs))
            else:
                prepared = await pin.items.encoding.prepare_many(blobs, describe=True)
        except BaseException:
            await pin.release()
            raise
        loaded.images = [
            (ImageInput(data, item.item_id, item.metadata), result)
            for item, data, result in zip(sources, blobs, prepared, strict=True)
        ]
        loaded.positions = [item.position for item in sources]
        return loaded

    async def encode(self, batch: Sequence[JobItem], loaded: LoadedBatch) -> EncodedBatch:
        items = loaded.pin.items
        encoded = EncodedBatch(loaded.pin, failed=dict(loaded.failed))
        texts = [item for item in batch if item.kind == "text"]
        if texts:
            encoded.items += await items.encode_texts(
                [TextInput(text=t.text or "", id=t.item_id, metadata=t.metadata) for t in texts],
                background=True,
            )
            encoded.positions += [t.position for t in texts]
        if loaded.remote is not None:
            images, decode_failures = await self._embedded_remotely(loaded)
        elif loaded.images:
            images, decode_failures = await items.encode_images(
                [inp for inp, _ in loaded.images],
                [prepared for _, prepared in loaded.images],
                background=True,
            )
        else:
            images, decode_failures = [], {}
        if loaded.images:
            encoded.items += images
            encoded.positions += [
                p for slot, p in enumerate(loaded.positions) if slot not in decode_failures
            ]
            for slot, reason in decode_failures.items():
                encoded.failed[loaded.positions[slot]] = reason
        encoded.done = [item.position for item in batch if item.position not in encoded.failed]
        return encoded

    @staticmethod
    async def _embedded_remotely(loaded: LoadedBatch) -> tuple[list[NewItem], dict[int, str]]:
        """The Ray cluster's vectors and photos as items, and the images it could not decode
        by slot."""
        assert loaded.remote is not None
        vectors, errors, photos = await loaded.remote
        inputs = [inp for inp, _ in loaded.images]
        good = [slot for slot, error in enumerate(errors) if not error]
        items = image_items(
            [inputs[slot] for slot in good],
            vectors[good],
            [photo for slot in good if (photo := photos[slot]) is not None],
            loaded.pin.items.keep_gps,
        )
        return items, {slot: error for slot, error in enumerate(errors) if error}

    async def store(self, encoded: EncodedBatch) -> None:
        duplicates: dict[int, tuple[str, float]] = {}
        try:
            if self._dedup is None:
                await encoded.pin.items.store_items(encoded.items)
            else:
                _, found = await encoded.pin.items.store_distinct(encoded.items, self._dedup)
                duplicates = {
                    encoded.positions[d.position]: (d.existing_id, d.score) for d in found
                }
        finally:
            await encoded.pin.release()
        job = self._job
        await run_in(
            job.pool,
            job.ledger.record_results,
            job.job_id,
            encoded.done,
            encoded.failed,
            duplicates,
        )

    async def discard(self, loaded: LoadedBatch) -> None:
        if loaded.remote is not None:
            loaded.remote.cancel()
            with contextlib.suppress(BaseException):
                await loaded.remote
        await loaded.pin.release()


class VectorStages(BatchStages):
    """The stages of a batch of vectors made elsewhere: read from staging, nothing to encode."""

    async def load(self, batch: Sequence[JobItem]) -> LoadedBatch:
        pin = await self._collection.pin(write=True)
        loaded = LoadedBatch(pin)
        refusal = self._refusal(pin)
        if refusal is not None:
            loaded.failed = {item.position: refusal for item in batch}
            return loaded
        try:
            vectors = await run_in(self._job.pool, self._vectors, batch, pin.generation.dim)
        except BaseException:
            await pin.release()
            raise
        for item, vector in zip(batch, vectors, strict=True):
            if isinstance(vector, str):
                loaded.failed[item.position] = vector
            else:
                loaded.precomputed.append((item.position, _precomputed_item(item, vector)))
        return loaded

    def _refusal(self, pin: Pin) -> str | None:
        """Why the collection cannot take these vectors now, or None."""
        made_for = self._job.params.get("precomputed_for")
        if pin.generation.model_id != made_for:
            return (
                f"the vectors were sent for {made_for}, but the collection's model is now "
                f"{pin.generation.model_id}: embed them with it and send them again"
            )
        if pin.collection.state.next is not None:
            return (
                "the collection is being re-embedded with another model: vectors of the old "
                "one cannot join it; send them again when it is done"
            )
        return None

    def _vectors(self, batch: Sequence[JobItem], dim: int) -> list[np.ndarray | str]:
        """Each item's staged vector, or why it cannot be read; the rows of one request lie
        side by side in its staging file, so a batch is one read."""
        first, last = batch[0], batch[-1]
        span = (last.offset or 0) + (last.length or 0) - (first.offset or 0)
        contiguous = all(item.source == first.source for item in batch) and span == len(batch) * (
            dim * 4
        )
        try:
            if contiguous:
                block = self._sources.read(replace(first, length=span))
                rows = np.frombuffer(block, dtype=np.float32).reshape(len(batch), dim)
                return list(rows)
            return [self._vector(item, dim) for item in batch]
        except InvalidInputError as e:
            return [str(e)] * len(batch)

    def _vector(self, item: JobItem, dim: int) -> np.ndarray:
        vector = np.frombuffer(self._sources.read(item), dtype=np.float32)
        if vector.shape != (dim,):
            raise InvalidInputError(f"the staged vector has {vector.size} values, not {dim}")
        return vector

    async def encode(self, batch: Sequence[JobItem], loaded: LoadedBatch) -> EncodedBatch:
        encoded = EncodedBatch(loaded.pin, failed=dict(loaded.failed))
        encoded.positions = [position for position, _ in loaded.precomputed]
        encoded.items = [item for _, item in loaded.precomputed]
        encoded.done = [item.position for item in batch if item.position not in encoded.failed]
        return encoded


def _precomputed_item(item: JobItem, vector: np.ndarray) -> NewItem:
    """An item as sent: a text keeps its text; an image has no bytes (xmr never saw it)."""
    if item.kind == "text":
        return NewItem.text_item(item.item_id, vector, item.text or "", item.metadata)
    return NewItem(item.item_id, "image", vector, item.metadata)


class BatchJob:
    """The handler of `batch` jobs."""

    def __init__(
        self,
        collections: CollectionRegistry,
        sources: Sources,
        batch_size: int,
        remote: RayImageEmbedder | None = None,
    ) -> None:
        self._collections = collections
        self._sources = sources
        self._batch_size = batch_size
        self._remote = remote

    async def run(self, job: JobContext) -> None:
        collection = self._collections.get(job.view.collection)
        if job.params.get("precomputed_for") is not None:
            stages: BatchStages = VectorStages(job, collection, self._sources, VECTOR_BATCH)
        else:
            stages = BatchStages(job, collection, self._sources, self._batch_size, self._remote)
        await job.set_status("running")
        left = await run_pipeline(await stages.first(), stages, job.should_stop)
        if left or job.cancelled():  # a cancel during the last batch keeps its status
            raise JobStopped
        await job.set_status("done")
