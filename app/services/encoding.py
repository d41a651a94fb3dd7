"""Run the encoder off the event loop: one inference thread, decoding in a separate pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from PIL import Image

from models import Encoder, decode_image

T = TypeVar("T")


class EncodingService:
    """Async facade over an Encoder: model calls are serialized on one thread."""

    def __init__(self, encoder: Encoder, max_image_pixels: int, decode_workers: int = 2) -> None:
        self.encoder = encoder
        self._max_image_pixels = max_image_pixels
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmr-infer")
        self._decode = ThreadPoolExecutor(
            max_workers=decode_workers, thread_name_prefix="xmr-decode"
        )

    @property
    def dim(self) -> int:
        return self.encoder.dim

    async def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return await self._run(self._inference, self.encoder.encode_texts, list(texts))

    async def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return await self._run(self._inference, self.encoder.encode_images, list(images))

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
