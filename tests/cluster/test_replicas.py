"""Several replicas, one truth: real `python -m app` replicas on one real PostgreSQL."""

from __future__ import annotations

import io
import signal
import threading
import time
from collections import Counter

import httpx
import psycopg
import pytest
from PIL import Image

from models import OpenClipEncoder
from tests.app.test_collections import SHAPES, shapes_encoder  # noqa: F401
from tests.app.test_reindex import QUERY, made_by, make_docs, scores_by, text_of
from tests.cluster.conftest import ON_EVERY_VECTOR_STORE, HAProxy, ReplicaSet
from tests.postgres import ThrowawayPostgres
from xmr.client import XmrClient, XmrError

pytestmark = pytest.mark.cluster


def found_by_filter(client: XmrClient, n: int) -> list[str]:
    """The texts a filtered vector search finds for metadata n: only what its index holds."""
    hits = client.search_text("a note", target="texts", k=5, where={"n": n})["results"]
    return [hit["id"] for hit in hits]


@ON_EVERY_VECTOR_STORE
def test_a_write_on_one_replica_is_found_at_once_on_the_other(replica_set: ReplicaSet) -> None:
    a, b = replica_set.start(2)
    clients = [a.client(), b.client()]
    try:
        for n in range(200):
            writer, reader = clients[n % 2], clients[(n + 1) % 2]
            writer.index_texts([{"id": f"t{n}", "text": f"note {n}", "metadata": {"n": n}}])
            assert found_by_filter(reader, n) == [f"t{n}"], f"write {n} not found on the other"
        writer.delete_item("t7")
        assert found_by_filter(clients[0], 7) == [] and found_by_filter(clients[1], 7) == []
    finally:
        for client in clients:
            client.close()


def test_replicas_starting_together_on_an_empty_database_create_the_schema_once(
    replica_set: ReplicaSet, postgres: ThrowawayPostgres
) -> None:
    replicas = replica_set.start(3)  # started at the same moment
    with replicas[2].client() as client:
        assert client.info()["texts"] == 0
    with psycopg.connect(postgres.url) as conn:
        schemas = [
            row[0]
            for row in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'xmr%' ORDER BY 1"
            )
        ]
    assert schemas == ["xmr_catalog", "xmr_default_e3b0c442", "xmr_jobs"]
    for replica in replicas:
        assert "error" not in replica.log.read_text().lower(), replica.log.read_text()[-2000:]


def png(n: int) -> bytes:
    image = Image.new("RGB", (32, 32), ((n * 37) % 256, (n * 91) % 256, (n * 13) % 256))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("how", "lease_s"),
    [("kill -9", 3), ("SIGTERM", 30)],  # SIGTERM hands the job back at once: no lease to wait out
)
def test_a_batch_job_of_a_stopped_replica_is_finished_by_another(
    replica_set: ReplicaSet, how: str, lease_s: int
) -> None:
    replica_set.settings.update(XMR_JOB_LEASE_S=str(lease_s), XMR_ENCODE_BATCH_SIZE="32")
    a, b = replica_set.start(2)
    count = 2000
    with a.client() as client:
        job_id = client.submit_batch_files(
            [png(n) for n in range(count)], ids=[f"img{n}" for n in range(count)]
        )
        deadline = time.monotonic() + 60
        while (job := client.job(job_id))["done"] < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job["status"] == "running" and job["done"] < count
    stopped_at = time.monotonic()
    if how == "kill -9":
        a.kill()
    else:
        assert a.terminate() in (0, -signal.SIGTERM)
    with b.client() as client:
        taken = None
        while time.monotonic() - stopped_at < 60:
            job = client.job(job_id)
            if taken is None and job["done"] > 0 and job["status"] == "running":
                before = job["done"]
                time.sleep(0.5)
                if client.job(job_id)["done"] > before:
                    taken = time.monotonic() - stopped_at
            if job["status"] == "done":
                break
            time.sleep(0.2)
        job = client.wait_for_job(job_id, timeout_s=300)
        assert job["status"] == "done" and job["failed"] == 0, job
        assert taken is not None and taken < min(lease_s, 3) + 5, f"taken over after {taken}"
        # ids are the items' keys: 2,000 images under 2,000 ids is each stored exactly once
        assert client.info()["images"] == count
        for n in range(0, count, 97):
            assert client.get_item(f"img{n}")["id"] == f"img{n}"


@ON_EVERY_VECTOR_STORE
def test_a_rolling_restart_behind_haproxy_fails_no_request_and_loses_no_write(
    replica_set: ReplicaSet, haproxy_binary: str
) -> None:
    replicas = replica_set.start(2)
    balancer = HAProxy(haproxy_binary, replica_set.root, replicas)
    acknowledged: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client_loop(number: int) -> None:
        with XmrClient(balancer.url, timeout=60) as client:
            n = 0
            while not stop.is_set():
                n += 1
                item_id = f"c{number}-{n}"
                try:
                    if n % 2:
                        client.index_texts([{"id": item_id, "text": f"client {number} note {n}"}])
                        acknowledged.append(item_id)
                    else:
                        client.search_text(f"note {n}", target="texts", k=5)
                except (XmrError, httpx.HTTPError) as e:
                    failures.append(f"{item_id}: {e!r}")

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(2)
        for replica in replicas:
            assert replica.terminate() in (0, -signal.SIGTERM)  # uvicorn re-raises it
            replica.start()
            replica.wait_ready()
            balancer.wait_up(replica.name)  # HAProxy sees it back before the next one goes
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        balancer.stop()
    assert failures == []
    assert len(acknowledged) > 50
    with replicas[0].client() as client:
        stored = {client.get_item(item_id)["id"] for item_id in acknowledged}
    assert stored == set(acknowledged)


def test_replicas_outlive_a_database_crash_with_503s_and_keep_every_acknowledged_write(
    replica_set: ReplicaSet, postgres: ThrowawayPostgres
) -> None:
    a, b = replica_set.start(2)
    acknowledged: list[str] = []
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def writer(client: XmrClient, name: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                client.index_texts([{"id": f"{name}-{n}", "text": f"note {n}"}])
                acknowledged.append(f"{name}-{n}")
                statuses[200] += 1
            except XmrError as e:
                statuses[e.status] += 1
                time.sleep(0.05)

    clients = [a.client(), b.client()]
    threads = [
        threading.Thread(target=writer, args=(client, name))
        for client, name in zip(clients, "ab", strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        postgres.kill()
        time.sleep(2)
        with a.client() as probe:
            assert not probe.ready()
        postgres.start()
        a.wait_ready(30)
        b.wait_ready(30)
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0
    with b.client() as client:
        for item_id in acknowledged:
            assert client.get_item(item_id)["id"] == item_id
        client.index_texts([{"id": "after", "text": "after", "metadata": {"n": -1}}])
    with a.client() as client:
        assert found_by_filter(client, -1) == ["after"]
    for client in clients:
        client.close()


def model_of(hits: list[dict], by_old: dict[str, float], by_new: dict[str, float]) -> str:
    return "old" if made_by(hits, by_old) else "new" if made_by(hits, by_new) else "mixed"


@ON_EVERY_VECTOR_STORE
def test_a_reembedding_switches_every_replica_within_a_second_never_mixing_models(
    replica_set: ReplicaSet,
    tiny_encoder: OpenClipEncoder,
    shapes_encoder: OpenClipEncoder,  # noqa: F811
) -> None:
    replica_set.settings.update(
        XMR_RUNTIME="torch", XMR_PRECISION="fp32", XMR_ENCODE_BATCH_SIZE="8"
    )
    replicas = replica_set.start(3)
    texts = {f"t{i}": text_of(i) for i in range(300)}
    by_old, by_new = scores_by(tiny_encoder, texts), scores_by(shapes_encoder, texts)
    with httpx.Client(base_url=replicas[0].url, timeout=60) as http:
        make_docs(http, items=300)
    answers: list[list[tuple[float, str]]] = [[] for _ in replicas]
    failures: list[str] = []
    stop = threading.Event()

    def search_throughout(number: int) -> None:
        with httpx.Client(base_url=replicas[number].url, timeout=30) as http:
            while not stop.is_set():
                response = http.get(
                    "/v1/collections/docs/search/text",
                    params={"q": QUERY, "target": "texts", "k": 10},
                )
                if response.status_code != 200:
                    failures.append(f"replica {number}: {response.status_code} {response.text}")
                    continue
                hits = response.json()["results"]
                answer = (
                    "old" if made_by(hits, by_old) else "new" if made_by(hits, by_new) else "mixed"
                )
                answers[number].append((time.monotonic(), answer))

    threads = [threading.Thread(target=search_throughout, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        with replicas[0].client() as client:
            job_id = client.reindex_collection("docs", SHAPES, precision="fp32")
            job = client.wait_for_job(job_id, timeout_s=300)
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    logs = "".join(r.log.read_text()[-3000:] for r in replicas)
    assert job["status"] == "done", (job.get("error"), logs)
    assert failures == []
    first_new = []
    for number, seen in enumerate(answers):
        kinds = [answer for _, answer in seen]
        assert "mixed" not in kinds, f"replica {number} mixed models in one answer"
        assert kinds == sorted(kinds, key=lambda a: a == "new"), f"replica {number} went back"
        assert kinds[0] == "old" and kinds[-1] == "new", f"replica {number}: {kinds[:3]}..."
        first_new.append(next(t for t, answer in seen if answer == "new"))
    assert max(first_new) - min(first_new) < 1.0, first_new


def milvus_collections(vector_store: dict[str, str]) -> set[str]:
    """The collections on the replicas' Milvus server; none with FAISS."""
    if "XMR_MILVUS_URI" not in vector_store:
        return set()
    from pymilvus import MilvusClient

    client = MilvusClient(vector_store["XMR_MILVUS_URI"])
    try:
        return set(client.list_collections())
    finally:
        client.close()


@ON_EVERY_VECTOR_STORE
def test_collections_made_and_deleted_on_one_replica_are_seen_by_the_other(
    replica_set: ReplicaSet, vector_store: dict[str, str]
) -> None:
    a, b = replica_set.start(2)
    before = milvus_collections(vector_store)
    with a.client() as on_a, b.client() as on_b:
        on_a.create_collection("shop", "xmr-test-tiny", pretrained="")
        assert "shop" in [c["name"] for c in on_b.collections()]
        shop_b = XmrClient(b.url, collection="shop")
        shop_a = XmrClient(a.url, collection="shop")
        try:
            shop_b.index_texts([{"id": "s1", "text": "a red shoe", "metadata": {"n": 1}}])
            assert found_by_filter(shop_a, 1) == ["s1"]
            on_b.delete_collection("shop")
            with pytest.raises(XmrError) as gone:
                shop_a.get_item("s1")
            assert gone.value.status == 404
            assert milvus_collections(vector_store) == before  # its vectors dropped, once
            on_a.create_collection("shop", "xmr-test-tiny", pretrained="")  # made again: empty
            assert found_by_filter(shop_b, 1) == []
        finally:
            shop_a.close()
            shop_b.close()


@ON_EVERY_VECTOR_STORE
def test_writes_on_another_replica_during_a_switch_are_kept_or_refused_never_lost(
    replica_set: ReplicaSet,
) -> None:
    # the default collection and docs load the tiny model at two precisions: room for a third
    replica_set.settings.update(XMR_ENCODE_BATCH_SIZE="8", XMR_MAX_MODELS="3")
    a, b = replica_set.start(2)
    with httpx.Client(base_url=a.url, timeout=60) as http:
        make_docs(http, items=200)
    acknowledged: list[str] = []
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def write_throughout() -> None:
        with XmrClient(b.url, collection="docs") as docs:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    docs.index_texts(
                        [{"id": f"w{n}", "text": f"written {n}", "metadata": {"n": n}}]
                    )
                    acknowledged.append(f"w{n}")
                    statuses[201] += 1
                except XmrError as e:
                    statuses[e.status] += 1
                time.sleep(0.02)  # a steady writer, slower than the re-embedding

    writer = threading.Thread(target=write_throughout)
    writer.start()
    try:
        time.sleep(0.5)
        with a.client() as client:
            job = client.wait_for_job(client.reindex_collection("docs", SHAPES), timeout_s=300)
        time.sleep(1)
    finally:
        stop.set()
        writer.join(60)
    assert job["status"] == "done", job
    assert set(statuses) <= {201, 503}, statuses
    with XmrClient(a.url, collection="docs") as docs:
        assert docs.collection("docs")["model"] == SHAPES
        for item_id in acknowledged:
            n = int(item_id[1:])
            assert found_by_filter(docs, n) == [item_id], f"{item_id} lost in the switch"
