"""Near-duplicates: pairs of items at least as similar as a threshold, grouped by connection.

The pairs come from the vector index itself: each item's neighbours are searched with a k that
doubles until the k-th falls below the threshold, which equals a range search on an exact index
(Flat, Milvus Lite) and has the index's recall on an approximate one (IVF, HNSW).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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
