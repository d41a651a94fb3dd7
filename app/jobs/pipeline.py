"""The overlap of load, encode and store that batch jobs and re-embeddings share.

While batch n is encoded, batch n+1 is read and decoded and batch n-1 is written: reading is
file I/O and decoding runs in the decode pool, and a write's fsyncs are I/O waits the model
need not sit through. Batches are encoded and stored in order, one store at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
Encoded = TypeVar("Encoded")


class Stages(Protocol, Generic[Item, Loaded, Encoded]):
    """The steps of one kind of work over batches of `Item`."""

    async def next_after(self, batch: Sequence[Item]) -> Sequence[Item]:
        """The batch that follows `batch` (empty at the end)."""
        ...

    async def load(self, batch: Sequence[Item]) -> Loaded:
        """Read and prepare a batch (ahead of its turn)."""
        ...

    async def encode(self, batch: Sequence[Item], loaded: Loaded) -> Encoded: ...

    async def store(self, encoded: Encoded) -> None:
        """Write an encoded batch and record that it is written."""
        ...

    async def discard(self, loaded: Loaded) -> None:
        """Let go of what a loaded batch holds when it will not be encoded."""
        ...


async def run_pipeline(
    first: Sequence[Item],
    stages: Stages[Item, Loaded, Encoded],
    should_stop: Callable[[], bool] = lambda: False,
) -> Sequence[Item]:
    """Work through the batches from `first` on; the batch not started when it stopped
    (empty when every batch was stored). A store under way always completes."""
    batch = first
    loading = asyncio.ensure_future(stages.load(batch))
    storing: asyncio.Future[None] | None = None
    try:
        while batch:
            if should_stop():
                break
            loaded = await loading
            following = await stages.next_after(batch)
            loading = asyncio.ensure_future(stages.load(following))
            try:
                encoded = await stages.encode(batch, loaded)
            except BaseException:
                await stages.discard(loaded)
                raise
            if storing is not None:
                await storing
            storing = asyncio.ensure_future(stages.store(encoded))
            batch = following
        if storing is not None:
            await storing
    finally:
        await _drop(loading, stages)
        if storing is not None and not storing.done():
            with contextlib.suppress(Exception):
                await storing  # a write under way completes and is recorded
    return batch


async def _drop(loading: asyncio.Future[Loaded], stages: Stages[Item, Loaded, Encoded]) -> None:
    """Stop a batch being loaded ahead and let go of what it holds."""
    loading.cancel()
    try:
        loaded = await loading
    except (asyncio.CancelledError, Exception):
        return
    await stages.discard(loaded)
