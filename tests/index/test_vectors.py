"""The FAISS wrapper: exact cosine ranking, replace-on-re-add, removal, validation, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from index.vectors import FaissVectorIndex


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_returns_exact_cosine_top_k() -> None:
    xb = unit_rows(500, 32)
    index = FaissVectorIndex(32)
    index.add(np.arange(1000, 1500), xb)
    xq = unit_rows(5, 32, seed=1)
    scores, labels = index.search(xq, 10)
    expected = np.argsort(-(xq @ xb.T), axis=1)[:, :10] + 1000
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(xq @ xb.T, expected - 1000, 1), atol=1e-5)


def test_re_adding_a_label_replaces_it() -> None:
    index = FaissVectorIndex(8)
    rows = unit_rows(2, 8)
    index.add([7], rows[:1])
    index.add([7], rows[1:])
    assert len(index) == 1
    scores, labels = index.search(rows[1:], 1)
    assert labels[0, 0] == 7 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_remove_and_padding_when_fewer_than_k() -> None:
    index = FaissVectorIndex(8)
    index.add([1, 2, 3], unit_rows(3, 8))
    assert index.remove([2, 99]) == 1
    _, labels = index.search(unit_rows(1, 8), 5)
    assert sorted(labels[0, :2].tolist()) == [1, 3]
    assert labels[0, 2:].tolist() == [-1, -1, -1]


def test_empty_index_search_returns_no_labels() -> None:
    _, labels = FaissVectorIndex(4).search(unit_rows(2, 4), 3)
    assert (labels == -1).all()


@pytest.mark.parametrize(
    "bad",
    [np.zeros((3,), np.float32), np.zeros((2, 5), np.float32), np.full((1, 4), np.nan, np.float32)],
)
def test_malformed_vectors_are_refused_before_faiss(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        FaissVectorIndex(4).add(list(range(bad.shape[0] if bad.ndim else 1)), bad)


def test_serialize_round_trip_keeps_labels_and_vectors() -> None:
    index = FaissVectorIndex(16)
    xb = unit_rows(50, 16)
    index.add(np.arange(50) * 3, xb)
    copy = FaissVectorIndex.deserialize(index.serialize(), 16)
    assert len(copy) == 50
    np.testing.assert_array_equal(copy.search(xb[:3], 4)[1], index.search(xb[:3], 4)[1])
