"""Searching one store: by vector (filtered or not), by keyword (BM25), and both fused."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from index.backends import VectorIndex
from index.filters import MetadataFilter
from index.fusion import fuse
from index.keywords import KeywordQuery
from index.records import KeywordIndex, RecordStore, VectorLog
from index.refine import refine_depth, rescored
from index.serving import ServingIndexes
from index.types import Hit, HybridScope, Kind, Record, check_vectors, no_hits

# A filter matching at most this many vectors of an approximate index is searched by brute force
# over them (20,000 x 512-d: about 40 MB read from SQLite and a 10 ms product per query batch):
# the probed lists or graph neighbourhood of an approximate index may hold none of them.
EXACT_FILTER_LIMIT = 20_000
# A filter matching more than EXACT_FILTER_LIMIT items is applied after the search first: the
# index is asked without it for POST_FILTER_FACTOR times the candidates it would be asked for
# unfiltered (at least POST_FILTER_MIN), and the records say which of those match. Only when
# fewer than k match for some query (a filter that excludes the query's neighbourhood) are all
# matching labels listed and the search restricted to them: that listing was a broad filter's
# whole cost at 10M items (2.8 s for 6M labels).
POST_FILTER_FACTOR = 4
POST_FILTER_MIN = 1000
POST_FILTER_MAX = 16_384  # Milvus's cap on top-k
# When the post-filter fails, the filter's matches are rarer near the query than in the whole
# index, so the search is widened by this much more than their overall share says.
NEIGHBOURHOOD_WIDEN = 4.0
# How many of each side's best a hybrid search fuses: the normalization of relative fusion is
# over these, so a page's scores do not depend on which page it is (up to this depth).
HYBRID_DEPTH = 1000
# How much further than its page a search reaches for items deleted while it ran
MAX_REACH = 1000


class StoreSearch:
    """Ranked hits from the serving indexes and the records behind them."""

    def __init__(
        self,
        serving: ServingIndexes,
        records: RecordStore,
        log: VectorLog,
        keywords: KeywordIndex,
        dim: int,
        catch_up: Callable[[], None] = lambda: None,
    ) -> None:
        """`catch_up` brings the indexes up to the log before each search (index/follow.py)."""
        self.catch_up = catch_up
        self._serving = serving
        self._records = records
        self._log = log
        self._keywords = keywords
        self._dim = dim

    def vector(
        self,
        kind: Kind,
        queries: np.ndarray,
        k: int,
        where: MetadataFilter | None = None,
        offset: int = 0,
    ) -> list[list[Hit]]:
        """Hits `offset` to `offset + k` of `kind` for each query, best first (cosine scores).

        A filter restricts the candidates inside the vector search, so a filtered page is as
        full as the number of matching items allows. An item deleted between the index search
        and the read of its record (its record commits first) is passed over and the search
        reaches further, so a page is never short for it.
        """
        self.catch_up()
        reach = 0  # candidates beyond the page, for items deleted while this search ran
        while True:
            scores, labels = self.ranked(kind, queries, offset + k + reach, where)
            wanted = sorted({int(x) for x in labels.ravel() if x >= 0})
            records = self._records.get_by_labels(wanted)
            gone = len(wanted) - len(records)
            if gone == 0 or reach >= MAX_REACH:
                break
            reach = min(MAX_REACH, reach + gone)
        pages = []
        for row_scores, row_labels in zip(scores, labels, strict=True):
            found = [
                Hit(records[int(label)], float(score))
                for score, label in zip(row_scores, row_labels, strict=True)
                if int(label) in records
            ]
            pages.append(found[offset : offset + k])
        return pages

    def ranked(
        self, kind: Kind, queries: np.ndarray, k: int, where: MetadataFilter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) of the best `k` per query; label -1 where there are fewer.

        A product-quantized index is asked for more candidates, which are then ordered by
        their exact cosine (index/refine.py)."""
        index = self._serving[kind]
        depth = refine_depth(index.spec, k)
        if where is None:
            scores, labels = index.search(queries, depth)
        elif index.exact:
            allowed = self._records.labels_matching(kind, where)
            if allowed.size == 0:
                return no_hits(len(queries), k)
            return index.search(queries, k, allowed)
        else:
            some = self._records.labels_matching(kind, where, limit=EXACT_FILTER_LIMIT + 1)
            if some.size == 0:
                return no_hits(len(queries), k)
            if some.size <= EXACT_FILTER_LIMIT:
                return self._search_exactly(queries, k, some)
            kept = self._post_filtered(kind, index, queries, k, depth, where)
            if kept is None:
                allowed = self._records.labels_matching(kind, where)
                kept = self._search_widened(index, queries, depth, allowed)
            scores, labels = kept
        if depth == k:
            return scores, labels
        stored_labels, stored = self._log.vectors_of(np.unique(labels[labels >= 0]), self._dim)
        return rescored(check_vectors(queries, self._dim), labels, stored_labels, stored, k)

    def keyword(
        self,
        kind: Kind,
        query: KeywordQuery,
        k: int,
        where: MetadataFilter | None = None,
        offset: int = 0,
    ) -> list[Hit]:
        """Items of `kind` holding the query's words, by BM25 (best first); no words, no hits."""
        ranking = self._keywords.search(kind, query, k, where, offset)
        records = self._records.get_by_labels([label for label, _ in ranking])
        return [Hit(records[label], score) for label, score in ranking if label in records]

    def hybrid(
        self, kind: Kind, vector: np.ndarray, query: KeywordQuery, scope: HybridScope
    ) -> list[Hit]:
        """The vector ranking and the keyword ranking of `kind`, fused (index.fusion).

        Each side contributes its best `max(HYBRID_DEPTH, offset + k)` items matching the
        filter; every hit carries its cosine and its BM25 (None when it has none of the words).
        """
        self.catch_up()
        depth = max(HYBRID_DEPTH, scope.offset + scope.k)
        scores, labels = self.ranked(kind, vector.reshape(1, -1), depth, scope.where)
        by_vector = [
            (int(x), float(s)) for s, x in zip(scores[0], labels[0], strict=True) if x >= 0
        ]
        by_keyword = self._keywords.search(kind, query, depth, scope.where)
        fused = fuse(by_vector, by_keyword, scope.alpha, scope.fusion)
        page, records = self._present_page(fused, scope.offset, scope.k)
        wanted = [label for label, _ in page]
        cosines = dict(by_vector)
        missing = [label for label in wanted if label not in cosines]
        if missing:
            found, stored = self._log.vectors_of(np.array(missing), self._dim)
            cosines.update(zip(found.tolist(), (stored @ vector.reshape(-1)).tolist(), strict=True))
        bm25 = dict(by_keyword)
        unscored = [label for label in wanted if label not in bm25]
        if unscored:
            bm25.update(self._keywords.scores(query, unscored))
        return [
            Hit(records[label], score, cosines.get(label), bm25.get(label)) for label, score in page
        ]

    def _present_page(
        self, ranking: list[tuple[int, float]], offset: int, k: int
    ) -> tuple[list[tuple[int, float]], dict[int, Record]]:
        """Entries `offset` to `offset + k` of `ranking` among those whose records are there
        (one deleted while the search ran is passed over), and those records."""
        reach = 0
        while True:
            window = ranking[: offset + k + reach]
            records = self._records.get_by_labels([label for label, _ in window])
            gone = len(window) - len(records)
            if gone == 0 or reach >= MAX_REACH or len(window) == len(ranking):
                break
            reach = min(MAX_REACH, reach + gone)
        present = [(label, score) for label, score in window if label in records]
        return present[offset : offset + k], records

    def _post_filtered(
        self,
        kind: Kind,
        index: VectorIndex,
        queries: np.ndarray,
        k: int,
        depth: int,
        where: MetadataFilter,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The best `depth` candidates matching `where` among an unfiltered search's, in the
        index's order (-1 pads); None when fewer than `k` of them match for some query."""
        wanted = min(len(index), POST_FILTER_MAX, max(POST_FILTER_MIN, POST_FILTER_FACTOR * depth))
        if wanted < k:
            return None
        scores, labels = index.search(queries, wanted)
        candidates = np.unique(labels[labels >= 0])
        keep = np.isin(labels, self._records.matching_among(kind, where, candidates))
        if (keep.sum(axis=1) < k).any():
            return None
        first = np.argsort(~keep, axis=1, kind="stable")[:, :depth]  # kept ones, in rank order
        kept_scores, kept_labels = no_hits(len(queries), depth)
        width = first.shape[1]
        kept_scores[:, :width] = np.take_along_axis(np.where(keep, scores, -np.inf), first, 1)
        kept_labels[:, :width] = np.take_along_axis(np.where(keep, labels, -1), first, 1)
        return kept_scores, kept_labels

    def _search_widened(
        self, index: VectorIndex, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k among `allowed` in an approximate index: complete whenever k of them exist.
        Exact indexes filter inside their search, and a selective filter is searched by brute
        force over its vectors (`ranked`); a broad one that the post-filter could not serve
        widens the search by how much of the index it excludes, and searches everything if that
        still leaves slots empty.
        """
        if allowed.size == 0:  # all deleted since they were counted
            return no_hits(len(queries), k)
        widen = max(1.0, len(index) / allowed.size) * NEIGHBOURHOOD_WIDEN
        scores, labels = index.search(queries, k, allowed, widen=widen)
        expected = min(k, allowed.size)
        if ((labels >= 0).sum(axis=1) < expected).any():
            scores, labels = index.search(queries, k, allowed, widen=math.inf)
        return scores, labels

    def _search_exactly(
        self, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        xq = check_vectors(queries, self._dim)
        labels, xb = self._log.vectors_of(allowed, self._dim)
        scores, found = no_hits(len(xq), k)
        if len(labels) == 0:
            return scores, found
        similarity = xq @ xb.T
        top = min(k, len(labels))
        best = np.argpartition(-similarity, top - 1, axis=1)[:, :top]
        order = np.argsort(-np.take_along_axis(similarity, best, axis=1), axis=1, kind="stable")
        best = np.take_along_axis(best, order, axis=1)
        scores[:, :top] = np.take_along_axis(similarity, best, axis=1)
        found[:, :top] = labels[best]
        return scores, found
