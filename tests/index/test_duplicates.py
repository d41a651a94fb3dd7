"""Near-duplicate pairs and groups straight from the store, on every index structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import IndexOptions, NewItem
from index.duplicates import Pair, group_pairs
from index.store import ItemStore

DIM = 16


def test_groups_are_connected_components_largest_first_with_their_weakest_pair() -> None:
    pairs = [Pair(1, 2, 0.99), Pair(2, 3, 0.96), Pair(7, 8, 0.97), Pair(3, 1, 0.98)]
    groups = group_pairs(pairs)
    assert [(g.labels, g.min_score) for g in groups] == [((1, 2, 3), 0.96), ((7, 8), 0.97)]
    assert group_pairs([]) == []


def cluster_store(path: Path, options: IndexOptions) -> tuple[ItemStore, np.ndarray]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(30, DIM)).astype(np.float32)
    vectors = centres.copy()
    # 40 copies of the first: more than a first neighbour search looks at
    copies = centres[0] + rng.normal(size=(40, DIM)).astype(np.float32) * 0.01
    vectors = np.vstack([vectors, copies])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = ItemStore(path, "m/1", DIM, options)
    store.upsert([NewItem(f"i{n}", "image", v) for n, v in enumerate(vectors)])
    store.wait_for_builds()
    return store, vectors


@pytest.mark.parametrize("spec", ["Flat", "HNSW32"])
def test_a_group_larger_than_the_first_search_is_found_whole(tmp_path: Path, spec: str) -> None:
    store, vectors = cluster_store(tmp_path, IndexOptions(spec=spec))
    similarity = vectors @ vectors.T
    expected = {
        (a, b)
        for a in range(len(vectors))
        for b in range(a + 1, len(vectors))
        if similarity[a, b] >= 0.95
    }
    pairs = store.duplicates.pairs("image", 0.95)
    found = {(p.a - 1, p.b - 1) for p in pairs}  # labels count from 1 in write order
    if spec == "Flat":
        assert found == expected  # an exact range search
    else:
        assert len(found & expected) >= 0.95 * len(expected) and found <= expected
    groups = store.duplicates.groups("image", 0.95)
    assert [len(g.ids) for g in groups] == [41]
    assert groups[0].ids[0] == "i0"  # the oldest first
    progress: list[tuple[int, int]] = []
    store.duplicates.pairs("image", 0.95, on_progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (70, 70)
    store.close()
