"""Several queries in one request: each gets the same ranking it would get alone."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from tests.conftest import BACKENDS, image_bytes, png_file, with_backend

COLOURS = ("red", "green", "blue", "yellow", "purple")


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """These API tests run once per vector backend."""
    return with_backend(settings, request.param)


@pytest.fixture
def gallery(client: TestClient) -> TestClient:
    client.post(
        "/v1/images",
        files=[png_file(f"{c}.png", c) for c in COLOURS],
        data={"ids": '["' + '", "'.join(COLOURS) + '"]'},
    )
    client.post(
        "/v1/texts",
        json={"items": [{"text": f"a {c} square", "id": f"t-{c}"} for c in COLOURS]},
    )
    return client


def ranking(hits: list[dict]) -> list[tuple[str, float]]:
    return [(h["id"], round(h["score"], 4)) for h in hits]


def test_text_queries_in_one_call_equal_single_searches(gallery: TestClient) -> None:
    queries = ["a red circle", "green", "something blue and round", "a red circle"]
    body = {"queries": queries, "k": 4, "target": "images"}
    response = gallery.post("/v1/search/text/batch", json=body)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == len(queries)
    for query, hits in zip(queries, results, strict=True):
        alone = gallery.get("/v1/search/text", params={"q": query, "k": 4}).json()["results"]
        assert ranking(hits) == ranking(alone)
    assert ranking(results[0]) == ranking(results[3])


def test_image_queries_in_one_call_equal_single_searches(gallery: TestClient) -> None:
    files = [("files", (f"{c}.png", image_bytes(c), "image/png")) for c in ("blue", "red")]
    response = gallery.post("/v1/search/image/batch", files=files, data={"k": "3"})
    assert response.status_code == 200
    results = response.json()["results"]
    for colour, hits in zip(("blue", "red"), results, strict=True):
        alone = gallery.post(
            "/v1/search/image",
            files={"file": ("q.png", image_bytes(colour), "image/png")},
            data={"k": "3"},
        ).json()["results"]
        assert ranking(hits) == ranking(alone)
        assert all(h["kind"] == "text" for h in hits)
    as_images = gallery.post(
        "/v1/search/image/batch", files=files, data={"k": "1", "target": "images"}
    ).json()["results"]
    assert [hits[0]["id"] for hits in as_images] == ["blue", "red"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"queries": []}, "at least 1"),
        ({"queries": ["ok", "  "]}, "queries[1]"),
        ({"queries": ["x"], "k": 0}, "greater than or equal to 1"),
        ({"queries": ["x"] * 257}, "at most 256"),
        ({"queries": ["x"], "target": "videos"}, "images"),
    ],
)
def test_bad_text_query_batches_get_422(client: TestClient, body: dict, message: str) -> None:
    response = client.post("/v1/search/text/batch", json=body)
    assert response.status_code == 422
    assert message in response.text


def test_a_bad_image_in_a_query_batch_is_named(client: TestClient) -> None:
    files = [
        ("files", ("ok.png", image_bytes("red"), "image/png")),
        ("files", ("bad.png", b"not an image", "image/png")),
    ]
    response = client.post("/v1/search/image/batch", files=files)
    assert response.status_code == 422  # README: 422 undecodable, 415 a format not accepted
    assert response.json()["detail"].startswith("files[1]: the file is not a recognised image")
