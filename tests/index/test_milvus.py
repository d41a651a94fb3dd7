"""The Milvus backend (Milvus Lite): same contract as FAISS, reconciled with the records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import IndexOptions, ModelMismatchError, NewItem
from index.store import ItemStore
from tests.conftest import _milvus_available

pytestmark = pytest.mark.skipif(not _milvus_available(), reason="pymilvus/milvus-lite missing")
DIM = 8
MILVUS = IndexOptions(backend="milvus")


def rows(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def texts(vectors: np.ndarray, start: int = 0) -> list[NewItem]:
    return [NewItem(f"t{start + i}", "text", v, text="x") for i, v in enumerate(vectors)]


def test_exact_cosine_ranking_like_faiss(tmp_path: Path) -> None:
    xb = rows(200)
    milvus = ItemStore(tmp_path / "m", "m/1", DIM, MILVUS)
    faiss = ItemStore(tmp_path / "f", "m/1", DIM)
    for store in (milvus, faiss):
        store.upsert(texts(xb))
    xq = rows(5, seed=1)
    for a, b in zip(
        milvus.searches.vector("text", xq, 10), faiss.searches.vector("text", xq, 10), strict=True
    ):
        assert len(a) == 10 and [h.record.id for h in a] == [h.record.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    assert milvus.index_info()["text"].spec == "milvus"
    milvus.close()
    faiss.close()


def test_start_up_brings_the_collection_in_line_with_the_records(tmp_path: Path) -> None:
    xb = rows(50)
    store = ItemStore(tmp_path / "d", "m/1", DIM, MILVUS)
    store.upsert(texts(xb))
    milvus = store._serving["text"]
    # what a crash between the SQLite commit and the Milvus write leaves: a vector missing in
    # Milvus, and one whose record was deleted still there
    milvus.remove([store.get("t7").label])
    store.close()
    store = ItemStore(tmp_path / "d", "m/1", DIM, MILVUS)
    store.delete("t9")
    stale = store.get("t8").label
    store.records.delete("t8")  # the record goes, the vector stays (the crash)
    store.close()
    reopened = ItemStore(tmp_path / "d", "m/1", DIM, MILVUS)
    assert reopened.counts()["text"] == 48
    assert reopened.searches.vector("text", xb[7:8], 1)[0][0].record.id == "t7"
    assert stale not in reopened._serving["text"].labels()
    reopened.close()


def test_each_model_has_its_own_collections(tmp_path: Path) -> None:
    uri = str(tmp_path / "shared.db")
    first = ItemStore(tmp_path / "a", "m/1", DIM, IndexOptions(backend="milvus", milvus_uri=uri))
    first.upsert(texts(rows(10)))
    first.close()
    other = ItemStore(tmp_path / "b", "m/2", DIM, IndexOptions(backend="milvus", milvus_uri=uri))
    assert other.counts()["text"] == 0
    other.close()
    with pytest.raises(ModelMismatchError):
        ItemStore(tmp_path / "c", "m/1", DIM * 2, IndexOptions(backend="milvus", milvus_uri=uri))
