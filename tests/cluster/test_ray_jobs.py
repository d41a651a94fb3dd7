"""Batch jobs embedded on a two-node Ray cluster while the replicas serve (XMR_RAY_ADDRESS):
the replica that claimed the job stores the vectors, so searches find them as they land, and a
killed Ray worker or a killed replica costs neither an item nor a duplicate."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster.conftest import ReplicaSet
from tests.cluster.test_replicas import png
from tests.ray_cluster import DRIVER_ENV, RayCluster, ray_cluster, why_unavailable

pytestmark = pytest.mark.cluster
COUNT = 2000


@pytest.fixture
def ray() -> Iterator[RayCluster]:
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with ray_cluster() as cluster:
        yield cluster


@pytest.mark.parametrize("kill", ["nothing", "a Ray worker", "the claiming replica"])
def test_a_batch_job_on_ray_stores_every_image_once_while_searches_answer(
    replica_set: ReplicaSet, ray: RayCluster, kill: str
) -> None:
    replica_set.settings.update(
        XMR_RAY_ADDRESS=ray.address,
        XMR_RAY_WORKERS="2",
        XMR_JOB_LEASE_S="3",
        XMR_ENCODE_BATCH_SIZE="32",
        **DRIVER_ENV,
    )
    a, b = replica_set.start(2)
    failures: list[str] = []
    searches = [0]
    stop = threading.Event()

    def search_throughout() -> None:
        with httpx.Client(base_url=b.url, timeout=30) as http:
            while not stop.is_set():
                response = http.get("/v1/search/text", params={"q": "a red square", "k": 5})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                searches[0] += 1
                time.sleep(0.05)

    searcher = threading.Thread(target=search_throughout)
    searcher.start()
    try:
        with a.client() as client:
            job_id = client.submit_batch_files(
                [png(n) for n in range(COUNT)], ids=[f"img{n}" for n in range(COUNT)]
            )
            deadline = time.monotonic() + 120
            while (job := client.job(job_id))["done"] < 300 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert job["status"] == "running" and job["done"] < COUNT, job
        with b.client() as client:  # the images stored so far reach the other replica
            deadline = time.monotonic() + 10  # b's FAISS follows the log within a second or two
            while (seen := client.info()["images"]) < 300 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert seen >= 300
        if kill == "a Ray worker":
            pids = ray.worker_pids()
            assert len(pids) == 2, pids
            os.kill(pids[0], signal.SIGKILL)
        elif kill == "the claiming replica":
            a.kill()
        with b.client() as client:
            job = client.wait_for_job(job_id, timeout_s=600)
            deadline = time.monotonic() + 10  # b's FAISS follows the log within a second
            while (images := client.info()["images"]) < COUNT and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        stop.set()
        searcher.join(60)
    assert job["status"] == "done" and job["failed"] == 0, job
    assert failures == [] and searches[0] > 10
    # ids are the items' keys: 2,000 searchable vectors under 2,000 ids is each image stored
    # exactly once (a vector stored twice would be one more)
    assert images == COUNT
    with b.client() as client:
        for n in range(0, COUNT, 97):
            assert client.get_item(f"img{n}")["id"] == f"img{n}"
    log = a.log.read_text() + b.log.read_text()
    assert "Ray workers for xmr-test-tiny on 2 nodes" in log, log[-3000:]
