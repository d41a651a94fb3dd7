"""Run the encoder off the event loop: one inference thread, decoding in a separate pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from PIL import Image

from app.services.batcher import Batcher
from models import Encoder, decode_image

T = TypeVar("T")


class EncodingService:
    """Async facade over an Encoder: one inference thread fed by a batcher per modality."""

    def __init__(
        self,
        encoder: Encoder,
        max_image_pixels: int,
        max_batch: int = 64,
        max_queue: int = 1024,
        decode_workers: int = 2,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self._max_image_pixels = max_image_pixels
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmr-infer")
        self._decode = ThreadPoolExecutor(
            max_workers=decode_workers, thread_name_prefix="xmr-decode"
        )
        self.texts: Batcher[str] = Batcher(
            "text", encoder.encode_texts, self._inference, max_batch, max_queue, on_batch
        )
        self.images: Batcher[Image.Image] = Batcher(
            "image", encoder.encode_images, self._inference, max_batch, max_queue, on_batch
        )

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def start(self) -> None:
        self.texts.start()
        self.images.start()

    async def stop(self) -> None:
        await self.texts.stop()
        await self.images.stop()

    async def encode_texts(self, texts: Sequence[str], background: bool = False) -> np.ndarray:
        """Vectors for `texts`; `background` work waits for room instead of being refused."""
        return await self.texts.submit(list(texts), wait_for_room=background)

    async def encode_images(
        self, images: Sequence[Image.Image], background: bool = False
    ) -> np.ndarray:
        return await self.images.submit(list(images), wait_for_room=background)

    async def decode(self, data: bytes) -> Image.Image:
        """Decode one upload to RGB in the decode pool (raises ImageDecodeError)."""
        return await self._run(self._decode, decode_image, data, self._max_image_pixels)

    async def decode_many(self, blobs: Sequence[bytes]) -> list[Image.Image | Exception]:
        """Decode several uploads concurrently; a failure is returned in its slot, not raised."""
        results = await asyncio.gather(*(self.decode(b) for b in blobs), return_exceptions=True)
        out: list[Image.Image | Exception] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            out.append(result)
        return out

    def close(self) -> None:
        self._inference.shutdown(wait=True, cancel_futures=True)
        self._decode.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
