"""Dynamic batching: concurrent encode requests share one model call.

Requests queue up while the model is busy; when it is free, the batcher takes what is waiting
(up to `max_batch` items) as one batch. A lone request is never held back, so latency at
concurrency 1 is that of a direct call, while under load the batches grow by themselves.

Requests wait in lanes (one per collection using the model) and batches are filled from the
lanes in turn, a request larger than `max_batch` a piece at a time: 4,000 texts posted to one
collection once held the model for 9 s while another collection's searches waited; now they
wait for at most one batch. The queue is bounded over all lanes: past `max_queue` waiting
items a request is refused at once, unless its lane has nothing waiting.
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
from app.services.timing import add_model_seconds, timed

In = TypeVar("In")


@dataclass(frozen=True)
class BatchTimes:
    """One model call of a batcher: how many items, the seconds it took seen from the event
    loop (the hand-off to the inference thread and back included) and on that thread alone."""

    modality: str
    items: int
    seconds: float
    model_seconds: float


OnBatch = Callable[[BatchTimes], None]


@dataclass
class _Request(Generic[In]):
    items: Sequence[In]
    future: asyncio.Future[np.ndarray] = field(repr=False)
    taken: int = 0  # items handed to batches so far
    parts: list[np.ndarray] = field(default_factory=list)  # their rows, in order
    model_seconds: float = 0.0  # of the batches that carried some of its items

    @property
    def left(self) -> int:
        return len(self.items) - self.taken


@dataclass
class _Slice(Generic[In]):
    """Items `start:stop` of one request, in one batch."""

    request: _Request[In]
    start: int
    stop: int

    @property
    def items(self) -> Sequence[In]:
        return self.request.items[self.start : self.stop]


class Batcher(Generic[In]):
    def __init__(
        self,
        name: str,
        encode: Callable[[list[In]], np.ndarray],
        executor: Executor,
        max_batch: int,
        max_queue: int,
        on_batch: OnBatch | None = None,
    ) -> None:
        self.name = name
        self._encode = encode
        self._executor = executor
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._lanes: dict[str, deque[_Request[In]]] = {}
        self._turns: deque[str] = deque()  # lanes with requests waiting, the next to serve first
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
        for lane in self._lanes.values():
            for request in lane:
                if not request.future.done():
                    request.future.set_exception(OverloadedError("the service is shutting down"))
        self._lanes.clear()
        self._turns.clear()
        self._queued_items = 0

    async def submit(
        self, items: Sequence[In], wait_for_room: bool = False, lane: str = ""
    ) -> np.ndarray:
        """Encode `items` in some batches; refuse (or, for background work, wait) when full.

        A lane with nothing waiting is always let in, so one lane's large request cannot shut
        the others out: the bound is `max_queue` items, plus one request per lane past it.
        """
        while self._queued_items + len(items) > self._max_queue and self._lanes.get(lane):
            if not wait_for_room:
                raise OverloadedError(
                    f"the {self.name} encoder queue is full ({self._queued_items} waiting); "
                    "retry shortly"
                )
            await asyncio.sleep(0.05)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        waiting = self._lanes.setdefault(lane, deque())
        if not waiting:
            self._turns.append(lane)
        request = _Request(items, future)
        waiting.append(request)
        self._queued_items += len(items)
        self._wakeup.set()
        try:
            return await future
        finally:
            add_model_seconds(request.model_seconds)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._turns:
                batch = self._take_batch()
                started = loop.time()
                model_seconds = await self._run(batch)
                if self._on_batch is not None and batch:
                    size = sum(s.stop - s.start for s in batch)
                    seconds = loop.time() - started
                    self._on_batch(BatchTimes(self.name, size, seconds, model_seconds))

    def _take_batch(self) -> list[_Slice[In]]:
        """Up to `max_batch` items: the lanes waiting share it, a piece of each one's first
        request in turn."""
        batch: list[_Slice[In]] = []
        size = 0
        share = max(1, self._max_batch // max(1, len(self._turns)))
        while self._turns and size < self._max_batch:
            lane = self._turns.popleft()
            waiting = self._lanes[lane]
            request = waiting[0]
            if request.future.done():  # the caller went away: drop what is left of it
                self._queued_items -= request.left
                request.taken = len(request.items)
            else:
                count = min(self._max_batch - size, request.left, share)
                batch.append(_Slice(request, request.taken, request.taken + count))
                request.taken += count
                self._queued_items -= count
                size += count
            if request.left == 0:
                waiting.popleft()
            if waiting:
                self._turns.append(lane)
        return batch

    async def _run(self, batch: list[_Slice[In]]) -> float:
        """Encode `batch` and hand each request its rows; the seconds the model calls took on
        the inference thread (those that failed not counted)."""
        if not batch:
            return 0.0
        items = [item for piece in batch for item in piece.items]
        try:
            vectors, model_seconds = await run_in(self._executor, timed, self._encode, items)
        except Exception as error:
            if len(batch) == 1:
                self._fail(batch[0].request, error)
                return 0.0
            # one bad request must not fail its neighbours
            return sum([await self._run([piece]) for piece in batch])
        start = 0
        for piece in batch:
            count = piece.stop - piece.start
            piece.request.model_seconds += model_seconds
            self._deliver(piece, vectors[start : start + count])
            start += count
        return model_seconds

    def _deliver(self, piece: _Slice[In], rows: np.ndarray) -> None:
        request = piece.request
        if request.future.done():
            return
        request.parts.append(rows)
        if piece.stop == len(request.items):
            parts = request.parts
            request.future.set_result(parts[0] if len(parts) == 1 else np.concatenate(parts))

    def _fail(self, request: _Request[In], error: Exception) -> None:
        """A request whose piece failed fails whole; what is left of it is not encoded."""
        if not request.future.done():
            request.future.set_exception(error)
