"""Re-embedding a collection with another model while it serves: no gap, no mix, no loss."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.app.test_collections import SHAPES, shapes_encoder  # noqa: F401
from tests.conftest import TINY_MODEL, png_file, serve_in_thread, wait_for_job

QUERY = "a note about shapes"
ITEMS = 600


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """PyTorch runs what the app loads itself; small job steps make the switch take a while."""
    return settings.model_copy(
        update={"runtime": "torch", "precision": "fp32", "encode_batch_size": 4}
    )


def text_of(i: int) -> str:
    return f"note {i} about {['circles', 'squares', 'stars'][i % 3]}"


def make_docs(http: httpx.Client | TestClient, items: int = ITEMS) -> None:
    """A collection on the tiny model holding `items` texts and two images."""
    created = http.post(
        "/v1/collections",
        json={"name": "docs", "model": TINY_MODEL, "pretrained": "", "precision": "fp32"},
    )
    assert created.status_code == 201, created.text
    for start in range(0, items, 100):
        batch = [{"id": f"t{i}", "text": text_of(i)} for i in range(start, min(items, start + 100))]
        assert http.post("/v1/collections/docs/texts", json={"items": batch}).status_code == 201
    images = http.post(
        "/v1/collections/docs/images",
        files=[png_file("r.png", "red"), png_file("b.png", "blue")],
        data={"ids": '["red", "blue"]'},
    )
    assert images.status_code == 201


def scores_by(encoder: OpenClipEncoder, texts: dict[str, str]) -> dict[str, float]:
    """What a search for QUERY scores each text, with `encoder` on both sides."""
    ids = list(texts)
    vectors = encoder.encode_texts([texts[i] for i in ids])
    return dict(zip(ids, (vectors @ encoder.encode_texts([QUERY])[0]).tolist(), strict=True))


def made_by(hits: list[dict], expected: dict[str, float]) -> bool:
    return all(abs(h["score"] - expected[h["id"]]) < 1e-4 for h in hits)


def test_searches_run_throughout_a_reindex_and_writes_are_carried_over(
    settings: Settings,
    tiny_encoder: OpenClipEncoder,
    shapes_encoder: OpenClipEncoder,  # noqa: F811
) -> None:
    texts = {f"t{i}": text_of(i) for i in range(ITEMS)}
    written = {f"n{i}": f"new note {i} about stars" for i in range(10)} | {"t0": "t0 replaced"}
    both = texts | written
    by_old, by_new = scores_by(tiny_encoder, both), scores_by(shapes_encoder, both)
    answers: list[str] = []
    stop = threading.Event()

    def search_throughout(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                response = http.get(
                    "/v1/collections/docs/search/text",
                    params={"q": QUERY, "target": "texts", "k": 20},
                )
                assert response.status_code == 200, response.text
                hits = response.json()["results"]
                assert len(hits) == 20
                answers.append(
                    "old" if made_by(hits, by_old) else "new" if made_by(hits, by_new) else "mixed"
                )

    with (
        serve_in_thread(create_app(settings, encoder=tiny_encoder)) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        make_docs(http)
        searcher = threading.Thread(target=search_throughout, args=(url,))
        searcher.start()
        time.sleep(0.3)
        job_id = http.post(
            "/v1/collections/docs/reindex", json={"model": SHAPES, "precision": "fp32"}
        ).json()["job_id"]
        assert http.get("/v1/collections/docs").json()["status"] == "reindexing"
        while http.get(f"/v1/jobs/{job_id}").json()["done"] < 8:  # t1 and blue are copied
            time.sleep(0.005)
        # writes while it runs land in the serving generation and are carried into the next
        items = [{"id": k, "text": v} for k, v in written.items()]
        assert http.post("/v1/collections/docs/texts", json={"items": items}).status_code == 201
        assert http.delete("/v1/collections/docs/items/t1").status_code == 204
        assert http.delete("/v1/collections/docs/items/blue").status_code == 204
        running = http.get(f"/v1/jobs/{job_id}").json()
        job = wait_for_job(http, job_id)
        time.sleep(0.3)
        stop.set()
        searcher.join(30)

        assert running["status"] == "running"  # the writes above came while it ran
        assert (job["status"], job["kind"], job["collection"]) == ("done", "reindex", "docs")
        assert job["done"] == job["total"] >= ITEMS
        described = http.get("/v1/collections/docs").json()
        assert (described["model"], described["model_id"]) == (SHAPES, shapes_encoder.model_id)
        assert (described["status"], described["texts"], described["images"]) == (
            "ready",
            ITEMS + 10 - 1,
            1,
        )
        assert http.get("/v1/collections/docs/items/t1").status_code == 404
        assert http.get("/v1/collections/docs/items/t0").json()["text"] == "t0 replaced"
        assert (
            http.get("/v1/collections/docs/items/red/content").content == png_file("r", "red")[1][1]
        )
        new_hits = http.get(
            "/v1/collections/docs/search/text", params={"q": QUERY, "target": "texts", "k": 20}
        ).json()["results"]
        assert made_by(new_hits, by_new)
        assert "n0" in {
            h["id"]
            for h in http.get(
                "/v1/collections/docs/search/text",
                params={"q": written["n0"], "target": "texts", "k": 3},
            ).json()["results"]
        }

    assert "mixed" not in answers, answers
    assert answers.count("old") > 0 and answers.count("new") > 0, answers
    # an answer from the new model is never followed by one from the old
    assert answers == sorted(answers, key=lambda a: a == "new")
    folder = settings.data_dir / "collections" / "docs"
    assert not (folder / "records.sqlite3").exists()  # the first generation is gone
    assert [p.name for p in folder.glob("gen-*")] == ["gen-1"]
    # the new generation got the image's thumbnail while re-embedding, not on first request
    assert len(list((folder / "gen-1").rglob("*.thumb.jpg"))) == 1


def test_a_cancelled_reindex_leaves_the_collection_as_it_was(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        make_docs(client, items=1200)
        before = client.get("/v1/collections/docs").json()
        job_id = client.post("/v1/collections/docs/reindex", json={"model": SHAPES}).json()[
            "job_id"
        ]
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job_id}").json()["done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cancelled = client.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 409
        after = client.get("/v1/collections/docs").json()
        assert after == before
        assert not list((settings.data_dir / "collections" / "docs").glob("gen-*"))
        hits = client.get(
            "/v1/collections/docs/search/text", params={"q": QUERY, "target": "texts", "k": 5}
        ).json()["results"]
        expected = scores_by(tiny_encoder, {h["id"]: text_of(int(h["id"][1:])) for h in hits})
        assert made_by(hits, expected)
        # and it can be re-embedded again later
        again = client.post("/v1/collections/docs/reindex", json={"model": SHAPES})
        assert again.status_code == 202


def test_a_reindex_whose_storage_is_away_for_a_moment_waits_and_finishes(
    settings: Settings,
    tiny_encoder: OpenClipEncoder,
    shapes_encoder: OpenClipEncoder,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.jobs.reindex import ReembedStages
    from index import VectorStoreUnavailableError

    store = ReembedStages.store
    outage = {"left": 2}  # two writes refused, as while Milvus restarts or drops a connection

    async def refused_at_first(self: ReembedStages, encoded: Any) -> None:
        if outage["left"]:
            outage["left"] -= 1
            raise VectorStoreUnavailableError("Milvus could not write to: it does not answer")
        await store(self, encoded)

    monkeypatch.setattr(ReembedStages, "store", refused_at_first)
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        make_docs(client, items=40)
        job_id = client.post("/v1/collections/docs/reindex", json={"model": SHAPES}).json()[
            "job_id"
        ]
        job = wait_for_job(client, job_id, timeout_s=120)
        assert job["status"] == "done", job
        described = client.get("/v1/collections/docs").json()
        assert (described["model"], described["texts"], described["images"]) == (SHAPES, 40, 2)
        assert outage["left"] == 0


def test_a_failed_reindex_leaves_the_collection_as_it_was(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    # weights that cannot be loaded, listed by the operator
    allowed = f"{TINY_MODEL}/,{TINY_MODEL}//no/such.pt,{SHAPES}"
    settings = settings.model_copy(update={"allowed_models": allowed})
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        make_docs(client, items=20)
        before = client.get("/v1/collections/docs").json()
        job_id = client.post(
            "/v1/collections/docs/reindex", json={"model": TINY_MODEL, "pretrained": "/no/such.pt"}
        ).json()["job_id"]
        job = wait_for_job(client, job_id)
        assert job["status"] == "failed" and "/no/such.pt" in job["error"]
        assert client.get("/v1/collections/docs").json() == before
        assert not list((settings.data_dir / "collections" / "docs").glob("gen-*"))
        assert (
            client.post("/v1/collections/docs/reindex", json={"model": SHAPES}).status_code == 202
        )


def test_the_default_collection_follows_xmr_model(
    settings: Settings,
    tiny_encoder: OpenClipEncoder,
    shapes_encoder: OpenClipEncoder,  # noqa: F811
) -> None:
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        items = [{"id": f"t{i}", "text": text_of(i)} for i in range(40)]
        assert client.post("/v1/texts", json={"items": items}).status_code == 201
    switched = settings.model_copy(update={"model": SHAPES, "pretrained": None})
    with TestClient(create_app(switched)) as client:
        info = client.get("/v1/info").json()
        assert info["model_id"] == f"{TINY_MODEL}/random-init"  # serves what it has meanwhile
        job = wait_for_job(client, info["reindex_job"])
        assert (job["status"], job["collection"], job["done"]) == ("done", "default", 40)
        info = client.get("/v1/info").json()
        assert (info["model_id"], info["texts"], info["reindex_job"]) == (
            shapes_encoder.model_id,
            40,
            None,
        )
        hits = client.get("/v1/search/text", params={"q": QUERY, "target": "texts", "k": 5}).json()[
            "results"
        ]
        assert made_by(hits, scores_by(shapes_encoder, {f"t{i}": text_of(i) for i in range(40)}))
        refused = client.post("/v1/collections/default/reindex", json={"model": TINY_MODEL})
        assert refused.status_code == 409
    with TestClient(create_app(switched)) as client:  # and it stays switched
        assert client.get("/v1/info").json()["reindex_job"] is None
    assert not (settings.data_dir / "records.sqlite3").exists()
    assert (settings.data_dir / "gen-1" / "records.sqlite3").exists()
    assert not Path(settings.data_dir / "collections").exists()


def test_default_follows_settings_without_re_embedding_the_same_weights(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        items = [{"id": f"t{i}", "text": text_of(i)} for i in range(2000)]
        for start in range(0, 2000, 500):
            batch = {"items": items[start : start + 500]}
            assert client.post("/v1/texts", json=batch).status_code == 201
    other_precision = settings.model_copy(update={"precision": "bf16"})
    with TestClient(create_app(other_precision)) as client:  # the same weights: no re-embedding
        info = client.get("/v1/info").json()
        assert (info["reindex_job"], info["precision"]) == (None, "bf16")
    switched = settings.model_copy(update={"model": SHAPES, "pretrained": None})
    with TestClient(create_app(switched)) as client:  # stopped while it re-embeds
        job_id = client.get("/v1/info").json()["reindex_job"]
        assert client.get("/v1/collections/default").json()["status"] == "reindexing"
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:  # configured back
        assert client.get("/v1/collections/default").json()["status"] == "ready"
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        assert client.get("/v1/info").json()["texts"] == 2000
    assert not list(settings.data_dir.glob("gen-*"))


def test_a_switch_cut_short_after_its_fence_takes_writes_again_when_resumed(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    """A crash between the switch's fence and its commit leaves the serving generation retired;
    the re-embedding, run again, lifts that first: writes go on while it runs."""
    with TestClient(create_app(settings, encoder=tiny_encoder)) as http:
        make_docs(http)
        docs = http.app.state.services.collections.get("docs")  # type: ignore[attr-defined]
        docs.store.records.retire()  # as the fence of a switch that never committed left it
        note = {"items": [{"id": "note", "text": "a note"}]}
        assert http.post("/v1/collections/docs/texts", json=note).status_code == 503
        job_id = http.post(
            "/v1/collections/docs/reindex", json={"model": SHAPES, "precision": "fp32"}
        ).json()["job_id"]
        while (job := http.get(f"/v1/jobs/{job_id}").json())["done"] < 8:
            time.sleep(0.005)
        assert job["status"] == "running"
        assert http.post("/v1/collections/docs/texts", json=note).status_code == 201
        assert wait_for_job(http, job_id)["status"] == "done"
        assert http.get("/v1/collections/docs/items/note").status_code == 200
