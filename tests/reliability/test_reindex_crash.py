"""SIGKILL the real server while it re-embeds a collection: it resumes, and only switches once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from models import OpenClipEncoder
from models.options import LoadOptions
from tests.app.test_server_process import free_port, server_env, start_server

pytestmark = [pytest.mark.crash, pytest.mark.timeout(600)]
SHAPES = "shapes-tiny"
ITEMS = 1000
KILLS = 3


def wait_ready(http: httpx.Client, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def test_kill_during_a_reindex_resumes_where_it_stopped(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    env = server_env(
        data_dir, port, XMR_RUNTIME="torch", XMR_PRECISION="fp32", XMR_ENCODE_BATCH_SIZE="2"
    )
    folder = data_dir / "collections" / "docs"
    process = start_server(env)
    try:  # a failing assertion must not leave the server running
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            wait_ready(http)
            # the default collection's model: the other slot of XMR_MAX_MODELS stays free for the
            # re-embedding (a model that serves a collection is never unloaded for one)
            docs = {"name": "docs", "model": "xmr-test-tiny", "pretrained": "", "precision": "fp32"}
            created = http.post("/v1/collections", json=docs)
            assert created.status_code == 201, created.text
            for start in range(0, ITEMS, 200):
                items = [{"id": f"t{i}", "text": f"note {i}"} for i in range(start, start + 200)]
                assert (
                    http.post("/v1/collections/docs/texts", json={"items": items}).status_code
                    == 201
                )
            job_id = http.post(
                "/v1/collections/docs/reindex", json={"model": SHAPES, "precision": "fp32"}
            ).json()["job_id"]

            progress: list[int] = []
            for kill in range(KILLS):
                target = (kill + 1) * ITEMS // (KILLS + 2)
                done = wait_for_progress(http, job_id, target, not_below=max(progress, default=0))
                process.send_signal(signal.SIGKILL)
                process.wait()
                progress.append(done)
                state = json.loads((folder / "collection.json").read_text())
                assert state["current"]["spec"]["model"] == "xmr-test-tiny"  # not switched yet
                assert state["next"]["spec"]["model"] == SHAPES and state["reindex_job"] == job_id
                process = start_server(env)
                wait_ready(http)
                described = http.get("/v1/collections/docs").json()
                assert (described["model"], described["status"]) == ("xmr-test-tiny", "reindexing")
                assert (
                    http.get(
                        "/v1/collections/docs/search/text",
                        params={"q": "note 7", "target": "texts"},
                    ).status_code
                    == 200
                )
            try:
                final = wait_for_progress(
                    http, job_id, ITEMS, not_below=progress[-1], until_done=True
                )
                assert final == ITEMS
                described = http.get("/v1/collections/docs").json()
                assert (described["model"], described["texts"], described["status"]) == (
                    SHAPES,
                    ITEMS,
                    "ready",
                )
                query = {"q": "note 7", "target": "texts", "k": 3}
                hits = http.get("/v1/collections/docs/search/text", params=query).json()["results"]
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
    assert progress == sorted(progress) and progress[0] > 0
    shapes = OpenClipEncoder.load(
        SHAPES, None, LoadOptions(device="cpu", precision="fp32", runtime="torch")
    )
    query_vector = shapes.encode_texts(["note 7"])[0]
    for hit in hits:
        expected = float(shapes.encode_texts([f"note {hit['id'][1:]}"])[0] @ query_vector)
        assert abs(hit["score"] - expected) < 1e-4
    assert [p.name for p in folder.glob("gen-*")] == ["gen-1"]
    assert not (folder / "records.sqlite3").exists()


def wait_for_progress(
    http: httpx.Client, job_id: str, target: int, not_below: int, until_done: bool = False
) -> int:
    """Poll the job until it has `target` items done; it never goes back below `not_below`."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in ("running", "done"), job
        assert job["done"] >= not_below, f"the re-embedding started over: {job}"
        if job["done"] >= target and (not until_done or job["status"] == "done"):
            return int(job["done"])
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not reach {target}")
