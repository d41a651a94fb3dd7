"""Several stores (as several replicas would) on one PostgreSQL database: each keeps indexes of
its own (FAISS, or a Milvus Lite file), which follow the others' writes through the shared log,
or all share one Milvus server, which each writes its own writes to."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from index import NewItem
from index.follow import FOLLOW_INTERVAL_S
from index.planner import IndexOptions
from index.store import SHARED_BLOB_GRACE_S, ItemStore
from tests.conftest import _milvus_available

DIM = 8


def vec(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def text(item_id: str, i: int) -> NewItem:
    return NewItem(id=item_id, kind="text", vector=vec(i), text=f"text {item_id}")


def image(item_id: str, i: int, content: bytes) -> NewItem:
    return NewItem(
        id=item_id, kind="image", vector=vec(i), content=content, content_type="image/png"
    )


def top_id(store: ItemStore, i: int) -> str | None:
    hits = store.searches.vector("text", vec(i)[None], 1)[0]
    return hits[0].record.id if hits else None


@pytest.fixture(params=["faiss", "milvus-file", "milvus-server"])
def options(request: pytest.FixtureRequest, postgres_database: str, tmp_path: Path) -> IndexOptions:
    shared = IndexOptions(database_url=postgres_database, blob_dir=tmp_path / "shared-blobs")
    if request.param == "faiss":
        return shared
    if not _milvus_available():
        pytest.skip("pymilvus/milvus-lite missing")
    if request.param == "milvus-file":  # each store a Milvus Lite file of its own
        return replace(shared, backend="milvus")
    uri = request.getfixturevalue("milvus_lite_server")
    return replace(shared, backend="milvus", milvus_uri=uri)


@pytest.fixture
def namespace() -> str:
    return f"c{uuid.uuid4().hex[:8]}/gen-1"  # a Milvus server is shared by the session


@pytest.fixture
def replicas(tmp_path: Path, options: IndexOptions, namespace: str) -> Iterator[list[ItemStore]]:
    """Two stores of the same collection, each with a data directory (its cache) of its own."""
    stores = [ItemStore(tmp_path / name, "m/1", DIM, options, namespace) for name in "ab"]
    try:
        yield stores
    finally:
        stores[-1].close()
        stores[0].destroy()


def test_a_write_on_one_is_found_by_the_next_search_on_the_other(
    replicas: list[ItemStore],
) -> None:
    for i in range(200):
        writer, reader = replicas[i % 2], replicas[(i + 1) % 2]
        writer.upsert([text(f"t{i}", i)])
        assert top_id(reader, i) == f"t{i}", f"write {i} not found on the other store"
    assert [store.counts()["text"] for store in replicas] == [200, 200]


def test_deletes_and_rewrites_reach_the_other(replicas: list[ItemStore]) -> None:
    a, b = replicas
    a.upsert([text("x", 1), text("y", 2)])
    b.upsert([text("x", 3)])  # a rewrite on the other: a new label, a tombstone
    a.delete("y")
    assert top_id(a, 3) == "x" and top_id(b, 3) == "x"
    assert top_id(b, 1) != "x" or b.searches.vector("text", vec(1)[None], 1)[0][0].score < 0.99
    assert [store.counts()["text"] for store in replicas] == [1, 1]


def test_a_write_after_others_brings_in_what_they_wrote(replicas: list[ItemStore]) -> None:
    a, b = replicas
    a.upsert([text("first", 1)])
    b.upsert([text("second", 2)])  # b's own write follows a gap in the sequence
    assert b.counts()["text"] == 2
    assert top_id(b, 1) == "first"


def test_an_idle_store_catches_up_between_searches(replicas: list[ItemStore]) -> None:
    a, b = replicas
    a.upsert([text("x", 1)])
    deadline = time.monotonic() + 10 * FOLLOW_INTERVAL_S
    while b.counts()["text"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.counts()["text"] == 1


@pytest.mark.parametrize("options", ["faiss"], indirect=True)
def test_a_store_reopened_from_its_snapshot_replays_what_others_wrote(
    tmp_path: Path, options: IndexOptions, namespace: str, replicas: list[ItemStore]
) -> None:
    a, b = replicas
    a.upsert([text(f"t{i}", i) for i in range(20)])
    b.catch_up()
    assert b.snapshot()
    b.close()
    a.upsert([text("late", 99)])
    a.delete("t3")
    again = ItemStore(tmp_path / "b", "m/1", DIM, options, namespace)
    replicas[1] = again
    assert again.counts()["text"] == 20
    assert top_id(again, 99) == "late" and top_id(again, 3) != "t3"


def test_a_rebuild_on_one_keeps_the_writes_of_the_other(
    tmp_path: Path, postgres_database: str, namespace: str
) -> None:
    options = IndexOptions(database_url=postgres_database, approx_threshold=300)
    a, b = (ItemStore(tmp_path / name, "m/1", DIM, options, namespace) for name in "ab")
    try:
        for start in range(0, 600, 50):
            a.upsert([text(f"t{i}", i) for i in range(start, start + 50)])
            b.upsert([text(f"u{i}", 1000 + i) for i in range(start, start + 50)])
            b.catch_up()
        b.wait_for_builds()
        b.catch_up()
        assert b.counts()["text"] == 1200
        assert b.index_info()["text"].spec != "Flat"
        assert top_id(b, 1000 + 599) == "u599"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("options", ["faiss"], indirect=True)
def test_shared_blobs_are_read_by_every_store_and_outlive_a_release(
    tmp_path: Path, options: IndexOptions, namespace: str, replicas: list[ItemStore]
) -> None:
    a, b = replicas
    a.upsert([image("p", 1, b"picture")])
    assert b.read_content(b.get("p")) == b"picture"
    record = a.get("p")
    a.delete("p")  # another replica may be writing the same bytes again right now: kept
    assert a.read_content(record) == b"picture"
    ItemStore(tmp_path / "c", "m/1", DIM, options, namespace).close()  # a replica starting
    assert a.read_content(record) == b"picture"  # too fresh for its sweep
    blob = next((tmp_path / "shared-blobs").glob("*/*/*"))
    old = time.time() - SHARED_BLOB_GRACE_S - 60
    os.utime(blob, (old, old))
    ItemStore(tmp_path / "c", "m/1", DIM, options, namespace).close()
    assert not blob.exists()
