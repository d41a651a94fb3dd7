"""Dynamic batching: concurrent encode requests share one model call.

Requests queue up while the model is busy; when it is free, the batcher takes everything
waiting (up to `max_batch` items) as one batch. A lone request is never held back, so latency
at concurrency 1 is that of a direct call, while under load the batches grow by themselves.
The queue is bounded: past `max_queue` waiting items a request is refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from app.services.errors import OverloadedError
from app.services.threads import run_in

In = TypeVar("In")


@dataclass
class _Request(Generic[In]):
    items: Sequence[In]
    future: asyncio.Future[np.ndarray] = field(repr=False)


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    refused: int = 0
    last_batch_size: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class Batcher(Generic[In]):
    def __init__(
        self,
        name: str,
        encode: Callable[[list[In]], np.ndarray],
        executor: Executor,
        max_batch: int,
        max_queue: int,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.name = name
        self._encode = encode
        self._executor = executor
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._waiting: deque[_Request[In]] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return self._queued_items

    def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name=f"xmr-batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for request in self._waiting:
            if not request.future.done():
                request.future.set_exception(OverloadedError("the service is shutting down"))
        self._waiting.clear()

    async def submit(self, items: Sequence[In], wait_for_room: bool = False) -> np.ndarray:
        """Encode `items` in some batch; refuse (or, for background work, wait) when full."""
        while self._queued_items + len(items) > self._max_queue and self._queued_items > 0:
            if not wait_for_room:
                raise OverloadedError(
                    f"the {self.name} encoder queue is full ({self._queued_items} waiting); "
                    "retry shortly"
                )
            await asyncio.sleep(0.05)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Request(items, future))
        self._queued_items += len(items)
        self._wakeup.set()
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._waiting:
                batch = self._take_batch()
                started = loop.time()
                await self._run(batch, loop)
                if self._on_batch is not None:
                    size = sum(len(r.items) for r in batch)
                    self._on_batch(self.name, size, loop.time() - started)

    def _take_batch(self) -> list[_Request[In]]:
        batch: list[_Request[In]] = []
        size = 0
        while self._waiting:
            request = self._waiting[0]
            if batch and size + len(request.items) > self._max_batch:
                break
            self._waiting.popleft()
            self._queued_items -= len(request.items)
            if request.future.done():  # the caller went away
                continue
            batch.append(request)
            size += len(request.items)
        return batch

    async def _run(self, batch: list[_Request[In]], loop: asyncio.AbstractEventLoop) -> None:
        if not batch:
            return
        items = [item for request in batch for item in request.items]
        try:
            vectors = await run_in(self._executor, self._encode_chunked, items)
        except Exception as error:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(error)
                return
            for request in batch:  # one bad request must not fail its neighbours
                await self._run([request], loop)
            return
        start = 0
        for request in batch:
            rows = vectors[start : start + len(request.items)]
            start += len(request.items)
            if not request.future.done():
                request.future.set_result(rows)

    def _encode_chunked(self, items: list[In]) -> np.ndarray:
        chunks = [
            self._encode(items[i : i + self._max_batch])
            for i in range(0, len(items), self._max_batch)
        ]
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
