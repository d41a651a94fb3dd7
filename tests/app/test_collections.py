"""Collections: several models side by side in one server, created and deleted through the API."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from models.options import LoadOptions
from tests.conftest import (
    BACKENDS,
    TINY_MODEL,
    image_bytes,
    png_file,
    wait_for_job,
    with_backend,
)

SHAPES = "shapes-tiny"
FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Models the app loads itself run on PyTorch: no export to wait for."""
    return settings.model_copy(update={"runtime": "torch", "precision": "fp32"})


@pytest.fixture
def client(settings: Settings, tiny_encoder: OpenClipEncoder) -> Iterator[TestClient]:
    with TestClient(create_app(settings, encoder=tiny_encoder)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def shapes_encoder() -> OpenClipEncoder:
    return OpenClipEncoder.load(
        SHAPES, None, LoadOptions(device="cpu", precision="fp32", runtime="torch")
    )


def create_shapes(client: TestClient, name: str = "shapes") -> dict:
    response = client.post(
        "/v1/collections", json={"name": name, "model": SHAPES, "precision": "fp32"}
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_collections_with_different_models_side_by_side(
    settings: Settings,
    tiny_encoder: OpenClipEncoder,
    shapes_encoder: OpenClipEncoder,
    backend: str,
) -> None:
    settings = with_backend(settings, backend)
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        index_side_by_side(client, shapes_encoder)
    with TestClient(create_app(settings)) as again:  # loads both models itself
        query = {"q": "a red circle", "target": "texts", "k": 10}
        hits = again.get("/v1/collections/shapes/search/text", params=query).json()["results"]
        assert {h["id"] for h in hits} >= {"s0", "s1", "s2"} and len(hits) == 4
        assert [h["id"] for h in again.get("/v1/search/text", params=query).json()["results"]] == [
            "d0"
        ]


def index_side_by_side(client: TestClient, shapes_encoder: OpenClipEncoder) -> None:
    created = create_shapes(client)
    assert created["model"] == SHAPES and created["model_id"] == shapes_encoder.model_id
    assert (created["dim"], created["images"], created["texts"]) == (shapes_encoder.dim, 0, 0)
    assert created["status"] == "ready"
    assert created["indexes"]["image"]["structure"] in ("Flat", "milvus")

    texts = ["a red circle", "a blue square", "a green triangle"]
    items = [{"id": f"s{i}", "text": t} for i, t in enumerate(texts)]
    assert client.post("/v1/collections/shapes/texts", json={"items": items}).status_code == 201
    assert (
        client.post("/v1/texts", json={"items": [{"id": "d0", "text": "a red circle"}]}).status_code
        == 201
    )
    upload = client.post(
        "/v1/collections/shapes/images", files=[png_file("r.png", "red")], data={"ids": '["red"]'}
    )
    assert upload.status_code == 201

    # each collection answers from its own items, with its own model's vectors
    query = {"q": "a red circle", "target": "texts", "k": 10}
    default_hits = client.get("/v1/search/text", params=query).json()["results"]
    assert [h["id"] for h in default_hits] == ["d0"]
    shapes_hits = client.get("/v1/collections/shapes/search/text", params=query).json()["results"]
    assert {h["id"] for h in shapes_hits} == {"s0", "s1", "s2"}
    expected = shapes_encoder.encode_texts(texts) @ shapes_encoder.encode_texts(["a red circle"])[0]
    got = {h["id"]: h["score"] for h in shapes_hits}
    np.testing.assert_allclose([got[f"s{i}"] for i in range(3)], expected, atol=1e-5)
    embedded = client.post("/v1/collections/shapes/embed/text", json={"texts": ["x"]}).json()
    assert embedded["dim"] == shapes_encoder.dim != client.get("/v1/info").json()["dim"]

    # items, their content and batch jobs live under the collection's routes
    image_hit = client.get(
        "/v1/collections/shapes/search/text", params={"q": "red", "k": 1}
    ).json()["results"][0]
    assert image_hit["content_url"] == "/v1/collections/shapes/items/red/content"
    assert client.get(image_hit["content_url"]).content == image_bytes("red")
    assert client.get("/v1/items/red").status_code == 404  # not in default
    job = client.post("/v1/collections/shapes/batch", json={"items": [{"text": "a star"}]})
    job_view = wait_for_job(client, job.json()["job_id"])
    assert (job_view["status"], job_view["collection"], job_view["done"]) == ("done", "shapes", 1)
    assert client.get("/v1/collections/shapes").json()["texts"] == 4
    assert client.get("/v1/info").json()["texts"] == 1

    listed = client.get("/v1/collections").json()["collections"]
    assert [c["name"] for c in listed] == ["default", "shapes"]
    assert listed[0]["model_id"] == f"{TINY_MODEL}/random-init"
    assert client.get("/v1/info").json()["collections"] == ["default", "shapes"]
    metrics = client.get("/metrics").text
    assert (
        f'xmr_collection_info{{collection="shapes",model_id="{shapes_encoder.model_id}"}} 1.0'
        in metrics
    )


def test_collection_requests_that_cannot_be_served(client: TestClient, settings: Settings) -> None:
    create_shapes(client)
    assert (
        client.post("/v1/collections", json={"name": "shapes", "model": SHAPES}).status_code == 409
    )
    bad_name = client.post("/v1/collections", json={"name": "Not OK", "model": SHAPES})
    assert bad_name.status_code == 422
    unknown = client.post("/v1/collections", json={"name": "other", "model": "no-such-model"})
    assert unknown.status_code == 422 and "XMR_ALLOWED_MODELS" in unknown.json()["detail"]
    missing = client.post(
        "/v1/collections", json={"name": "other", "model": TINY_MODEL, "pretrained": "/no/file.pt"}
    )
    assert missing.status_code == 422 and "XMR_ALLOWED_MODELS" in missing.json()["detail"]
    assert client.get("/v1/collections/other").status_code == 404
    assert client.get("/v1/collections/other/search/text", params={"q": "x"}).status_code == 404
    assert client.get("/v1/collections/Bad!/search/text", params={"q": "x"}).status_code == 404
    assert client.delete("/v1/collections/default").status_code == 409
    reindex_default = client.post("/v1/collections/default/reindex", json={"model": SHAPES})
    assert reindex_default.status_code == 409 and "XMR_MODEL" in reindex_default.json()["detail"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_deleting_a_collection_removes_everything_of_it(
    settings: Settings, tiny_encoder: OpenClipEncoder, backend: str
) -> None:
    settings = with_backend(settings, backend)
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        delete_a_collection(client, settings)


def delete_a_collection(client: TestClient, settings: Settings) -> None:
    create_shapes(client)
    client.post(
        "/v1/collections/shapes/images", files=[png_file("r.png", "red")], data={"ids": '["red"]'}
    )
    folder = settings.data_dir / "collections" / "shapes"
    assert (folder / "records.sqlite3").exists() and any((folder / "blobs").rglob("*.png"))
    items = [{"text": f"text {i}"} for i in range(3000)]
    job_id = client.post("/v1/collections/shapes/batch", json={"items": items}).json()["job_id"]
    default_job = client.post("/v1/batch", json={"items": items[:5]}).json()["job_id"]
    assert client.delete("/v1/collections/shapes").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"  # stopped first
    assert wait_for_job(client, default_job)["status"] == "done"  # other collections' go on
    assert not folder.exists()
    assert client.get("/v1/collections/shapes/items/red").status_code == 404
    assert [c["name"] for c in client.get("/v1/collections").json()["collections"]] == ["default"]
    create_shapes(client)  # the name is free again, and the collection empty
    assert client.get("/v1/collections/shapes").json()["images"] == 0


def test_a_request_that_cannot_get_its_model_is_a_503(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        create_shapes(client)
    one_model = settings.model_copy(update={"max_models": 1})
    with TestClient(create_app(one_model, encoder=tiny_encoder)) as client:
        # a create never unloads a model that serves a collection: 503, retry
        refused = client.post("/v1/collections", json={"name": "more", "model": SHAPES})
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        # a search does: the default model was idle, unloaded to make room, and swapped back
        assert (
            client.get("/v1/collections/shapes/search/text", params={"q": "x"}).status_code == 200
        )
        assert client.get("/v1/search/text", params={"q": "x"}).status_code == 200
        services = client.app.state.services  # type: ignore[attr-defined]
        default = services.collections.get("default")
        assert client.portal is not None
        pin = client.portal.call(functools.partial(default.pin, model=True))  # a long request
        try:
            busy = client.get("/v1/collections/shapes/search/text", params={"q": "x"})
            assert busy.status_code == 503 and busy.headers["Retry-After"]
            assert "XMR_MAX_MODELS" in busy.json()["detail"]
            assert client.get("/v1/search/text", params={"q": "x"}).status_code == 200
        finally:
            client.portal.call(pin.release)
        assert (
            client.get("/v1/collections/shapes/search/text", params={"q": "x"}).status_code == 200
        )
        assert [m.spec.model for m in services.models.loaded()] == [SHAPES]


def test_a_data_directory_from_before_collections_opens_as_default(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    """Made by the release before collections (commit 80c5855) with the tiny model."""
    shutil.copytree(FIXTURES / "data-before-collections", settings.data_dir)
    before = (settings.data_dir / "records.sqlite3").read_bytes()
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        info = client.get("/v1/info").json()
        assert (info["images"], info["texts"], info["reindex_job"]) == (1, 2, None)
        assert client.get("/v1/collections/default").json()["status"] == "ready"
        record = client.get("/v1/items/t1").json()
        assert (
            record["metadata"] == {"album": "old"}
            and record["model"] == f"{TINY_MODEL}/random-init"
        )
        assert client.get("/v1/items/red/content").content[:4] == b"\x89PNG"
        hits = client.get(
            "/v1/search/text", params={"q": "a blue square again", "target": "texts", "k": 1}
        ).json()["results"]
        assert hits[0]["id"] == "t2"
        assert (
            client.get("/v1/collections/default/items/t2").json()["text"] == "a blue square again"
        )
        # its keyword index is built at the first start: texts and metadata strings
        for words, found in (("again", "t2"), ("old", "t1")):
            keyword = {"q": words, "target": "texts", "mode": "keyword"}
            results = client.get("/v1/search/text", params=keyword).json()["results"]
            assert [h["id"] for h in results] == [found]
    # opened, not re-embedded: the records were not rewritten
    assert (settings.data_dir / "collection.json").exists()
    assert _items_table(settings.data_dir) == _items_table_bytes(before, settings.data_dir)


def _items_table(data_dir: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(data_dir / "records.sqlite3") as conn:
        return conn.execute("SELECT id, vector, seq, updated_at FROM items ORDER BY id").fetchall()


def _items_table_bytes(content: bytes, data_dir: Path) -> list[tuple]:
    copy = data_dir.parent / "before"
    copy.mkdir()
    (copy / "records.sqlite3").write_bytes(content)
    return _items_table(copy)


def test_collections_on_one_model_share_it_each_with_its_own_lane(
    client: TestClient, settings: Settings
) -> None:
    same = {"model": TINY_MODEL, "pretrained": "", "precision": settings.precision}
    for name in ("a", "b"):
        assert client.post("/v1/collections", json={"name": name, **same}).status_code == 201
    for prefix in ("/v1", "/v1/collections/a", "/v1/collections/b"):
        assert client.get(f"{prefix}/search/text", params={"q": "x"}).status_code == 200
    loaded = client.app.state.services.models.loaded()  # type: ignore[attr-defined]
    assert len(loaded) == 1  # loaded once
    encodings = loaded[0].encodings
    assert sorted(encodings) == ["a", "b", "default"]
    assert sorted(e.lane for e in encodings.values()) == ["a", "b", "default"]  # a lane each
    assert len({id(e.texts) for e in encodings.values()}) == 1  # in one batcher
