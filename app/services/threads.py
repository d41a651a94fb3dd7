"""Which threads may use several cores.

PyTorch's OpenMP runtime (libgomp) lets idle worker threads spin between parallel regions only
while it manages no more threads than there are cores; past that it puts them to sleep after
every region. A text query is hundreds of tiny parallel regions, so a second thread pool of
torch (or FAISS) workers anywhere in the process doubles its latency (6 ms to 12 ms for
ViT-B-32 on 2 cores, BENCHMARKS.md). Hence: the inference thread loads and runs the model with
all cores; every other thread that touches torch or FAISS is kept to one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from models import use_threads
from models.threads import available_cores

T = TypeVar("T")
logger = logging.getLogger(__name__)


def _inference_thread_setup(threads: int) -> None:
    use_threads(threads)


def _single_core_thread_setup(niceness: int = 0) -> None:
    from index.vectors import use_search_threads  # FAISS loads with the pools, not on import

    use_threads(1)
    use_search_threads(1)
    if niceness:
        try:  # Linux: a thread's own nice value, below the model's threads when cores are short
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except OSError as e:
            logger.debug("cannot lower the priority of %s: %s", threading.current_thread(), e)


def inference_pool(threads: int | None = None) -> ThreadPoolExecutor:
    """The one thread that runs the model, with `threads` cores (default: all)."""
    return ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix="xmr-infer",
        initializer=_inference_thread_setup,
        initargs=(threads or available_cores(),),
    )


def single_core_pool(workers: int, name: str, niceness: int = 0) -> ThreadPoolExecutor:
    """Threads for decoding, preprocessing and index work, one core each (nice: lower priority)."""
    return ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix=name,
        initializer=_single_core_thread_setup,
        initargs=(niceness,),
    )


async def run_in(pool: Executor, fn: Callable[..., T], *args: object) -> T:
    """Await `fn(*args)` run in `pool`."""
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


LARGE_DECODE_NICENESS = 10  # below the model's threads when both want a core


@dataclass(frozen=True)
class Pools:
    """The process's named thread pools; every blocking call leaves the event loop via `run_in`.

    inference: the one thread that loads and runs every model (all cores).
    decode: image decoding and preprocessing. large_decode: one image too large to wait for.
    store: records, FAISS searches, job bookkeeping and other file work (one core each).
    background: one thread, at a lower priority, for long scans of a whole index (a
    duplicates job): searches keep the store threads.
    load: one thread, one core, at a lower priority, that loads, hashes, exports and checks
    models: seconds to minutes of work that must never hold up the model already serving.
    """

    inference: ThreadPoolExecutor
    decode: ThreadPoolExecutor
    large_decode: ThreadPoolExecutor
    store: ThreadPoolExecutor
    background: ThreadPoolExecutor
    load: ThreadPoolExecutor

    @classmethod
    def create(cls, decode_workers: int, store_workers: int | None = None) -> Pools:
        return cls(
            inference=inference_pool(),
            decode=single_core_pool(decode_workers, "xmr-decode"),
            large_decode=single_core_pool(1, "xmr-decode-large", LARGE_DECODE_NICENESS),
            store=single_core_pool(store_workers or decode_workers, "xmr-store"),
            background=single_core_pool(1, "xmr-background", LARGE_DECODE_NICENESS),
            load=single_core_pool(1, "xmr-load", LARGE_DECODE_NICENESS),
        )

    def shutdown(self) -> None:
        for pool in (self.inference, self.decode, self.large_decode, self.store, self.background):
            pool.shutdown(wait=True, cancel_futures=True)
        self.load.shutdown(wait=False, cancel_futures=True)  # a load under way is abandoned
