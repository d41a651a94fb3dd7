"""The encoding service: on the CPU decoding and the model take turns; beside a GPU they overlap."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from app.services.encoding import EncodingLimits, EncodingService
from models import ImageDecodeError, OpenClipEncoder

Span = tuple[str, float, float]
T = TypeVar("T")


class RecordingEncoder:
    """The real tiny encoder, each call slowed a little and its time span recorded."""

    def __init__(self, inner: OpenClipEncoder, device: str) -> None:
        self._inner = inner
        self.model_id, self.dim, self.device = inner.model_id, inner.dim, device
        self.precision, self.image_size = inner.precision, inner.image_size
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def prepare_image(self, image: Image.Image) -> Any:
        return self._timed("decode", 0.01, self._inner.prepare_image, image)

    def encode_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        return self._timed("model", 0.03, self._inner.encode_prepared, prepared)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._inner.encode_texts(texts)

    def tokenize(self, texts: Sequence[str]) -> Any:
        return self._inner.tokenize(texts)

    def encode_tokens(self, rows: Sequence[Any]) -> np.ndarray:
        return self._inner.encode_tokens(rows)

    def _timed(self, what: str, delay_s: float, call: Callable[[Any], T], argument: Any) -> T:
        started = time.perf_counter()
        time.sleep(delay_s)
        result = call(argument)
        with self._lock:
            self.spans.append((what, started, time.perf_counter()))
        return result


def _overlapping(spans: list[Span], first: str, second: str) -> int:
    """Pairs of spans, one `first` and one `second`, that ran at the same time."""
    return sum(
        1
        for i, (a, a_start, a_end) in enumerate(spans)
        for b, b_start, b_end in spans[i + 1 :]
        if sorted((a, b)) == sorted((first, second)) and a_start < b_end and b_start < a_end
    )


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _run_jobs(encoder: RecordingEncoder, jobs: int = 4, images: int = 6) -> None:
    """`jobs` concurrent tasks that each prepare `images` images and encode them."""

    async def main() -> None:
        service = EncodingService(encoder, EncodingLimits(max_image_pixels=10**7, max_batch=images))
        service.start()

        async def job(seed: int) -> None:
            prepared = await service.prepare_many([_jpeg(seed + i) for i in range(images)])
            vectors = await service.encode_prepared(prepared)
            assert vectors.shape == (images, encoder.dim)

        try:
            await asyncio.gather(*(job(100 * n) for n in range(jobs)))
        finally:
            await service.stop()
            service.close()

    asyncio.run(main())


def test_on_the_cpu_decoding_never_runs_beside_the_model(tiny_encoder: OpenClipEncoder) -> None:
    encoder = RecordingEncoder(tiny_encoder, device="cpu")
    _run_jobs(encoder)
    assert sum(1 for what, _, _ in encoder.spans if what == "model") >= 4
    assert _overlapping(encoder.spans, "decode", "model") == 0
    assert _overlapping(encoder.spans, "decode", "decode") > 0  # still over the whole pool


def test_beside_a_gpu_decoding_overlaps_the_model(tiny_encoder: OpenClipEncoder) -> None:
    encoder = RecordingEncoder(tiny_encoder, device="cuda:0")  # the model 'runs elsewhere'
    _run_jobs(encoder)
    assert _overlapping(encoder.spans, "decode", "model") > 0


def test_decoding_in_turn_keeps_order_and_reports_bad_images_in_place(
    tiny_encoder: OpenClipEncoder,
) -> None:
    async def main() -> list[Any]:
        service = EncodingService(tiny_encoder, EncodingLimits(max_image_pixels=10**7))
        assert not service.overlap_decode
        try:
            return await service.prepare_many([_jpeg(1), b"not an image", _jpeg(2)])
        finally:
            service.close()

    first, bad, last = asyncio.run(main())
    assert isinstance(bad, ImageDecodeError)
    alone = [tiny_encoder.prepare_image(Image.open(io.BytesIO(_jpeg(s)))) for s in (1, 2)]
    assert first.equal(alone[0]) and last.equal(alone[1])
