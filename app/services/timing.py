"""Where a request's time went: the model's and the index's shares, for its Server-Timing.

The observability middleware sets a RequestTimes for each HTTP request; every batcher call and
index search made in that request's context adds its seconds, timed on the thread that did the
work (the hand-offs to it and back are left out: they are the event loop's share).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class RequestTimes:
    """Seconds of the model (batches that carried the request's items) and of the index
    (vector and keyword searches with the reads of their records)."""

    model: float = 0.0
    index: float = 0.0


request_times_var: ContextVar[RequestTimes | None] = ContextVar("xmr_request_times", default=None)


def timed(work: Callable[..., T], *args: object) -> tuple[T, float]:
    """`work(*args)` and the seconds it took, timed on the thread that runs it."""
    started = time.perf_counter()
    result = work(*args)
    return result, time.perf_counter() - started


def add_model_seconds(seconds: float) -> None:
    times = request_times_var.get()
    if times is not None:
        times.model += seconds


def add_index_seconds(seconds: float) -> None:
    times = request_times_var.get()
    if times is not None:
        times.index += seconds
