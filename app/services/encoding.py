"""Run the encoder off the event loop: one inference thread, decoding in a separate pool.

An image upload is decoded and preprocessed (the encoder's `prepare_image`) in the decode pool;
batches of prepared images and of texts are gathered by one batcher per modality.

Whether decoding overlaps inference depends on where the model runs. Beside a GPU it does: the
CPU decodes the next batch while the GPU encodes this one. On the CPU the model's OpenMP threads
already use every core and meet at a barrier after each operation, so one decode thread taking
a core stalls them all: ViT-B-32 image batches ran about 3x slower beside a single decode
thread, for decoding that costs a millisecond or two of one core per image (BENCHMARKS.md).
There the two take turns instead: decoding is queued on the inference thread like a model
call, which fans it out over the decode pool (all cores) and waits.

Large images (over LARGE_IMAGE_PIXELS) are the exception: decoding a 49-megapixel PNG takes
seconds, and a text query must not wait behind it. They are decoded one at a time, in a thread
of their own at a lower scheduling priority, beside the model rather than in turn with it;
afterwards the freed memory is handed back to the system.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.services.batcher import Batcher, OnBatch
from app.services.query_cache import QueryCacheStats, QueryVectorCache, token_key
from app.services.threads import (
    LARGE_DECODE_NICENESS,
    Pools,
    inference_pool,
    run_in,
    single_core_pool,
)
from models import Encoder, ImageDecodeError, decode_image
from models.images import DEFAULT_MAX_DECODED_BYTES, read_header
from models.memory import release_free_memory
from models.photos import Photo, describe, draft_for_photo

DRAFT_FACTOR = 2  # large images are decoded or reduced to no less than twice the model input
LARGE_IMAGE_PIXELS = 12_000_000  # a PNG this size decodes in about 0.2 s on one core
INLINE_TOKENIZE_CHARS = 1_000  # texts of a request tokenized on the event loop up to this


@dataclass(frozen=True)
class EncodingLimits:
    """How much one encoding service takes on: image sizes, batch and queue bounds, decoding."""

    max_image_pixels: int
    max_batch: int = 64
    max_queue: int = 1024
    decode_workers: int = 2
    jpeg_draft: bool = True  # decode large JPEGs at a reduced size (DRAFT_FACTOR)
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    overlap_decode: bool | None = None  # decode while the model runs; default: off the CPU
    query_cache_bytes: int = 0  # vectors of recent query texts kept (app.services.query_cache)


@dataclass(frozen=True)
class PreparedPhoto:
    """An image to index: what the encoder takes, and its facts and thumbnail, made from
    the same decoding."""

    prepared: Any
    photo: Photo


class EncodingService:
    """Async facade over an Encoder: one inference thread fed by a batcher per modality."""

    def __init__(
        self,
        encoder: Encoder,
        limits: EncodingLimits,
        on_batch: OnBatch | None = None,
        inference: ThreadPoolExecutor | None = None,
        pools: Pools | None = None,
    ) -> None:
        """`inference` is the thread that loaded the model, if any (see app.services.threads).

        `pools`: the process's shared pools (then `inference` is theirs and `close` leaves
        them running); without them the service makes and owns its own.
        """
        self.encoder = encoder
        overlap_decode = limits.overlap_decode
        self.overlap_decode = (
            overlap_decode if overlap_decode is not None else encoder.device != "cpu"
        )
        self._max_image_pixels = limits.max_image_pixels
        self._max_decoded_bytes = limits.max_decoded_bytes
        self._draft_size = encoder.image_size * DRAFT_FACTOR if limits.jpeg_draft else None
        # an image to index is decoded large enough for its thumbnail too
        self._photo_draft_size = draft_for_photo(self._draft_size)
        decode_workers, max_batch, max_queue = (
            limits.decode_workers,
            limits.max_batch,
            limits.max_queue,
        )
        self._owns_pools = pools is None
        if pools is not None:
            self._inference, self._decode = pools.inference, pools.decode
            self._large_decode = pools.large_decode
        else:
            self._inference = inference or inference_pool()
            self._decode = single_core_pool(decode_workers, "xmr-decode")
            self._large_decode = single_core_pool(1, "xmr-decode-large", LARGE_DECODE_NICENESS)
        self.texts: Batcher[Any] = Batcher(
            "text", encoder.encode_tokens, self._inference, max_batch, max_queue, on_batch
        )
        self.images: Batcher[Any] = Batcher(
            "image", encoder.encode_prepared, self._inference, max_batch, max_queue, on_batch
        )
        # one per model, shared by the collections' lanes (in_lane copies the reference)
        self._query_cache = QueryVectorCache(limits.query_cache_bytes)

    lane = ""  # whose requests these are, among the users of one model (a collection)

    def in_lane(self, lane: str) -> EncodingService:
        """This service for one of the model's users: the same batchers and threads, its
        requests queued in a lane of their own, served in turn with the other lanes."""
        view = copy.copy(self)
        view.lane = lane
        view._owns_pools = False
        return view

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def queue_depths(self) -> dict[str, int]:
        """Items waiting per modality."""
        return {"text": self.texts.queue_depth, "image": self.images.queue_depth}

    def start(self) -> None:
        self.texts.start()
        self.images.start()

    async def stop(self) -> None:
        await self.texts.stop()
        await self.images.stop()

    async def encode_texts(self, texts: Sequence[str], background: bool = False) -> np.ndarray:
        """Vectors for `texts`; `background` work waits for room instead of being refused."""
        rows = await self._tokenize(texts)
        return await self.texts.submit(rows, wait_for_room=background, lane=self.lane)

    async def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for query texts: those asked recently come from the query cache, the rest
        are encoded (as one request) and kept there."""
        if not self._query_cache.enabled:
            return await self.encode_texts(texts)
        rows = await self._tokenize(texts)
        keys = [token_key(np.asarray(row)) for row in rows]
        found = [self._query_cache.get(key) for key in keys]
        missing = [position for position, vector in enumerate(found) if vector is None]
        if missing:
            vectors = await self.texts.submit([rows[p] for p in missing], lane=self.lane)
            for position, vector in zip(missing, vectors, strict=True):
                self._query_cache.put(keys[position], vector)
                found[position] = vector
        return np.stack([vector for vector in found if vector is not None])

    def query_cache_stats(self) -> QueryCacheStats:
        return self._query_cache.stats()

    async def encode_texts_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Vectors for `texts`, and how many tokens they took (padding left out: CLIP's
        tokenizers pad with id 0)."""
        rows = await self._tokenize(texts)
        tokens = sum(int(np.count_nonzero(np.asarray(row))) for row in rows)
        return await self.texts.submit(rows, lane=self.lane), tokens

    async def _tokenize(self, texts: Sequence[str]) -> list[Any]:
        """Token rows, each text cut first to what reaches the context: short ones right here
        (tens of microseconds, less than a hop to another thread, which on the CPU also takes
        a core from the model's threads), longer ones in the decode pool."""
        if sum(len(text) for text in texts) <= INLINE_TOKENIZE_CHARS:
            return list(self.encoder.tokenize(list(texts)))
        return list(await run_in(self._decode, self.encoder.tokenize, list(texts)))

    async def encode_prepared(
        self, prepared: Sequence[Any], background: bool = False
    ) -> np.ndarray:
        """Vectors for images that went through `prepare`."""
        return await self.images.submit(list(prepared), wait_for_room=background, lane=self.lane)

    async def prepare(self, data: bytes) -> Any:
        """Decode one upload and run the encoder's CPU stage on it, in the decode pool.

        Raises ImageDecodeError (or a subclass) for bytes that are not an acceptable image.
        """
        return await self._prepare(data, self._is_large(data), self._decode_and_prepare)

    async def _prepare(self, data: bytes, large: bool, work: Callable[[bytes], Any]) -> Any:
        if large:
            return await run_in(self._large_decode, self._decode_large, data, work)
        pool = self._decode if self.overlap_decode else self._inference
        return await run_in(pool, work, data)

    async def prepare_many(self, blobs: Sequence[bytes], describe: bool = False) -> list[Any]:
        """Prepare several uploads concurrently; a failure is returned in its slot, not raised.

        With `describe` (images to index), each slot is a PreparedPhoto.
        """
        work = self._decode_prepare_describe if describe else self._decode_and_prepare
        large = {position for position, data in enumerate(blobs) if self._is_large(data)}
        if self.overlap_decode:
            results = await asyncio.gather(
                *(self._prepare(b, p in large, work) for p, b in enumerate(blobs)),
                return_exceptions=True,
            )
        elif not large:
            results = await run_in(self._inference, self._prepare_in_turn, blobs, work)
        else:
            results = await self._prepare_large_aside(blobs, large, work)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        return list(results)

    async def prepare_all(
        self, blobs: Sequence[bytes], name: str = "files", describe: bool = False
    ) -> list[Any]:
        """Prepare every upload, or fail on the first that is not an image, naming `name[i]`."""
        prepared = await self.prepare_many(blobs, describe)
        for position, result in enumerate(prepared):
            if isinstance(result, ImageDecodeError):
                raise type(result)(f"{name}[{position}]: {result}") from result
            if isinstance(result, Exception):
                raise result
        return prepared

    async def _prepare_large_aside(
        self, blobs: Sequence[bytes], large: set[int], work: Callable[[bytes], Any]
    ) -> list[Any]:
        """On the CPU: small images in turn with the model, large ones beside it meanwhile."""
        small = [position for position in range(len(blobs)) if position not in large]
        in_turn = run_in(self._inference, self._prepare_in_turn, [blobs[p] for p in small], work)
        aside = [
            run_in(self._large_decode, self._decode_large, blobs[p], work) for p in sorted(large)
        ]
        gathered = await asyncio.gather(in_turn, *aside, return_exceptions=True)
        if isinstance(gathered[0], BaseException):
            raise gathered[0]
        slots: dict[int, Any] = dict(zip(small, gathered[0], strict=True))
        slots.update(zip(sorted(large), gathered[1:], strict=True))
        return [slots[position] for position in range(len(blobs))]

    def _is_large(self, data: bytes) -> bool:
        try:
            return read_header(data).pixels > LARGE_IMAGE_PIXELS
        except ImageDecodeError:
            return False  # refused where it is decoded, with the same error

    def _decode_large(self, data: bytes, work: Callable[[bytes], Any]) -> Any:
        try:
            return work(data)
        finally:
            release_free_memory()

    def _prepare_in_turn(self, blobs: Sequence[bytes], work: Callable[[bytes], Any]) -> list[Any]:
        """On the inference thread: decode `blobs` over the whole decode pool, model idle."""
        futures = [self._decode.submit(work, data) for data in blobs]
        results: list[Any] = []
        for future in futures:
            try:
                results.append(future.result())
            except Exception as error:
                results.append(error)
        return results

    def _decode_and_prepare(self, data: bytes) -> Any:
        image = decode_image(
            data, self._max_image_pixels, self._draft_size, self._max_decoded_bytes
        )
        return self.encoder.prepare_image(image)

    def _decode_prepare_describe(self, data: bytes) -> PreparedPhoto:
        image = decode_image(
            data, self._max_image_pixels, self._photo_draft_size, self._max_decoded_bytes
        )
        return PreparedPhoto(self.encoder.prepare_image(image), describe(data, image))

    def close(self) -> None:
        if not self._owns_pools:
            return
        self._inference.shutdown(wait=True, cancel_futures=True)
        self._decode.shutdown(wait=True, cancel_futures=True)
        self._large_decode.shutdown(wait=True, cancel_futures=True)
