"""The Milvus backend on every Milvus it is used with: a Milvus Lite file, Milvus Lite's gRPC
server, and the Milvus 2.3 standalone server (tests/milvus_servers.py). Same contract as FAISS,
reconciled with the records; on a server, shared by several stores as replicas share it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from index import IndexOptions, ModelMismatchError, NewItem
from index.milvus_backend import reconcile
from index.store import ItemStore
from tests.conftest import _milvus_available

pytestmark = pytest.mark.skipif(not _milvus_available(), reason="pymilvus/milvus-lite missing")
DIM = 8
DEPLOYMENTS = ["lite-file", "lite-server", "standalone-2.3"]


def rows(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def texts(vectors: np.ndarray, start: int = 0) -> list[NewItem]:
    return [NewItem(f"t{start + i}", "text", v, text="x") for i, v in enumerate(vectors)]


@pytest.fixture(params=DEPLOYMENTS)
def milvus_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "lite-file":
        return str(tmp_path / "milvus.db")
    if request.param == "lite-server":
        return str(request.getfixturevalue("milvus_lite_server"))
    return str(request.getfixturevalue("milvus_standalone"))


@pytest.fixture
def namespace() -> str:
    """A collection name of the test's own: servers are shared by the session's tests."""
    return f"test-{uuid.uuid4().hex[:12]}"


def open_store(folder: Path, uri: str, namespace: str, model: str = "m/1", **options: object):
    return ItemStore(
        folder, model, DIM, IndexOptions(backend="milvus", milvus_uri=uri, **options), namespace
    )


def test_exact_cosine_ranking_like_faiss(tmp_path: Path, milvus_uri: str, namespace: str) -> None:
    xb = rows(200)
    milvus = open_store(tmp_path / "m", milvus_uri, namespace)
    faiss = ItemStore(tmp_path / "f", "m/1", DIM)
    try:
        for store in (milvus, faiss):
            store.upsert(texts(xb))
        xq = rows(5, seed=1)
        for a, b in zip(
            milvus.searches.vector("text", xq, 10),
            faiss.searches.vector("text", xq, 10),
            strict=True,
        ):
            assert len(a) == 10 and [h.record.id for h in a] == [h.record.id for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
        assert milvus.index_info()["text"].spec == "milvus"
    finally:
        milvus.destroy()
        faiss.close()


def test_removes_count_what_they_removed(tmp_path: Path, milvus_uri: str, namespace: str) -> None:
    store = open_store(tmp_path / "m", milvus_uri, namespace)
    try:
        store.upsert(texts(rows(5)))
        index = store._serving["text"]
        labels = sorted(index.labels().tolist())
        assert index.remove(labels[:2]) == 2
        assert len(index) == 3 and store.counts()["text"] == 3
        store.delete("t4")
        assert len(index) == 2
    finally:
        store.destroy()


def test_start_up_brings_the_collection_in_line_with_the_records(
    tmp_path: Path, milvus_uri: str, namespace: str
) -> None:
    xb = rows(50)
    store = open_store(tmp_path / "d", milvus_uri, namespace)
    store.upsert(texts(xb))
    milvus = store._serving["text"]
    # what a crash between the records' commit and the Milvus write leaves: a vector missing in
    # Milvus, and one whose record was deleted still there
    milvus.remove([store.get("t7").label])
    store.close()
    store = open_store(tmp_path / "d", milvus_uri, namespace)
    store.delete("t9")
    stale = store.get("t8").label
    store.records.delete("t8")  # the record goes, the vector stays (the crash)
    store.close()
    reopened = open_store(tmp_path / "d", milvus_uri, namespace)
    try:
        assert reopened.counts()["text"] == 48
        assert reopened.searches.vector("text", xb[7:8], 1)[0][0].record.id == "t7"
        assert stale not in reopened._serving["text"].labels()
    finally:
        reopened.destroy()


def test_each_model_has_its_own_collections(
    tmp_path: Path, milvus_uri: str, namespace: str
) -> None:
    first = open_store(tmp_path / "a", milvus_uri, namespace)
    first.upsert(texts(rows(10)))
    first.close()
    other = open_store(tmp_path / "b", milvus_uri, namespace, model="m/2")
    try:
        assert other.counts()["text"] == 0
        with pytest.raises(ModelMismatchError):
            ItemStore(
                tmp_path / "c",
                "m/1",
                DIM * 2,
                IndexOptions(backend="milvus", milvus_uri=milvus_uri),
                namespace,
            )
    finally:
        other.destroy()
        open_store(tmp_path / "a", milvus_uri, namespace).destroy()


# -- one Milvus server shared by replicas (their records in one PostgreSQL) ------------------


@pytest.fixture(params=["lite-server", "standalone-2.3"])
def shared_uri(request: pytest.FixtureRequest) -> str:
    fixture = "milvus_lite_server" if request.param == "lite-server" else "milvus_standalone"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def replicas(
    tmp_path: Path, shared_uri: str, namespace: str, postgres_database: str
) -> Iterator[list[ItemStore]]:
    """Two stores of one collection, as two replicas hold it: one database, one Milvus."""
    stores = [
        open_store(tmp_path / name, shared_uri, namespace, database_url=postgres_database)
        for name in "ab"
    ]
    try:
        yield stores
    finally:
        stores[1].close()
        stores[0].destroy()


def top_id(store: ItemStore, vector: np.ndarray) -> str | None:
    hits = store.searches.vector("text", vector[None], 1)[0]
    return hits[0].record.id if hits else None


def test_a_write_on_one_replica_is_found_by_the_next_search_on_the_other(
    replicas: list[ItemStore],
) -> None:
    xb = rows(60, seed=3)
    for i, v in enumerate(xb):
        writer, reader = replicas[i % 2], replicas[(i + 1) % 2]
        writer.upsert(texts(v[None], start=i))
        assert top_id(reader, v) == f"t{i}", f"write {i} not found on the other replica"
    index = replicas[0]._serving["text"]
    assert len(index) == 60  # each vector written once, by its writer
    for i in range(0, 60, 2):
        replicas[1].delete(f"t{i}")
        assert top_id(replicas[0], xb[i]) != f"t{i}"
    assert len(index) == 30 and replicas[1].counts()["text"] == 30


def test_a_vector_whose_record_another_replica_deleted_first_is_not_left_behind(
    replicas: list[ItemStore],
) -> None:
    a, b = replicas
    v = rows(1, seed=5)
    # a commits the record; before its vector reaches Milvus, b deletes the item
    result = a.records.upsert([a._record_write(texts(v)[0])], a.model_id)
    b.delete("t0")
    with a._serving.lock:
        a._follower.follow(result)  # a's late add: undone by the deletion logged after it
    label = result.added["text"][0][0]
    assert label not in a._serving["text"].labels()
    assert top_id(b, v[0]) is None


def test_start_up_reconciliation_keeps_a_vector_committed_meanwhile(
    replicas: list[ItemStore],
) -> None:
    a, b = replicas
    index, log = a._serving["text"], a.log
    listed, read = index.labels, log.all_labels
    wrote: list[bool] = []

    def then_b_writes(read_first: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        def reading(*args: object) -> np.ndarray:
            result = read_first(*args)
            if not wrote:  # between the two reads, whichever comes first: b commits and adds
                wrote.append(True)
                b.upsert(texts(rows(1, seed=8), start=100))
            return result

        return reading

    index.labels = then_b_writes(listed)  # type: ignore[method-assign]
    log.all_labels = then_b_writes(read)  # type: ignore[method-assign]
    try:
        reconcile(index, log, "text", DIM)
    finally:
        index.labels, log.all_labels = listed, read  # type: ignore[method-assign]
    assert wrote and b.get("t100").label in index.labels()
    assert top_id(a, rows(1, seed=8)[0]) == "t100"


def test_replicas_starting_together_reconcile_one_at_a_time(
    tmp_path: Path, replicas: list[ItemStore], shared_uri: str, namespace: str
) -> None:
    a = replicas[0]
    a.upsert(texts(rows(3)))
    opened: list[float] = []

    def start_a_replica() -> None:
        store = open_store(
            tmp_path / "c", shared_uri, namespace, database_url=a.options.database_url
        )
        opened.append(time.monotonic())
        store.close()

    with a.log.exclusively():  # another replica reconciling
        starter = threading.Thread(target=start_a_replica)
        starter.start()
        time.sleep(1.5)
        released = time.monotonic()
    starter.join(60)
    assert opened and opened[0] >= released


def test_a_write_milvus_failed_is_repaired_once_it_answers_again(
    tmp_path: Path, namespace: str
) -> None:
    from index import VectorStoreUnavailableError
    from tests.milvus_servers import MilvusProcess, lite_server

    with lite_server() as server:
        store = open_store(tmp_path / "d", server.uri, namespace)
        try:
            store.upsert(texts(rows(3)))
            server.kill()
            with pytest.raises(VectorStoreUnavailableError):
                store.upsert(texts(rows(1, seed=9), start=50))  # committed, not in Milvus
            assert store.get("t50")  # the record stayed: the client got a 503 and may retry
            restarted = MilvusProcess(server.process.args, server.uri, server.log)
            server.process = restarted.process  # stopped by the fixture's own finally
            restarted.wait_ready(30)
            deadline = time.monotonic() + 20
            while store.counts()["text"] != 4 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert top_id(store, rows(1, seed=9)[0]) == "t50"
        finally:
            store.destroy()
