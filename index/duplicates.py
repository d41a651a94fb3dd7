"""Near-duplicates: pairs of items at least as similar as a threshold, grouped by connection.

Also the check a deduplicating write makes: which of the images offered are that similar to a
stored one or to one before them.

The pairs come from the vector index itself: each item's neighbours are searched with a k that
doubles until the k-th falls below the threshold, which equals a range search on an exact index
(Flat, Milvus Lite) and has the index's recall on an approximate one (IVF, HNSW).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from index.errors import TooManyDuplicatesError
from index.filters import MetadataFilter
from index.records import RecordStore, VectorLog
from index.search import StoreSearch
from index.serving import ServingIndexes
from index.types import Kind, NewItem, Record, check_vectors

# Bounds of one near-duplicate scan (a request or a job): without them a low threshold over a
# set of 2,000 texts took 47 s and 750 MB, and 20,000 would take an hour and ~75 GB.
MAX_NEIGHBOURS = 1024  # others one item may be a near-duplicate of
MAX_PAIRS = 1_000_000
MAX_GROUP = 10_000


@dataclass(frozen=True)
class Pair:
    """Two items (by label, `a` < `b`) and their cosine."""

    a: int
    b: int
    score: float


@dataclass(frozen=True)
class Group:
    """Items connected by pairs at or above the threshold; labels in write order."""

    labels: tuple[int, ...]
    min_score: float  # the weakest pair that joins the group


@dataclass(frozen=True)
class DuplicateGroup:
    """A group as the API shows it: the items' ids (oldest first) and its weakest pair."""

    ids: list[str]
    min_score: float


@dataclass(frozen=True)
class Duplicate:
    """An item not stored because a stored one (or one earlier in its batch) is that similar."""

    position: int  # in the write that offered it
    existing_id: str
    score: float


def group_pairs(pairs: Iterable[Pair]) -> list[Group]:
    """Connected components of the pairs, largest first (then by their first label)."""
    parent: dict[int, int] = {}

    def root(label: int) -> int:
        parent.setdefault(label, label)
        while parent[label] != label:
            parent[label] = parent[parent[label]]  # path halving
            label = parent[label]
        return label

    weakest: dict[int, float] = {}
    for pair in pairs:
        ra, rb = root(pair.a), root(pair.b)
        low = min(pair.score, weakest.get(ra, pair.score), weakest.get(rb, pair.score))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        weakest[min(ra, rb)] = low
    members: dict[int, list[int]] = {}
    for label in parent:
        members.setdefault(root(label), []).append(label)
    groups = [Group(tuple(sorted(labels)), weakest[top]) for top, labels in members.items()]
    return sorted(groups, key=lambda g: (-len(g.labels), g.labels[0]))


class DuplicateScan:
    """Near-duplicates among a store's items, and among the images a write offers."""

    def __init__(
        self,
        serving: ServingIndexes,
        records: RecordStore,
        log: VectorLog,
        search: StoreSearch,
        dim: int,
    ) -> None:
        self._serving = serving
        self._records = records
        self._log = log
        self._search = search
        self._dim = dim

    def pairs(
        self,
        kind: Kind,
        threshold: float,
        where: MetadataFilter | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        chunk: int = 1024,
    ) -> list[Pair]:
        """Every pair of items of `kind` (matching `where`) with cosine >= `threshold`.

        Each item's neighbours are searched with k doubling until the k-th scores below the
        threshold: a range search on exact indexes. `on_progress(done, total)` after each chunk.
        Bounded: an item with more than MAX_NEIGHBOURS such neighbours, or more than MAX_PAIRS
        pairs in all, is a TooManyDuplicatesError (a low threshold over a large set is n²).
        """
        self._search.catch_up()
        allowed = None if where is None else self._records.labels_matching(kind, where)
        total = len(self._serving[kind]) if allowed is None else int(allowed.size)
        found: dict[tuple[int, int], float] = {}
        done = 0
        for labels, vectors in self._log.vectors_after(kind, 0, self._dim, chunk):
            if allowed is not None:
                keep = np.isin(labels, allowed)
                labels, vectors = labels[keep], vectors[keep]
            if len(labels):
                for a, b, score in self._neighbours_above(kind, labels, vectors, threshold, where):
                    found[(a, b)] = score
                if len(found) > MAX_PAIRS:
                    raise TooManyDuplicatesError(
                        f"more than {MAX_PAIRS} pairs of items are at cosine {threshold} or "
                        "more; raise the threshold or narrow the items with a filter"
                    )
            done += len(labels)
            if on_progress is not None:
                on_progress(min(done, total), total)
        return [Pair(a, b, score) for (a, b), score in sorted(found.items())]

    def groups(
        self,
        kind: Kind,
        threshold: float,
        where: MetadataFilter | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of items connected by cosine >= `threshold`, largest first; ids in write order."""
        groups = group_pairs(self.pairs(kind, threshold, where, on_progress))
        if groups and len(groups[0].labels) > MAX_GROUP:
            raise TooManyDuplicatesError(
                f"a group of more than {MAX_GROUP} items are near-duplicates at cosine "
                f"{threshold}; raise the threshold or narrow the items with a filter"
            )
        records: dict[int, Record] = self._records.get_by_labels(
            [label for group in groups for label in group.labels]
        )
        return [
            DuplicateGroup(
                [records[label].id for label in group.labels if label in records], group.min_score
            )
            for group in groups
        ]

    def _neighbours_above(
        self,
        kind: Kind,
        labels: np.ndarray,
        vectors: np.ndarray,
        threshold: float,
        where: MetadataFilter | None,
    ) -> Iterator[tuple[int, int, float]]:
        size = len(self._serving[kind])
        k = min(16, size)
        pending = np.arange(len(labels))
        while len(pending):
            scores, found = self._search.ranked(kind, vectors[pending], k, where)
            for row, query in enumerate(pending):
                for score, label in zip(scores[row], found[row], strict=True):
                    if label >= 0 and label != labels[query] and score >= threshold:
                        a, b = sorted((int(labels[query]), int(label)))
                        yield a, b, float(score)
            full = (found[:, -1] >= 0) & (scores[:, -1] >= threshold)
            if k >= size:
                return
            if full.any() and k > MAX_NEIGHBOURS:
                raise TooManyDuplicatesError(
                    f"an item has more than {MAX_NEIGHBOURS} others at cosine {threshold} or "
                    "more; raise the threshold or narrow the items with a filter"
                )
            pending, k = pending[full], min(k * 2, size)

    def in_write(self, items: Sequence[NewItem], threshold: float) -> list[Duplicate]:
        """The images among `items` as similar as `threshold` to a stored or an earlier one;
        write lock held, so that what is stored cannot change before the write."""
        positions = [p for p, item in enumerate(items) if item.kind == "image"]
        if not positions:
            return []
        vectors = check_vectors(
            np.stack([np.asarray(items[p].vector, dtype=np.float32) for p in positions]), self._dim
        )
        scores, labels = self._serving["image"].search(vectors, 1)
        stored = self._records.get_by_labels([int(x) for x in labels[:, 0] if x >= 0])
        among_batch = vectors @ vectors.T
        duplicates: list[Duplicate] = []
        kept: list[int] = []  # rows of `vectors` that will be stored
        for row, position in enumerate(positions):
            best_id, best = None, -np.inf
            if labels[row, 0] >= 0 and int(labels[row, 0]) in stored:
                best_id, best = stored[int(labels[row, 0])].id, float(scores[row, 0])
            for earlier in kept:
                if among_batch[row, earlier] > best:
                    best_id, best = items[positions[earlier]].id, float(among_batch[row, earlier])
            if best_id is not None and best >= threshold:
                duplicates.append(Duplicate(position, best_id, best))
            else:
                kept.append(row)
        return duplicates
