"""`make cluster-test`: xmr past one machine, every component real, each killed in turn.

PostgreSQL (records, catalog, jobs), one Milvus server shared by the replicas (Milvus Lite's
gRPC server), Ceph's RADOS Gateway (the originals, S3), a two-node Ray cluster (batch jobs'
embedding), three replicas behind HAProxy. First the core contract through HAProxy; then, for
each component, writes from four clients and a batch job run while one instance of it is
killed -9 and started again. Each round reports what was acknowledged, lost (acknowledged and
not found, or found without its bytes) and duplicated (more vectors than records), and the job's
outcome. Exits 1 if anything was lost, duplicated or failed; 0 with SKIPPED and the reason where
a component cannot run here. Every process it starts is stopped by its PID.

    python -m scripts.cluster_test [--json-out cluster-test.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from PIL import Image

from tests.cluster.conftest import HAProxy, ReplicaSet, haproxy_path
from tests.milvus_servers import MilvusProcess, why_no_lite_server
from tests.postgres import ThrowawayPostgres
from tests.postgres import why_unavailable as why_no_postgres
from tests.ray_cluster import DRIVER_ENV, RayCluster
from tests.ray_cluster import why_unavailable as why_no_ray
from tests.s3_server import RadosGateway
from tests.s3_server import why_unavailable as why_no_rgw
from xmr.client import XmrClient, XmrError

BUCKET = "xmr-cluster"
JOB_IMAGES = 300
CLIENTS = 4


def png(seed: int) -> bytes:
    image = Image.new("RGB", (24, 24), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def why_not_here() -> str | None:
    reasons = [
        why_no_postgres(),
        why_no_lite_server(),
        why_no_rgw(),
        why_no_ray(),
        None if haproxy_path() else "HAProxy is not installed (apt-get install haproxy)",
    ]
    found = [reason for reason in reasons if reason]
    return "; ".join(found) if found else None


class MilvusServer:
    """Milvus Lite's server on a fixed port and folder, so it can be killed and started again."""

    def __init__(self, root: Path) -> None:
        from tests.milvus_servers import _free_port, lite_command

        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.command = lite_command(root / "milvus", self.port)
        self.log = root / "milvus.log"
        self.process: MilvusProcess | None = None

    def start(self) -> None:
        self.process = MilvusProcess(self.command, self.uri, self.log)
        self.process.wait_ready(30)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def count(self) -> int:
        """Vectors in every collection; asked again a few times, since Milvus Lite's server
        sends gRPC clients away now and then for pinging it too often (`too_many_pings`)."""
        from pymilvus import MilvusClient, MilvusException

        for attempt in range(5):
            try:
                client = MilvusClient(self.uri)
                try:
                    return sum(
                        int(client.query(n, filter="", output_fields=["count(*)"])[0]["count(*)"])
                        for n in client.list_collections()
                    )
                finally:
                    client.close()
            except MilvusException:
                if attempt == 4:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")


class Stack:
    """Everything the round needs, started once; `stop` stops what was started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres = ThrowawayPostgres()
        self.milvus = MilvusServer(root)
        self.rgw = RadosGateway()
        self.ray = RayCluster()
        self.replicas: ReplicaSet | None = None
        self.balancer: HAProxy | None = None

    def start(self) -> None:
        self.postgres.start()
        self.milvus.start()
        self.rgw.create()
        self.rgw.start()
        self.rgw.add_user()
        self.rgw.server.client().create_bucket(Bucket=BUCKET)
        self.ray.start()
        self.replicas = ReplicaSet(
            self.root,
            self.postgres.url,
            XMR_INDEX_BACKEND="milvus",
            XMR_MILVUS_URI=self.milvus.uri,
            XMR_BLOB_URL=f"s3://{BUCKET}/blobs",
            XMR_RAY_ADDRESS=self.ray.address,
            XMR_RAY_WORKERS="2",
            XMR_JOB_LEASE_S="3",
            XMR_ENCODE_BATCH_SIZE="16",
            **self.rgw.server.env(),
            **DRIVER_ENV,
        )
        started = self.replicas.start(3)
        self.balancer = HAProxy(str(haproxy_path()), self.root, started)

    def stop(self) -> None:
        for stop in (
            lambda: self.balancer and self.balancer.stop(),
            lambda: self.replicas and self.replicas.stop(),
            self.ray.stop,
            self.rgw.remove,
            self.milvus.kill,
            self.postgres.stop,
            self.postgres.remove,
        ):
            with contextlib.suppress(Exception):
                stop()

    @property
    def url(self) -> str:
        assert self.balancer is not None
        return self.balancer.url

    def records(self) -> int:
        """Items in every store's records (the default collection's, one schema)."""
        with psycopg.connect(self.postgres.url, autocommit=True) as conn:
            schemas = [
                row[0]
                for row in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'xmr_default%'"
                )
            ]
            return sum(
                int(conn.execute(f'SELECT count(*) FROM "{schema}".items').fetchone()[0])
                for schema in schemas
            )


def core_contract(url: str) -> list[str]:
    """What a user does first, through the load balancer; the problems found."""
    problems: list[str] = []
    with XmrClient(url, timeout=60) as client:
        red, blue = png(1), png(2)
        client.index_images([red, blue], ids=["red", "blue"], metadata=[{"c": "red"}, None])
        client.index_texts([{"id": "note", "text": "a red square", "metadata": {"n": 1}}])
        hits = client.search_text("a red square", k=2)["results"]
        if {hit["id"] for hit in hits} != {"red", "blue"}:
            problems.append(f"text search found {hits}")
        texts = client.search_image(red, k=1, target="texts")["results"]
        if [hit["id"] for hit in texts] != ["note"]:
            problems.append(f"image search found {texts}")
        if client.item_content("red") != red:
            problems.append("the stored bytes of 'red' differ")
        filtered = client.search_text("a square", k=5, where={"c": "red"})["results"]
        if [hit["id"] for hit in filtered] != ["red"]:
            problems.append(f"a filtered search found {filtered}")
        client.delete_item("blue")
        try:
            client.get_item("blue")
            problems.append("'blue' is still there after its delete")
        except XmrError as e:
            if e.status != 404:
                problems.append(f"'blue' after delete: {e.status}")
    return problems


class Writers:
    """Clients writing texts and images through the balancer until stopped."""

    def __init__(self, url: str, round_name: str) -> None:
        self.url = url
        self.name = round_name
        self.acknowledged: dict[str, bytes | None] = {}
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(n,)) for n in range(CLIENTS)]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(180)

    def _write(self, number: int) -> None:
        with XmrClient(self.url, timeout=120) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                item_id = f"{self.name}-c{number}-{n}"
                data = png(hash(item_id) % 100_000) if n % 2 else None
                try:
                    if data is None:
                        client.index_texts([{"id": item_id, "text": f"note {item_id}"}])
                    else:
                        client.index_images([data], ids=[item_id])
                    self.acknowledged[item_id] = data
                    self.statuses[200] += 1
                except XmrError as e:
                    self.statuses[e.status] += 1
                    time.sleep(0.1)
                except httpx.HTTPError:
                    self.statuses[0] += 1
                    time.sleep(0.1)


def lost_of(url: str, acknowledged: dict[str, bytes | None]) -> list[str]:
    lost = []
    with XmrClient(url, timeout=60) as client:
        for item_id, data in acknowledged.items():
            try:
                client.get_item(item_id)
                if data is not None and client.item_content(item_id) != data:
                    lost.append(f"{item_id} (its bytes)")
            except XmrError:
                lost.append(item_id)
    return lost


def run_round(
    stack: Stack, victim: str, kill: Callable[[], None], restart: Callable[[], None]
) -> dict[str, Any]:
    name = victim.replace(" ", "-")
    ids = [f"{name}-job-{n}" for n in range(JOB_IMAGES)]
    images = [png(10_000 + n) for n in range(JOB_IMAGES)]
    with Writers(stack.url, name) as writers:
        with XmrClient(stack.url, timeout=120) as client:
            job_id = client.submit_batch_files(images, ids=ids)
        time.sleep(2)
        kill()
        time.sleep(2)
        restart()
        time.sleep(4)
    with XmrClient(stack.url, timeout=120) as client:
        job = wait_through_balancer(client, job_id)
    time.sleep(3)  # the follower's repair, a second after the store answers again
    lost = lost_of(stack.url, writers.acknowledged)
    job_lost = lost_of(stack.url, dict(zip(ids, images, strict=True)))
    records, vectors = stack.records(), stack.milvus.count()
    return {
        "killed": victim,
        "acknowledged": len(writers.acknowledged),
        "lost": len(lost),
        "lost_ids": lost[:10],
        "duplicated": max(0, vectors - records),
        "records": records,
        "vectors": vectors,
        "statuses": dict(writers.statuses),
        "job": {"status": job.get("status"), "done": job.get("done"), "failed": job.get("failed")},
        "job_items_lost": len(job_lost),
    }


def wait_through_balancer(client: XmrClient, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            job = client.job(job_id)
            if job["status"] in ("done", "failed", "cancelled"):
                return job
        except (XmrError, httpx.HTTPError):
            pass  # a replica going away: the balancer sends the next poll elsewhere
        time.sleep(0.5)
    return {"status": "timed out"}


def rounds(stack: Stack) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    assert stack.replicas is not None
    first = stack.replicas.replicas[0]

    def restart_replica() -> None:
        first.start()
        first.wait_ready()

    yield "a replica", first.kill, restart_replica
    yield "postgresql", stack.postgres.kill, stack.postgres.start
    yield "milvus", stack.milvus.kill, stack.milvus.start
    yield "radosgw", lambda: stack.rgw.kill("rgw"), stack.rgw.start_gateway

    def kill_ray_worker() -> None:
        pids = stack.ray.worker_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)

    yield "a ray worker", kill_ray_worker, lambda: None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    reason = why_not_here()
    if reason is not None:
        print(f"SKIPPED: {reason}")
        return 0
    root = Path(tempfile.mkdtemp(prefix="xmr-cluster-test-"))
    stack = Stack(root)
    report: dict[str, Any] = {"rounds": []}
    started = time.monotonic()
    try:
        stack.start()
        print(f"stack up in {time.monotonic() - started:.0f} s", flush=True)
        report["core_contract_problems"] = core_contract(stack.url)
        print(
            f"core contract through HAProxy: {report['core_contract_problems'] or 'ok'}", flush=True
        )
        for victim, kill, restart in rounds(stack):
            result = run_round(stack, victim, kill, restart)
            report["rounds"].append(result)
            print(json.dumps(result), flush=True)
    finally:
        stack.stop()
        if report.get("rounds") and not any(
            r["lost"] or r["duplicated"] or r["job_items_lost"] for r in report["rounds"]
        ):
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs kept in {root}")
    report["seconds"] = round(time.monotonic() - started)
    failed = bool(report["core_contract_problems"]) or any(
        r["lost"] or r["duplicated"] or r["job_items_lost"] or r["job"]["status"] != "done"
        for r in report["rounds"]
    )
    print_table(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print("FAILED" if failed else "PASSED", f"in {report['seconds']} s")
    return 1 if failed else 0


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{'killed':<14}{'acknowledged':>13}{'lost':>6}{'duplicated':>11}{'job':>10}  statuses")
    for r in report["rounds"]:
        job = f"{r['job']['status']}"
        print(
            f"{r['killed']:<14}{r['acknowledged']:>13}{r['lost'] + r['job_items_lost']:>6}"
            f"{r['duplicated']:>11}{job:>10}  {r['statuses']}"
        )


if __name__ == "__main__":
    sys.exit(main())
