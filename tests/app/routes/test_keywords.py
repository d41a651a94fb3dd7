"""Keyword (BM25) and hybrid search through the API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.routes.conftest import index_texts
from tests.conftest import (
    png_file,
)

INVOICE = "INV-2024-88317"


def _keyword_corpus(client: TestClient) -> None:
    """Texts that a vector query for the invoice number likes better than the invoice itself."""
    numbers = [n for n in range(88300, 88330) if n != 88317]
    near = [{"text": f"INV-2024-{n}", "id": f"near-{n}"} for n in numbers]
    other = [{"text": f"a {c} circle", "id": f"circle-{c}"} for c in ("red", "blue", "green")]
    invoice = {
        "text": f"four white garden chairs, delivered on a Tuesday: invoice {INVOICE}",
        "id": "invoice",
    }
    index_texts(client, *near, *other, invoice)
    client.post(
        "/v1/images",
        files=[png_file("scan.png", "red")],
        data={
            "ids": json.dumps(["scan"]),
            "metadata": json.dumps([{"file": "scan-0042.png", "tags": {"by": ["Renée"]}}]),
        },
    )


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


def test_keyword_and_hybrid_search_find_an_exact_rare_token_that_vectors_rank_low(
    client: TestClient,
) -> None:
    _keyword_corpus(client)
    text = {"q": INVOICE, "target": "texts", "k": 40}
    by_vector = _ids(client.get("/v1/search/text", params=text))
    assert by_vector.index("invoice") >= 5  # the premise: vector search alone ranks it low
    assert _ids(client.get("/v1/search/text", params={**text, "mode": "keyword"})) == ["invoice"]
    keyword = client.get("/v1/search/text", params={**text, "mode": "keyword"}).json()["results"]
    for fusion in ("relative", "rrf"):
        hybrid = client.get("/v1/search/text", params={**text, "mode": "hybrid", "fusion": fusion})
        hits = hybrid.json()["results"]
        assert hits[0]["id"] == "invoice", fusion
        assert hits[0]["keyword_score"] == pytest.approx(keyword[0]["score"])
        assert all(h["keyword_score"] is None for h in hits[1:])
        # every hit's vector_score is its cosine, as vector search scores it
        cosines = {
            h["id"]: h["score"]
            for h in client.get("/v1/search/text", params=text).json()["results"]
        }
        for hit in hits:
            assert hit["vector_score"] == pytest.approx(cosines[hit["id"]], abs=1e-5)
        assert len(hits) == len(cosines)  # every item is in the vector ranking
    # alpha 1 is the vector ranking; the same route through POST /v1/search
    only_vectors = {**text, "mode": "hybrid", "alpha": 1.0}
    assert _ids(client.get("/v1/search/text", params=only_vectors))[:5] == by_vector[:5]
    body = {"query": [{"text": INVOICE}], "target": "texts", "mode": "hybrid", "k": 3}
    assert _ids(client.post("/v1/search", json=body))[0] == "invoice"
    assert _ids(client.post("/v1/search", json={**body, "mode": "keyword"})) == ["invoice"]
    # metadata strings are searched too, nested ones and without their accents
    images = {"target": "images", "mode": "keyword"}
    for words in ("scan-0042.png", "renee", "0042"):
        assert _ids(client.get("/v1/search/text", params={**images, "q": words})) == ["scan"]
    # nothing a user types is read as FTS5 syntax
    for odd in ('"', "*", "NEAR(x", "a AND", "-", ":", "^x", "(", "chairs OR"):
        assert (
            client.get("/v1/search/text", params={**text, "q": odd, "mode": "keyword"}).status_code
            == 200
        )
    # a replaced or deleted item is gone from both sides at once
    index_texts(client, {"text": "garden chairs", "id": "invoice"})
    assert _ids(client.get("/v1/search/text", params={**text, "mode": "keyword"})) == []
    assert client.delete("/v1/items/scan").status_code == 204
    assert _ids(client.get("/v1/search/text", params={**images, "q": "renee"})) == []
    hybrid_images = {**images, "q": "renee", "mode": "hybrid"}
    assert _ids(client.get("/v1/search/text", params=hybrid_images)) == []


def test_keyword_and_hybrid_search_take_filters_paging_cutoffs_and_negative_words(
    client: TestClient,
) -> None:
    index_texts(
        client,
        *[
            {"text": f"a {c} garden chair", "id": f"chair-{c}", "metadata": {"shop": s}}
            for c, s in [("red", "a"), ("blue", "b"), ("green", "a"), ("plastic red", "b")]
        ],
        {"text": "a red table", "id": "table", "metadata": {"shop": "a"}},
    )
    text = {"q": "red chair", "target": "texts", "k": 10}
    keyword = client.get("/v1/search/text", params={**text, "mode": "keyword"}).json()["results"]
    assert {h["id"] for h in keyword} == {
        "chair-red",
        "chair-blue",
        "chair-green",
        "chair-plastic red",
        "table",
    }
    scores = [h["score"] for h in keyword]
    assert scores == sorted(scores, reverse=True) and keyword[0]["id"] in (
        "chair-red",
        "chair-plastic red",
    )
    # filters apply to both sides before fusion
    shop_a = {**text, "filter": json.dumps({"shop": "a"})}
    for mode in ("keyword", "hybrid"):
        hits = client.get("/v1/search/text", params={**shop_a, "mode": mode}).json()["results"]
        assert {h["id"] for h in hits} == {"chair-red", "chair-green", "table"}, mode
    # pages of a hybrid ranking are slices of the whole ranking
    whole = _ids(client.get("/v1/search/text", params={**text, "mode": "hybrid"}))
    page = _ids(
        client.get("/v1/search/text", params={**text, "mode": "hybrid", "k": 2, "offset": 2})
    )
    assert page == whole[2:4]
    # min_score cuts on the mode's score
    cut = keyword[1]["score"]
    kept = _ids(client.get("/v1/search/text", params={**text, "mode": "keyword", "min_score": cut}))
    assert kept == [h["id"] for h in keyword if h["score"] >= cut]
    # a negative text part leaves the items holding its words out of the keyword ranking
    body = {
        "query": [{"text": "chair"}, {"text": "plastic", "weight": -0.5}],
        "target": "texts",
        "mode": "keyword",
    }
    assert set(_ids(client.post("/v1/search", json=body))) == {
        "chair-red",
        "chair-blue",
        "chair-green",
    }
