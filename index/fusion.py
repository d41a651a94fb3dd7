"""Fusing a vector ranking and a keyword ranking into one (hybrid search).

Both take the two rankings as (label, score) lists, best first, and return (label, fused score)
best first; an item missing from one ranking gets nothing from that side. Ties go to the lower
label (the older item), so the order is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Fusion = Literal["relative", "rrf"]
Ranking = Sequence[tuple[int, float]]
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al., 2009)


def relative_score_fusion(
    vector: Ranking, keyword: Ranking, alpha: float
) -> list[tuple[int, float]]:
    """alpha x the min-max normalized vector score + (1 - alpha) x the normalized keyword score.

    The normalization is over each list as returned, as Weaviate's relativeScoreFusion does:
    each side's best gets 1 and its worst 0 (a list whose scores are all equal gets 1).
    """
    fused: dict[int, float] = {}
    for ranking, weight in ((vector, alpha), (keyword, 1.0 - alpha)):
        for label, normalized in _min_max(ranking):
            fused[label] = fused.get(label, 0.0) + weight * normalized
    return _ordered(fused)


def reciprocal_rank_fusion(
    vector: Ranking, keyword: Ranking, alpha: float
) -> list[tuple[int, float]]:
    """alpha / (60 + vector rank) + (1 - alpha) / (60 + keyword rank), ranks from 1."""
    fused: dict[int, float] = {}
    for ranking, weight in ((vector, alpha), (keyword, 1.0 - alpha)):
        for rank, (label, _) in enumerate(ranking, start=1):
            fused[label] = fused.get(label, 0.0) + weight / (RRF_K + rank)
    return _ordered(fused)


def fuse(
    vector: Ranking, keyword: Ranking, alpha: float, fusion: Fusion
) -> list[tuple[int, float]]:
    if fusion == "rrf":
        return reciprocal_rank_fusion(vector, keyword, alpha)
    return relative_score_fusion(vector, keyword, alpha)


def _min_max(ranking: Ranking) -> list[tuple[int, float]]:
    if not ranking:
        return []
    scores = [score for _, score in ranking]
    low, high = min(scores), max(scores)
    if high == low:
        return [(label, 1.0) for label, _ in ranking]
    return [(label, (score - low) / (high - low)) for label, score in ranking]


def _ordered(fused: dict[int, float]) -> list[tuple[int, float]]:
    return sorted(fused.items(), key=lambda entry: (-entry[1], entry[0]))
