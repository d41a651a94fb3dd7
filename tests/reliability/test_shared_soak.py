"""Every way one client once took the shared process, tried in turn against the real server
(`python -m app`), while a text search of `default` probes it every 200 ms (issue 23).

Each attack must be refused or absorbed, and the probe never waits more than 2 s nor gets
anything but a 200. Run alone with `pytest -m hostile -s` for the figures (RELIABILITY.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.app.test_server_process import free_port, server_env, start_server
from tests.conftest import TINY_MODEL
from tests.reliability.probe import Probe, Searchers
from xmr.client import XmrClient

pytestmark = pytest.mark.hostile
SHAPES = "shapes-tiny"
PROBE_EVERY_S = 0.2


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = server_env(
        tmp_path / "data",
        port,
        XMR_MAX_MODELS="2",
        XMR_MAX_COLLECTIONS="8",
        XMR_DUPLICATES_SYNC_LIMIT="5000",
    )
    process = start_server(env)
    base = f"http://127.0.0.1:{port}"
    try:
        XmrClient(base).wait_ready(120)
        yield base
    finally:
        process.kill()
        process.wait(30)


def texts(count: int, prefix: str, size: int = 20) -> list[dict[str, str]]:
    return [
        {"id": f"{prefix}{n}", "text": f"{prefix} {n} " + "word " * (size // 5)}
        for n in range(count)
    ]


def attacks(http: httpx.Client, base: str) -> dict[str, Callable[[], None]]:
    """Items 2-10 (and 12) of issue 23, each checked for the answer it must get."""

    def untrusted_models() -> None:
        for body in (
            {"name": "a", "model": "ViT-B-32", "pretrained": "/proc/self/pagemap"},
            {"name": "b", "model": "ViT-B-16", "pretrained": ""},
            {"name": "c", "model": "hf-hub:someone/model"},
        ):
            assert http.post("/v1/collections", json=body).status_code == 422

    def reindexes_in_other_collections() -> None:
        for name in ("r1", "r2"):
            body = {"name": name, "model": TINY_MODEL, "pretrained": ""}
            assert http.post("/v1/collections", json=body).status_code == 201
            items = {"items": texts(300, name)}
            assert http.post(f"/v1/collections/{name}/texts", json=items).status_code == 201
        jobs = [
            http.post("/v1/collections/r1/reindex", json={"model": SHAPES}).json()["job_id"],
            http.post(
                "/v1/collections/r2/reindex", json={"model": SHAPES, "precision": "fp32"}
            ).json()["job_id"],
        ]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            views = [http.get(f"/v1/jobs/{job}").json() for job in jobs]
            if all(v["status"] not in ("queued", "running") for v in views):
                break
            if any(v.get("waiting_for") == "a model slot" for v in views):
                time.sleep(2)  # one waits for a slot: the default model is never evicted
                for job in jobs:
                    http.delete(f"/v1/jobs/{job}")
                break
            time.sleep(0.2)
        for name in ("r1", "r2"):
            assert http.delete(f"/v1/collections/{name}").status_code == 204

    def long_words() -> None:
        word = "".join(np.random.default_rng(1).choice(list("abcdefghij"), 99_999))
        assert http.post("/v1/search", json={"query": [{"text": word}]}).status_code == 200
        assert http.post("/v1/embed/text", json={"texts": [word[:60_000]] * 4}).status_code == 200
        queries = {"queries": [word[:30_000]] * 16, "target": "texts"}
        assert http.post("/v1/search/text/batch", json=queries).status_code == 200

    def quadratic_duplicates() -> None:
        body = {"name": "dups", "model": TINY_MODEL, "pretrained": ""}
        assert http.post("/v1/collections", json=body).status_code == 201
        items = {"items": texts(2000, "d")}
        assert http.post("/v1/collections/dups/texts", json=items).status_code == 201
        route = "/v1/collections/dups/duplicates"
        low = http.get(route, params={"threshold": -1, "target": "texts"})
        assert low.status_code == 422
        lowest = http.get(route, params={"threshold": 0.5, "target": "texts"})
        assert lowest.status_code in (200, 422)  # found, or past the bounds: never an hour
        assert http.delete("/v1/collections/dups").status_code == 204

    def cross_site_reads() -> None:
        headers = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
        response = http.get("/v1/duplicates", params={"threshold": 0.9}, headers=headers)
        assert response.status_code == 403

    def one_big_request() -> None:
        body = {"name": "bulk", "model": TINY_MODEL, "pretrained": ""}
        assert http.post("/v1/collections", json=body).status_code == 201
        items = {"items": texts(4000, "bulk", size=9000)}
        assert http.post("/v1/collections/bulk/texts", json=items).status_code == 201

    def classify_forms() -> None:
        png = ("files", ("a.png", tiny_png(), "image/png"))
        deep = http.post("/v1/classify", files=[png], data={"labels": "[" * 100_000})
        assert deep.status_code == 422
        labels = json.dumps([f"label {n}" for n in range(1000)])
        template = "a photo of {} " + "x" * 100_000
        wide = http.post("/v1/classify", files=[png], data={"labels": labels, "template": template})
        assert wide.status_code == 422

    def collections_without_a_cap() -> None:
        made = 0
        for n in range(20):
            body = {"name": f"many{n}", "model": TINY_MODEL, "pretrained": ""}
            response = http.post("/v1/collections", json=body)
            if response.status_code == 409:
                assert "XMR_MAX_COLLECTIONS" in response.json()["detail"]
                break
            assert response.status_code == 201
            made += 1
        assert made < 20
        for n in range(made):
            assert http.delete(f"/v1/collections/many{n}").status_code == 204

    def delete_under_load() -> None:
        with Searchers(base, "/v1/collections/bulk/search/text", {"q": "x"}, 3) as searchers:
            time.sleep(0.5)
            assert http.delete("/v1/collections/bulk").status_code == 204
            time.sleep(0.3)
        assert set(searchers.statuses) <= {200, 404}, searchers.statuses

    def huge_filter_integers() -> None:
        params = {"q": "x", "filter": json.dumps({"n": {"gte": 2**69}})}
        assert http.get("/v1/search/text", params=params).status_code == 422

    return {
        "2 untrusted model names": untrusted_models,
        "3 re-embeddings in other collections": reindexes_in_other_collections,
        "4 long single words": long_words,
        "5 duplicates at any threshold": quadratic_duplicates,
        "6 cross-site reads": cross_site_reads,
        "7 4,000 texts of 9 KB to another collection": one_big_request,
        "8 classify's form": classify_forms,
        "9 collections past the cap": collections_without_a_cap,
        "10 deleting a collection under load": delete_under_load,
        "12 integers past 64 bits": huge_filter_integers,
    }


def tiny_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, "PNG")
    return buffer.getvalue()


def test_no_client_can_stall_or_break_the_shared_process(server: str) -> None:
    with httpx.Client(base_url=server, timeout=300) as http:
        assert http.post("/v1/texts", json={"items": texts(50, "p")}).status_code == 201
        with Probe(server, PROBE_EVERY_S) as probe:
            time.sleep(1)
            for name, attack in attacks(http, server).items():
                probe.current = name
                started = time.monotonic()
                attack()
                took = time.monotonic() - started
                time.sleep(PROBE_EVERY_S * 2)
                probe.current = "idle"
                worst = max(probe.latencies.get(name, [0.0])) * 1000
                print(f"\n{name}: {took:.1f} s, probe max {worst:.0f} ms", end="")
    print()
    assert not probe.failures, probe.failures
    for name, latencies in probe.latencies.items():
        assert max(latencies) < 2.0, (name, max(latencies))
