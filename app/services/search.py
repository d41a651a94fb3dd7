"""Cross-modal search: encode the query, search the target index, return records with scores."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.services.encoding import EncodingService
from app.services.errors import InvalidInputError
from index import Hit, ItemStore, Kind


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    took_ms: float


class SearchService:
    def __init__(self, store: ItemStore, encoding: EncodingService, max_k: int) -> None:
        self.store = store
        self.encoding = encoding
        self.max_k = max_k

    async def by_text(self, query: str, k: int, target: Kind) -> SearchResult:
        started = time.perf_counter()
        self._check_k(k)
        vectors = await self.encoding.encode_texts([query])
        return await self._search(vectors, k, target, started)

    async def by_image(self, data: bytes, k: int, target: Kind) -> SearchResult:
        started = time.perf_counter()
        self._check_k(k)
        image = await self.encoding.decode(data)
        vectors = await self.encoding.encode_images([image])
        return await self._search(vectors, k, target, started)

    async def _search(
        self, vectors: np.ndarray, k: int, target: Kind, started: float
    ) -> SearchResult:
        hits = await run_in_threadpool(self.store.search, target, vectors, k)
        return SearchResult(hits[0], (time.perf_counter() - started) * 1000.0)

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.max_k:
            raise InvalidInputError(f"k must be between 1 and {self.max_k}, got {k}")
