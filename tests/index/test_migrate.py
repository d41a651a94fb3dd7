"""Moving a data directory between FAISS and Milvus: same counts, same top-10, both ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import IndexOptions, NewItem
from index.migrate import MigrationReport, _same_ranking, migrate, opposite
from index.store import ItemStore
from tests.conftest import _milvus_available

pytestmark = pytest.mark.skipif(not _milvus_available(), reason="pymilvus/milvus-lite missing")
DIM = 16


def test_faiss_to_milvus_and_back_keeps_counts_and_rankings(tmp_path: Path) -> None:
    data = tmp_path / "data"
    faiss = IndexOptions()
    store = ItemStore(data, "m/1", DIM, faiss)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert([NewItem(f"t{i}", "text", v, text="x") for i, v in enumerate(vectors[:200])])
    store.upsert([NewItem(f"i{i}", "image", v) for i, v in enumerate(vectors[200:])])
    store.delete("t5")
    store.close()

    milvus = opposite(faiss, str(tmp_path / "milvus.db"))
    there = migrate(data, faiss, milvus, samples=15)
    assert there.ok, there.mismatches
    assert there.counts == {"image": (100, 100), "text": (199, 199)}
    assert there.queries == 30
    back = migrate(data, milvus, opposite(milvus, None), samples=15)
    assert back.ok and back.counts == there.counts


def test_a_target_that_ranks_differently_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares the target's own answers: a target whose rankings differ fails it."""
    from index import migrate as migrate_module

    data = tmp_path / "data"
    store = ItemStore(data, "m/1", DIM, IndexOptions())
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert([NewItem(f"t{i}", "text", v, text="x") for i, v in enumerate(vectors)])
    store.close()
    real_top = migrate_module._top

    def reversed_on_milvus(store: ItemStore, kind: str, queries: np.ndarray) -> list:
        rankings = real_top(store, kind, queries)  # type: ignore[arg-type]
        return [row[::-1] for row in rankings] if store.options.backend == "milvus" else rankings

    monkeypatch.setattr(migrate_module, "_top", reversed_on_milvus)
    report = migrate(data, IndexOptions(), opposite(IndexOptions(), str(tmp_path / "m.db")), 5)
    assert not report.ok
    assert len(report.mismatches) == 5 and report.mismatches[0].startswith("text query 0")


def test_rankings_compare_by_order_except_among_ties() -> None:
    want = [("a", 0.9), ("b", 0.8), ("c", 0.8), ("d", 0.5)]
    assert _same_ranking(want, [("a", 0.9), ("c", 0.8), ("b", 0.8), ("d", 0.5)])  # tie swapped
    assert not _same_ranking(want, [("b", 0.9), ("a", 0.8), ("c", 0.8), ("d", 0.5)])
    assert not _same_ranking(want, want[:3])
    assert _same_ranking(want, [("a", 0.9), ("b", 0.8), ("c", 0.8), ("e", 0.5)])  # cut tie
    assert not _same_ranking(want, [("a", 0.9), ("b", 0.8), ("e", 0.8), ("d", 0.5)])
    assert not MigrationReport(counts={"text": (3, 2)}).ok
    assert not MigrationReport(counts={"text": (3, 3)}, mismatches=["text query 0"]).ok
