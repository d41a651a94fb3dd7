"""Cross-modal search: encode the query, search the target index, return records with scores."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

from app.services.duplicates import DuplicatesPage, DuplicatesQuery, find_duplicates
from app.services.encoding import EncodingService
from app.services.errors import InvalidInputError
from app.services.threads import run_in
from app.services.timing import add_index_seconds, timed
from index import Hit, HybridScope, Kind, MetadataFilter
from index.fusion import Fusion
from index.keywords import KeywordQuery

if TYPE_CHECKING:
    from index.store import ItemStore

Mode = Literal["vector", "keyword", "hybrid"]
T = TypeVar("T")

MAX_OFFSET = 10_000
ZERO_QUERY_NORM = 1e-6  # a weighted sum shorter than this has no direction to search in
# queries x (k + offset): bounds the arrays and the records that one request loads
MAX_HITS_PER_REQUEST = 100_000


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    took_ms: float


@dataclass(frozen=True)
class MultiSearchResult:
    hits: list[list[Hit]]  # one ranked list per query, in the order of the queries
    took_ms: float


@dataclass(frozen=True)
class WeightedPart:
    """One part of a composite query: a text, image bytes or a stored item's id, and a weight."""

    weight: float
    text: str | None = None
    image: bytes | None = None
    item: str | None = None


@dataclass(frozen=True)
class SearchScope:
    """What to return: `k` hits of `target` after skipping `offset`, matching `where`."""

    k: int
    target: Kind
    where: MetadataFilter | None = None
    offset: int = 0
    min_score: float | None = None  # a page is cut where the ranking falls below it
    mode: Mode = "vector"
    alpha: float = 0.5  # hybrid: the vector side's weight
    fusion: Fusion = "relative"

    def hybrid(self) -> HybridScope:
        return HybridScope(self.k, self.offset, self.where, self.alpha, self.fusion)


class SearchService:
    def __init__(
        self,
        store: ItemStore,
        encoding: EncodingService | None,
        max_k: int,
        store_pool: Executor,
        max_response_bytes: int = 64 * 2**20,
        duplicates_sync_limit: int = 20_000,
        background_pool: Executor | None = None,
    ) -> None:
        self.store = store
        self._background_pool = background_pool or store_pool  # long scans (duplicates)
        self._encoding = encoding  # None: searches by stored vectors only (similar_to)
        self.max_k = max_k
        self.max_response_bytes = max_response_bytes
        self._store_pool = store_pool  # FAISS kept to one core per thread (app.services.threads)
        self.duplicates_sync_limit = duplicates_sync_limit

    @property
    def encoding(self) -> EncodingService:
        if self._encoding is None:
            raise RuntimeError("this SearchService was made without a model")
        return self._encoding

    async def by_text(self, query: str, scope: SearchScope) -> SearchResult:
        """A text query in `scope.mode`: by its vector, by its words (BM25), or both fused."""
        started = time.perf_counter()
        self._check(scope)
        words = KeywordQuery(query)
        if scope.mode == "keyword":
            return SearchResult(await self._keyword(words, scope), _elapsed_ms(started))
        vectors = await self.encoding.encode_queries([query])
        if scope.mode == "hybrid":
            return SearchResult(await self._hybrid(vectors, words, scope), _elapsed_ms(started))
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
        self._check(scope, len(queries))
        vectors = await self.encoding.encode_queries(queries)
        return MultiSearchResult(await self._search(vectors, scope), _elapsed_ms(started))

    async def by_images(self, blobs: Sequence[bytes], scope: SearchScope) -> MultiSearchResult:
        """Several image queries; an undecodable one fails the request, naming its position."""
        started = time.perf_counter()
        self._check(scope, len(blobs))
        prepared = await self.encoding.prepare_all(blobs)
        vectors = await self.encoding.encode_prepared(prepared)
        return MultiSearchResult(await self._search(vectors, scope), _elapsed_ms(started))

    async def similar_to(self, item_id: str, scope: SearchScope) -> SearchResult:
        """Items like a stored one, by its stored vector (no model call); itself left out."""
        started = time.perf_counter()
        self._check(scope)
        record, vector = await run_in(self._store_pool, self.store.stored_vector, item_id)
        wider = replace(scope, k=scope.offset + scope.k + 1, offset=0)
        ranked = [h for h in (await self._search(vector, wider))[0] if h.record.id != record.id]
        return SearchResult(ranked[scope.offset : scope.offset + scope.k], _elapsed_ms(started))

    async def composite(
        self, parts: Sequence[WeightedPart], scope: SearchScope, exclude_items: bool = True
    ) -> SearchResult:
        """Cosine to the L2-normalized weighted sum of the parts' unit vectors.

        A text or an image is embedded as /v1/embed/* embeds it; an item stands for its stored
        vector. Parts that cancel out are refused. The items named are left out if asked.
        """
        started = time.perf_counter()
        self._check(scope)
        words = _keyword_query(parts)
        if scope.mode != "vector" and words is None:
            raise InvalidInputError(
                f"a {scope.mode} search needs a text part with a positive weight: "
                "its words are what the keyword index looks for"
            )
        excluded = {p.item for p in parts if p.item is not None} if exclude_items else set()
        wider = replace(scope, k=scope.offset + scope.k + len(excluded), offset=0)
        if scope.mode == "keyword" and words is not None:
            hits = await self._keyword(words, wider)
        else:
            query = await self._weighted_sum(parts)
            if scope.mode == "hybrid" and words is not None:
                hits = await self._hybrid(query, words, wider)
            else:
                hits = (await self._search(query, wider))[0]
        ranked = [h for h in hits if h.record.id not in excluded]
        return SearchResult(ranked[scope.offset : scope.offset + scope.k], _elapsed_ms(started))

    async def duplicates(self, query: DuplicatesQuery) -> DuplicatesPage | None:
        """Near-duplicate groups now, or None when there are too many items to answer inline
        (XMR_DUPLICATES_SYNC_LIMIT): those run as a job."""
        counts = await run_in(self._store_pool, self.store.counts)
        if counts[query.target] > self.duplicates_sync_limit:
            return None
        # a scan of the whole index: the background thread, never a thread searches need
        return await find_duplicates(self.store, self._background_pool, query)

    async def _weighted_sum(self, parts: Sequence[WeightedPart]) -> np.ndarray:
        vectors: list[np.ndarray] = []
        texts = [p.text for p in parts if p.text is not None]
        images = [p.image for p in parts if p.image is not None]
        by_text = iter(await self.encoding.encode_queries(texts)) if texts else iter(())
        by_image: Iterator[np.ndarray] = iter(())
        if images:
            prepared = await self.encoding.prepare_all(images, "query images")
            by_image = iter(await self.encoding.encode_prepared(prepared))
        for part in parts:
            if part.text is not None:
                vectors.append(next(by_text))
            elif part.image is not None:
                vectors.append(next(by_image))
            else:
                _, stored = await run_in(
                    self._store_pool, self.store.stored_vector, part.item or ""
                )
                vectors.append(stored[0])
        weights = np.array([p.weight for p in parts], dtype=np.float64)
        total = (weights[:, None] * np.stack(vectors).astype(np.float64)).sum(axis=0)
        norm = float(np.linalg.norm(total))
        if norm < ZERO_QUERY_NORM:
            raise InvalidInputError(
                "the query's weighted parts cancel out (their sum is the zero vector): "
                "change a weight or a part"
            )
        return (total / norm).astype(np.float32).reshape(1, -1)

    async def _search(self, vectors: np.ndarray, scope: SearchScope) -> list[list[Hit]]:
        hits = await self._in_index(
            self.store.searches.vector,
            scope.target,
            vectors,
            scope.k,
            scope.where,
            scope.offset,
        )
        rows = [_above_cutoff(row, scope) for row in hits]
        self._check_response_size(rows)
        return rows

    async def _keyword(self, words: KeywordQuery, scope: SearchScope) -> list[Hit]:
        hits = await self._in_index(
            self.store.searches.keyword,
            scope.target,
            words,
            scope.k,
            scope.where,
            scope.offset,
        )
        self._check_response_size([hits])
        return _above_cutoff(hits, scope)

    async def _hybrid(
        self, vector: np.ndarray, words: KeywordQuery, scope: SearchScope
    ) -> list[Hit]:
        hits = await self._in_index(
            self.store.searches.hybrid,
            scope.target,
            vector,
            words,
            scope.hybrid(),
        )
        self._check_response_size([hits])
        return _above_cutoff(hits, scope)

    async def _in_index(self, search: Callable[..., T], *args: object) -> T:
        """`search(*args)` in the store pool, its seconds added to the request's index time."""
        result, seconds = await run_in(self._store_pool, timed, search, *args)
        add_index_seconds(seconds)
        return result

    def _check(self, scope: SearchScope, queries: int = 1) -> None:
        if not 1 <= scope.k <= self.max_k:
            raise InvalidInputError(f"k must be between 1 and {self.max_k}, got {scope.k}")
        if scope.mode == "vector" and scope.min_score is not None and scope.min_score > 1.0:
            raise InvalidInputError(
                "min_score must be at most 1 in vector mode: scores are cosines in [-1, 1]"
            )
        if not 0 <= scope.offset <= MAX_OFFSET:
            raise InvalidInputError(f"offset must be between 0 and {MAX_OFFSET}")
        if queries * (scope.k + scope.offset) > MAX_HITS_PER_REQUEST:
            raise InvalidInputError(
                f"queries x (k + offset) must be at most {MAX_HITS_PER_REQUEST}: "
                "ask for fewer results or send fewer queries per request"
            )

    def _check_response_size(self, hits: list[list[Hit]]) -> None:
        """Refuse to build a response larger than the budget (stored metadata and texts add up)."""
        size = sum(HIT_OVERHEAD_BYTES + hit.record.payload_bytes for row in hits for hit in row)
        if size > self.max_response_bytes:
            raise InvalidInputError(
                f"the results would take about {size / 2**20:.0f} MB, more than the "
                f"{self.max_response_bytes / 2**20:.0f} MB a response may hold "
                "(XMR_MAX_RESPONSE_MB): ask for fewer results (k) or fewer queries"
            )


def _above_cutoff(hits: list[Hit], scope: SearchScope) -> list[Hit]:
    """The hits scoring at least `min_score`, if one is set."""
    if scope.min_score is None:
        return hits
    return [hit for hit in hits if hit.score >= scope.min_score]


def _keyword_query(parts: Sequence[WeightedPart]) -> KeywordQuery | None:
    """The words of the positive text parts; those of negative ones leave their items out."""
    wanted = [p.text for p in parts if p.text is not None and p.weight > 0]
    if not wanted:
        return None
    unwanted = [p.text for p in parts if p.text is not None and p.weight < 0]
    return KeywordQuery(" ".join(wanted), " ".join(unwanted))


HIT_OVERHEAD_BYTES = 200  # id, kind, score, content_url and JSON punctuation of one hit


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
