"""Searching by text, image, stored item and composite queries."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.routes.conftest import index_texts
from tests.conftest import (
    image_bytes,
    png_file,
)


def test_text_search_ranks_by_cosine_and_scores_match_embeddings(client: TestClient) -> None:
    client.post(
        "/v1/images",
        files=[png_file(f"{c}.png", c) for c in ("red", "green", "blue")],
        data={"ids": '["red", "green", "blue"]'},
    )
    results = client.get("/v1/search/text", params={"q": "a red circle", "k": 3}).json()
    assert [r["kind"] for r in results["results"]] == ["image"] * 3
    query = np.array(
        client.post("/v1/embed/text", json={"texts": ["a red circle"]}).json()["embeddings"][0]
    )
    image_vectors = np.array(
        client.post(
            "/v1/embed/image", files=[png_file(f"{c}.png", c) for c in ("red", "green", "blue")]
        ).json()["embeddings"]
    )
    expected = sorted(
        zip(image_vectors @ query, ["red", "green", "blue"], strict=True), reverse=True
    )
    assert [r["id"] for r in results["results"]] == [name for _, name in expected]
    for result, (score, _) in zip(results["results"], expected, strict=True):
        assert result["score"] == pytest.approx(score, abs=1e-4)
    assert results["took_ms"] > 0


def test_image_search_finds_texts_and_images(client: TestClient) -> None:
    index_texts(
        client, {"text": "first", "id": "t1"}, {"text": "second", "id": "t2", "metadata": {"n": 2}}
    )
    client.post("/v1/images", files=[png_file("r.png", "red")], data={"ids": '["red"]'})
    query = {"file": ("q.png", image_bytes("red"), "image/png")}
    texts = client.post("/v1/search/image", files=query, data={"k": "5"}).json()["results"]
    assert {r["id"] for r in texts} == {"t1", "t2"}
    assert all(r["kind"] == "text" and r["text"] for r in texts)
    images = client.post(
        "/v1/search/image", files=query, data={"k": "1", "target": "images"}
    ).json()
    assert images["results"][0]["id"] == "red"
    assert images["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_similar_items_rank_by_the_stored_vector_without_the_item_itself(
    client: TestClient,
) -> None:
    colours = ["red", "orange", "blue", "green"]
    files = [png_file(f"{c}.png", c) for c in colours]
    ids = json.dumps(colours)
    assert client.post("/v1/images", files=files, data={"ids": ids}).status_code == 201
    index_texts(client, {"text": "a red thing", "id": "t-red"})
    vectors = np.array(
        client.post("/v1/embed/image", files=[png_file(f"{c}.png", c) for c in colours]).json()[
            "embeddings"
        ]
    )
    expected = sorted(
        ((float(vectors[i] @ vectors[0]), c) for i, c in enumerate(colours) if c != "red"),
        reverse=True,
    )
    similar = client.get("/v1/items/red/similar", params={"k": 10}).json()["results"]
    assert [h["id"] for h in similar] == [c for _, c in expected]
    np.testing.assert_allclose([h["score"] for h in similar], [s for s, _ in expected], atol=1e-4)
    paged = client.get("/v1/items/red/similar", params={"k": 1, "offset": 1}).json()["results"]
    assert [h["id"] for h in paged] == [expected[1][1]]
    cut = client.get("/v1/items/red/similar", params={"min_score": expected[1][0] - 1e-6})
    assert [h["id"] for h in cut.json()["results"]] == [c for _, c in expected[:2]]
    texts = client.get("/v1/items/red/similar", params={"target": "texts"}).json()["results"]
    assert [h["id"] for h in texts] == ["t-red"]
    assert client.get("/v1/items/nope/similar").status_code == 404
    index_texts(client, {"text": "an odd id", "id": "p/similar"})
    assert client.get("/v1/items/p%2Fsimilar").json()["id"] == "p/similar"


def test_a_composite_query_equals_the_weighted_sum_a_client_computes(client: TestClient) -> None:
    colours = ["red", "orange", "blue", "green"]
    files = [png_file(f"{c}.png", c) for c in colours]
    assert (
        client.post("/v1/images", files=files, data={"ids": json.dumps(colours)}).status_code == 201
    )
    index_texts(client, {"text": "a red circle", "id": "t1"}, {"text": "a blue square", "id": "t2"})

    def embed_texts(*texts: str) -> np.ndarray:
        return np.array(
            client.post("/v1/embed/text", json={"texts": list(texts)}).json()["embeddings"]
        )

    images = np.array(
        client.post("/v1/embed/image", files=[png_file(f"{c}.png", c) for c in colours]).json()[
            "embeddings"
        ]
    )
    blue = base64.b64encode(image_bytes("blue")).decode()
    parts = [
        {"text": "a red thing", "weight": 1.0},
        {"image_base64": blue, "weight": 0.5},
        {"item": "t2"},  # weight 1 by default: its stored vector
        {"text": "green", "weight": -0.4},
    ]
    units = [embed_texts("a red thing")[0], images[2], embed_texts("a blue square")[0]]
    units.append(embed_texts("green")[0])
    query = sum(w * u for w, u in zip([1.0, 0.5, 1.0, -0.4], units, strict=True))
    query = query / np.linalg.norm(query)
    expected = sorted(((float(images[i] @ query), c) for i, c in enumerate(colours)), reverse=True)

    body = {"query": parts, "target": "images", "k": 10}
    got = client.post("/v1/search", json=body).json()["results"]
    assert [h["id"] for h in got] == [c for _, c in expected]
    np.testing.assert_allclose([h["score"] for h in got], [s for s, _ in expected], atol=1e-4)
    # the same with the image uploaded as a file part
    form_parts = [dict(p) for p in parts]
    form_parts[1] = {"image_file": 0, "weight": 0.5}
    as_form = client.post(
        "/v1/search",
        data={"request": json.dumps({**body, "query": form_parts})},
        files=[png_file("q.png", "blue")],
    ).json()["results"]
    assert [h["id"] for h in as_form] == [h["id"] for h in got]
    paged = client.post("/v1/search", json={**body, "k": 2, "offset": 1}).json()["results"]
    assert [h["id"] for h in paged] == [c for _, c in expected[1:3]]
    # the items named in the query are left out unless asked for
    texts = {"query": [{"item": "t2"}], "target": "texts", "k": 5}
    assert [h["id"] for h in client.post("/v1/search", json=texts).json()["results"]] == ["t1"]
    kept = client.post("/v1/search", json={**texts, "exclude_query_items": False}).json()
    assert kept["results"][0]["id"] == "t2" and kept["results"][0]["score"] == pytest.approx(
        1.0, abs=1e-4
    )


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ([{"text": "x", "weight": 1.0}, {"text": "x", "weight": -1.0}], 422, "cancel out"),
        ([{"text": "x"}] * 17, 422, "query"),
        ([{"text": "x", "item": "t1"}], 422, "exactly one"),
        ([{"image_base64": "not base64!"}], 422, "base64"),
        ([{"image_file": 0}], 422, "0 files"),
        ([{"item": "nope"}], 404, "nope"),
        ([{"text": "x", "weight": float("nan")}], 422, "weight"),
    ],
)
def test_bad_composite_queries_get_a_clear_4xx(
    client: TestClient, query: list, status: int, says: str
) -> None:
    index_texts(client, {"text": "a red circle", "id": "t1"})
    response = client.post(
        "/v1/search",
        content=json.dumps({"query": query}, allow_nan=True),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status, response.text
    assert says in response.text
    for mode in ("keyword", "hybrid"):  # the words to look for come from positive text parts
        no_words = [{"item": "t1"}, {"text": "x", "weight": -1.0}]
        refused = client.post("/v1/search", json={"query": no_words, "mode": mode})
        assert refused.status_code == 422 and "text part" in refused.json()["detail"]
    assert (
        client.post("/v1/search", json={"query": [{"text": "x"}], "mode": "?"}).status_code == 422
    )
