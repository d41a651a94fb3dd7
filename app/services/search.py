"""Cross-modal search: encode the query, search the target index, return records with scores."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from app.services.encoding import EncodingService
from app.services.errors import InvalidInputError
from app.services.threads import run_in
from index import Hit, ItemStore, Kind, MetadataFilter
from models import ImageDecodeError

MAX_OFFSET = 10_000


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    took_ms: float


@dataclass(frozen=True)
class MultiSearchResult:
    hits: list[list[Hit]]  # one ranked list per query, in the order of the queries
    took_ms: float


@dataclass(frozen=True)
class SearchScope:
    """What to return: `k` hits of `target` after skipping `offset`, matching `where`."""

    k: int
    target: Kind
    where: MetadataFilter | None = None
    offset: int = 0


class SearchService:
    def __init__(
        self, store: ItemStore, encoding: EncodingService, max_k: int, store_pool: Executor
    ) -> None:
        self.store = store
        self.encoding = encoding
        self.max_k = max_k
        self._store_pool = store_pool  # FAISS kept to one core per thread (app.services.threads)

    async def by_text(self, query: str, scope: SearchScope) -> SearchResult:
        started = time.perf_counter()
        self._check(scope)
        vectors = await self.encoding.encode_texts([query])
        hits = await self._search(vectors, scope)
        return SearchResult(hits[0], _elapsed_ms(started))

    async def by_image(self, data: bytes, scope: SearchScope) -> SearchResult:
        started = time.perf_counter()
        self._check(scope)
        prepared = await self.encoding.prepare(data)
        vectors = await self.encoding.encode_prepared([prepared])
        hits = await self._search(vectors, scope)
        return SearchResult(hits[0], _elapsed_ms(started))

    async def by_texts(self, queries: Sequence[str], scope: SearchScope) -> MultiSearchResult:
        """Several text queries: encoded as one batch and searched in one FAISS call."""
        started = time.perf_counter()
        self._check(scope)
        vectors = await self.encoding.encode_texts(queries)
        return MultiSearchResult(await self._search(vectors, scope), _elapsed_ms(started))

    async def by_images(self, blobs: Sequence[bytes], scope: SearchScope) -> MultiSearchResult:
        """Several image queries; an undecodable one fails the request, naming its position."""
        started = time.perf_counter()
        self._check(scope)
        prepared = await self.encoding.prepare_many(blobs)
        for position, result in enumerate(prepared):
            if isinstance(result, ImageDecodeError):
                raise type(result)(f"files[{position}]: {result}") from result
            if isinstance(result, Exception):
                raise result
        vectors = await self.encoding.encode_prepared(prepared)
        return MultiSearchResult(await self._search(vectors, scope), _elapsed_ms(started))

    async def _search(self, vectors: np.ndarray, scope: SearchScope) -> list[list[Hit]]:
        return await run_in(
            self._store_pool,
            self.store.search,
            scope.target,
            vectors,
            scope.k,
            scope.where,
            scope.offset,
        )

    def _check(self, scope: SearchScope) -> None:
        if not 1 <= scope.k <= self.max_k:
            raise InvalidInputError(f"k must be between 1 and {self.max_k}, got {scope.k}")
        if not 0 <= scope.offset <= MAX_OFFSET:
            raise InvalidInputError(f"offset must be between 0 and {MAX_OFFSET}")


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
