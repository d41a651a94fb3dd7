"""Filtered and paged search through the API: the filter works inside the search."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from tests.conftest import BACKENDS, image_bytes, with_backend


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """These API tests run once per vector backend."""
    return with_backend(settings, request.param)


@pytest.fixture
def thousand_texts(client: TestClient) -> TestClient:
    items = [
        {
            "text": f"caption number {n}",
            "id": f"t{n}",
            "metadata": {"shard": n % 200, "rare": n % 200 == 7, "n": n},
        }
        for n in range(1000)
    ]
    assert client.post("/v1/texts", json={"items": items}).status_code == 201
    return client


def search(client: TestClient, **params: object) -> list[dict]:
    response = client.get("/v1/search/text", params={"q": "caption", "target": "texts", **params})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_a_filter_matching_5_of_1000_returns_all_5(thousand_texts: TestClient) -> None:
    hits = search(thousand_texts, k=5, filter=json.dumps({"rare": True}))
    assert sorted(h["id"] for h in hits) == sorted(f"t{n}" for n in range(7, 1000, 200))
    assert all(h["metadata"]["rare"] for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_filters_combine_equality_in_and_ranges(thousand_texts: TestClient) -> None:
    where = {"shard": {"in": [1, 2, 3]}, "n": {"gte": 100, "lt": 600}}
    hits = search(thousand_texts, k=50, filter=json.dumps(where))
    expected = {f"t{n}" for n in range(100, 600) if n % 200 in (1, 2, 3)}
    assert {h["id"] for h in hits} == expected  # 7 items, all of them, no others


def test_pages_follow_each_other(thousand_texts: TestClient) -> None:
    everything = search(thousand_texts, k=30)
    pages = [search(thousand_texts, k=10, offset=offset) for offset in (0, 10, 20)]
    assert [h["id"] for page in pages for h in page] == [h["id"] for h in everything]
    where = json.dumps({"shard": {"lt": 10}})  # 50 items
    filtered = [search(thousand_texts, k=20, offset=o, filter=where) for o in (0, 20, 40, 60)]
    assert [len(page) for page in filtered] == [20, 20, 10, 0]
    ids = [h["id"] for page in filtered for h in page]
    assert len(set(ids)) == 50


def test_image_search_and_query_batches_take_filters_too(client: TestClient) -> None:
    files = [("files", (f"{c}.png", image_bytes(c), "image/png")) for c in ("red", "blue")]
    meta = json.dumps([{"album": "a"}, {"album": "b"}])
    client.post("/v1/images", files=files, data={"ids": '["red", "blue"]', "metadata": meta})
    query = {"file": ("q.png", image_bytes("red"), "image/png")}
    only_b = client.post(
        "/v1/search/image",
        files=query,
        data={"target": "images", "filter": json.dumps({"album": "b"})},
    ).json()["results"]
    assert [h["id"] for h in only_b] == ["blue"]
    body = {"queries": ["x", "y"], "target": "images", "filter": {"album": "a"}}
    batch = client.post("/v1/search/text/batch", json=body).json()["results"]
    assert [[h["id"] for h in hits] for hits in batch] == [["red"], ["red"]]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"filter": "{not json"}, "filter: not valid JSON"),
        ({"filter": '{"year": {"gte": "x"}}'}, "filter.year.gte: a date is YYYY-MM-DD"),
        ({"filter": '{"year": {"gte": []}}'}, "filter.year.gte: must be a number or an ISO"),
        ({"filter": '{"year": NaN}'}, "filter: not valid JSON"),
        ({"filter": '{"a": {"regex": "."}}'}, "filter.a.regex: unknown operator"),
        ({"offset": -1}, "greater than or equal to 0"),
        ({"offset": 10_001}, "less than or equal to 10000"),
    ],
)
def test_invalid_filters_and_offsets_get_422(
    client: TestClient, params: dict, message: str
) -> None:
    response = client.get("/v1/search/text", params={"q": "x", **params})
    assert response.status_code == 422
    assert message in response.text


def test_min_score_cuts_every_search_route_where_the_ranking_falls_below_it(
    thousand_texts: TestClient,
) -> None:
    client = thousand_texts
    ranked = search(client, k=100)
    cutoff = (ranked[9]["score"] + ranked[10]["score"]) / 2  # between the 10th and 11th
    above = [h["id"] for h in ranked if h["score"] >= cutoff]
    assert len(above) == 10
    assert [h["id"] for h in search(client, k=100, min_score=cutoff)] == above
    # pages stay consistent: page 1 is cut short, the pages after it are empty
    assert [h["id"] for h in search(client, k=6, min_score=cutoff)] == above[:6]
    assert [h["id"] for h in search(client, k=6, offset=6, min_score=cutoff)] == above[6:]
    assert search(client, k=6, offset=12, min_score=cutoff) == []
    batch = client.post(
        "/v1/search/text/batch",
        json={"queries": ["caption", "caption"], "target": "texts", "k": 50, "min_score": cutoff},
    ).json()["results"]
    assert [[h["id"] for h in row] for row in batch] == [above, above]
    image = {"file": ("q.png", image_bytes("red"), "image/png")}
    by_image = client.post(
        "/v1/search/image", files=image, data={"k": "100", "target": "texts"}
    ).json()["results"]
    image_cut = by_image[4]["score"]
    cut = client.post(
        "/v1/search/image",
        files=image,
        data={"k": "100", "target": "texts", "min_score": str(image_cut)},
    ).json()["results"]
    assert [h["id"] for h in cut] == [h["id"] for h in by_image if h["score"] >= image_cut]
    images_batch = client.post(
        "/v1/search/image/batch",
        files=[("files", ("q.png", image_bytes("red"), "image/png"))],
        data={"k": "100", "target": "texts", "min_score": str(image_cut)},
    ).json()["results"]
    assert [h["id"] for h in images_batch[0]] == [h["id"] for h in cut]
    too_high = client.get("/v1/search/text", params={"q": "x", "min_score": 1.5})
    assert too_high.status_code == 422 and "min_score" in too_high.text
    assert search(client, k=10, min_score=1.0) == []
