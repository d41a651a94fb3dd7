"""Dynamic batching: gathering, per-caller results, isolation of failures, bounded queue."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.services.batcher import Batcher, BatchTimes, OnBatch
from app.services.errors import OverloadedError
from app.services.timing import RequestTimes, request_times_var


class SlowModel:
    """Encodes text t to [len(t), call number]; takes `delay_s` per call; refuses 'boom'."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        if "boom" in texts:
            raise ValueError("boom")
        time.sleep(self.delay_s)
        with self._lock:
            self.calls.append(len(texts))
            call = len(self.calls)
        return np.array([[len(t), call] for t in texts], dtype=np.float32)


def run(  # type: ignore[no-untyped-def]
    coro_factory,
    model: SlowModel,
    max_batch: int = 64,
    max_queue: int = 1000,
    executor: ThreadPoolExecutor | None = None,
    on_batch: OnBatch | None = None,
):
    async def main():  # type: ignore[no-untyped-def]
        batcher: Batcher[str] = Batcher(
            "text", model, executor or ThreadPoolExecutor(1), max_batch, max_queue, on_batch
        )
        batcher.start()
        try:
            return await coro_factory(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_requests_share_model_calls_and_get_their_own_rows() -> None:
    model = SlowModel(0.05)

    async def scenario(batcher: Batcher[str]) -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.submit(["x" * (i + 1)]) for i in range(32)))

    results = run(scenario, model)
    assert [int(r[0, 0]) for r in results] == list(range(1, 33))
    assert sum(model.calls) == 32
    assert len(model.calls) <= 3  # the first alone, the rest gathered while it ran


def test_max_batch_caps_each_model_call() -> None:
    model = SlowModel(0.01)

    async def scenario(batcher: Batcher[str]) -> list[np.ndarray]:
        return await asyncio.gather(batcher.submit(["a"] * 10), batcher.submit(["b"] * 7))

    first, second = run(scenario, model, max_batch=4)
    assert first.shape == (10, 2) and second.shape == (7, 2)
    assert max(model.calls) <= 4


def test_a_lone_request_is_not_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """No gathering window: a request that finds the model idle is encoded at once, alone."""
    from app.services import batcher as batcher_module

    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(delay: float, *args: object) -> object:
        waits.append(delay)
        return await real_sleep(delay, *args)

    monkeypatch.setattr(batcher_module.asyncio, "sleep", recorded_sleep)
    model = SlowModel(0.0)

    async def scenario(batcher: Batcher[str]) -> None:
        await batcher.submit(["warm"])
        await batcher.submit(["solo"])

    run(scenario, model)
    assert model.calls == [1, 1]  # each alone, in its own call
    assert not [delay for delay in waits if delay > 0]  # and nothing waited for company


def test_one_failing_request_does_not_fail_its_neighbours() -> None:
    model = SlowModel(0.02)

    async def scenario(batcher: Batcher[str]) -> list[object]:
        blocker = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.005)
        rest = [batcher.submit(["ok-1"]), batcher.submit(["boom"]), batcher.submit(["ok-2"])]
        return [await blocker, *await asyncio.gather(*rest, return_exceptions=True)]

    _, ok1, boom, ok2 = run(scenario, model)
    assert isinstance(boom, ValueError)
    assert isinstance(ok1, np.ndarray) and isinstance(ok2, np.ndarray)


def test_each_model_call_reports_the_model_s_own_time_apart_from_the_hand_off() -> None:
    """The model's time is taken on the inference thread: a call that waited there behind other
    work reports that wait in its whole time only. A failed call counts no model time; its
    requests encoded again one by one count theirs."""
    model = SlowModel(0.05)
    inference = ThreadPoolExecutor(1)
    reports: list[BatchTimes] = []

    async def scenario(batcher: Batcher[str]) -> None:
        inference.submit(time.sleep, 0.2)  # other work holds the inference thread
        await batcher.submit(["first"])
        blocker = asyncio.ensure_future(batcher.submit(["second"]))
        await asyncio.sleep(0.005)
        rest = [batcher.submit(["ok-1"]), batcher.submit(["boom"]), batcher.submit(["ok-2"])]
        await blocker
        await asyncio.gather(*rest, return_exceptions=True)

    run(scenario, model, executor=inference, on_batch=reports.append)
    assert [(r.modality, r.items) for r in reports] == [("text", 1), ("text", 1), ("text", 3)]
    waited, alone, split = reports
    assert 0.05 <= waited.model_seconds < 0.15 and waited.seconds >= 0.2 + 0.05
    assert 0.05 <= alone.model_seconds <= alone.seconds
    assert 2 * 0.05 <= split.model_seconds < 3 * 0.05 and split.model_seconds <= split.seconds


def test_a_caller_s_model_time_is_that_of_every_batch_that_carried_its_items() -> None:
    model = SlowModel(0.03)

    async def timed(batcher: Batcher[str], items: list[str]) -> float:
        request_times_var.set(RequestTimes())  # each task has its own copy of the context
        await batcher.submit(items)
        taken = request_times_var.get()
        assert taken is not None and taken.index == 0
        return taken.model

    async def scenario(batcher: Batcher[str]) -> tuple[float, float, bool]:
        large = asyncio.ensure_future(timed(batcher, ["a"] * 5))
        await asyncio.sleep(0.005)
        small = asyncio.ensure_future(timed(batcher, ["b"]))
        untimed = batcher.submit(["c"])  # no RequestTimes in this context: nothing recorded
        await untimed
        return await large, await small, request_times_var.get() is None

    large, small, untimed = run(scenario, model, max_batch=2)
    # five items two at a time, the small request sharing one of the batches: 3 or 4 batches
    assert 3 * 0.03 <= large < 6 * 0.03
    assert 0.03 <= small < 3 * 0.03
    assert untimed


class GatedModel(SlowModel):
    """Holds every call until the test opens the gate, and says when a call has started."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().__call__(texts)


def test_full_queue_refuses_at_once_but_background_work_waits() -> None:
    """Refused while the model is still busy with earlier work: not after waiting its turn."""
    model = GatedModel()

    async def scenario(batcher: Batcher[str]) -> np.ndarray:
        running = asyncio.ensure_future(batcher.submit(["a"]))
        while not model.entered.is_set():
            await asyncio.sleep(0)
        queued = asyncio.ensure_future(batcher.submit(["b", "c"]))  # fills the queue of 2
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError, match="queue is full"):
            await batcher.submit(["d"])
        assert not running.done() and not queued.done()  # the model has not finished anything
        background = asyncio.ensure_future(batcher.submit(["e"], wait_for_room=True))
        await asyncio.sleep(0.05)
        assert not background.done()  # background work waits for room instead
        model.gate.set()
        await asyncio.gather(running, queued)
        return await background

    background = run(scenario, model, max_queue=2)
    assert background.shape == (1, 2)


def test_a_large_request_is_encoded_a_batch_at_a_time_in_turn_with_other_lanes() -> None:
    model = SlowModel(0.02)

    async def scenario(batcher: Batcher[str]) -> tuple[int, np.ndarray]:
        big = asyncio.ensure_future(batcher.submit(["b"] * 640, lane="bulk"))
        await asyncio.sleep(0.03)  # the first piece of the big request is being encoded
        small = await batcher.submit(["ss"], lane="default")
        calls_when_small_done = len(model.calls)
        return calls_when_small_done, np.concatenate([small, await big])

    calls_when_small_done, rows = run(scenario, model, max_batch=64)
    # the call under way when it came, then the next, shared: not behind the big request's ten
    assert calls_when_small_done <= 3
    assert max(model.calls) <= 64 and sum(model.calls) == 641
    assert rows[0, 0] == 2 and (rows[1:, 0] == 1).all() and len(rows) == 641
    assert list(rows[1:, 1]) == sorted(rows[1:, 1])  # the big request's rows in its order


def test_the_queue_bound_is_shared_by_the_lanes_but_lets_an_idle_lane_in() -> None:
    model = SlowModel(0.2)

    async def scenario(batcher: Batcher[str]) -> list[object]:
        first = asyncio.ensure_future(batcher.submit(["a"] * 30, lane="a"))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(["a"] * 15, lane="a"))
        await asyncio.sleep(0.01)
        results: list[object] = []
        for lane in ("a", "b"):
            try:
                results.append(await batcher.submit(["x"] * 30, lane=lane))
            except OverloadedError as e:
                results.append(e)
        await asyncio.gather(first, second)
        return results

    refused, admitted = run(scenario, model, max_batch=10, max_queue=40)
    assert isinstance(refused, OverloadedError)  # lane a is full: its third request waits out
    assert isinstance(admitted, np.ndarray) and len(admitted) == 30
