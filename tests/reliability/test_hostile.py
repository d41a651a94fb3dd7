"""Hostile clients: requests built to break the service, each answered without harm.

Every test here failed on the release before the hostile-client work (issue 12); RELIABILITY.md
lists them under "Hostile clients".
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from index import MAX_METADATA_DEPTH
from models import OpenClipEncoder
from tests.conftest import image_bytes


def nested(depth: int) -> dict:
    """An object whose innermost list sits `depth` levels down (the object itself is level 1)."""
    return {"a": json.loads("[" * (depth - 1) + "]" * (depth - 1))}


def index_texts(client: TestClient, *items: dict) -> list[str]:
    response = client.post("/v1/texts", json={"items": list(items)})
    assert response.status_code == 201, response.text
    return response.json()["ids"]


# -- 1. poisoned records ---------------------------------------------------------------------


def test_metadata_nested_too_deep_is_refused_on_every_route(client: TestClient) -> None:
    deep = nested(260)
    text = client.post("/v1/texts", json={"items": [{"text": "x", "metadata": deep}]})
    assert text.status_code == 422
    assert "nested deeper than the 32 levels" in text.text
    image = client.post(
        "/v1/images",
        files=[("files", ("a.png", image_bytes("red"), "image/png"))],
        data={"metadata": json.dumps([deep])},
    )
    assert image.status_code == 422
    assert image.json()["detail"].startswith("files[0].metadata: nested deeper")
    batch_json = client.post("/v1/batch", json={"items": [{"text": "x", "metadata": deep}]})
    assert batch_json.status_code == 422
    batch_form = client.post(
        "/v1/batch",
        files=[("files", ("a.png", image_bytes("red"), "image/png"))],
        data={"metadata": json.dumps([deep])},
    )
    assert batch_form.status_code == 422
    assert batch_form.json()["detail"].startswith("items[0].metadata: nested deeper")
    assert client.get("/v1/info").json()["texts"] == 0


def test_metadata_at_the_limits_is_stored_and_returned(client: TestClient) -> None:
    deepest = nested(MAX_METADATA_DEPTH)
    index_texts(client, {"text": "deep enough", "id": "d", "metadata": deepest})
    assert client.get("/v1/items/d").json()["metadata"] == deepest
    hits = client.get("/v1/search/text", params={"q": "deep enough", "target": "texts"})
    assert hits.status_code == 200 and hits.json()["results"][0]["metadata"] == deepest
    too_deep = client.post(
        "/v1/texts", json={"items": [{"text": "x", "metadata": nested(MAX_METADATA_DEPTH + 1)}]}
    )
    assert too_deep.status_code == 422


def test_metadata_larger_than_the_limit_is_refused(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    small = settings.model_copy(update={"max_metadata_bytes": 1000})
    with TestClient(create_app(small, encoder=tiny_encoder)) as client:
        fits = {"note": "x" * 900}
        index_texts(client, {"text": "fits", "metadata": fits})
        item = {"text": "x", "metadata": {"n": "x" * 1000}}
        too_big = client.post("/v1/texts", json={"items": [item]})
        assert too_big.status_code == 422
        detail = too_big.json()["detail"]
        assert detail.startswith("items[0].metadata:") and "XMR_MAX_METADATA_BYTES" in detail
        assert "xxxxxxxxxx" not in detail  # the input is not echoed


def test_a_record_stored_by_an_older_release_cannot_break_search(
    client: TestClient, settings: Settings
) -> None:
    """Metadata 300 deep, written straight into SQLite as the old release allowed."""
    index_texts(client, {"text": "poison", "id": "poison"}, {"text": "fine", "id": "fine"})
    with sqlite3.connect(settings.data_dir / "records.sqlite3") as db:
        db.execute("UPDATE items SET metadata = ? WHERE id = 'poison'", (json.dumps(nested(300)),))
    hits = client.get("/v1/search/text", params={"q": "poison", "target": "texts", "k": 10})
    assert hits.status_code == 200
    by_id = {hit["id"]: hit for hit in hits.json()["results"]}
    assert set(by_id) == {"poison", "fine"} and by_id["poison"]["metadata"] is None
    assert client.get("/v1/items/poison").status_code == 200


# -- 2. deep JSON in form and query fields ----------------------------------------------------


@pytest.mark.parametrize("field", ["ids", "metadata"])
def test_deep_json_in_form_fields_is_a_422(client: TestClient, field: str) -> None:
    response = client.post(
        "/v1/images",
        files=[("files", ("a.png", image_bytes("red"), "image/png"))],
        data={field: "[" * 100_000},
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"{field} must be a JSON list")


def test_deep_json_in_a_filter_is_a_422(client: TestClient) -> None:
    query = client.get("/v1/search/text", params={"q": "x", "filter": "[" * 15_000})
    assert query.status_code == 422 and "nested too deeply" in query.text
    form = client.post(
        "/v1/search/image",
        files={"file": ("q.png", image_bytes("red"), "image/png")},
        data={"filter": "{" * 100_000},
    )
    assert form.status_code == 422


def test_deep_json_body_is_a_4xx(client: TestClient) -> None:
    body = '{"items": [{"text": "x", "metadata": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}]}"
    for url in ("/v1/texts", "/v1/batch"):
        response = client.post(url, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, response.text


# -- 8. response amplification ----------------------------------------------------------------


def test_a_batch_search_cannot_build_a_huge_response(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    budget = settings.model_copy(update={"max_response_mb": 1.0})
    with TestClient(create_app(budget, encoder=tiny_encoder)) as client:
        index_texts(client, {"text": "heavy", "id": "h", "metadata": {"blob": "x" * 60_000}})
        queries = ["heavy"] * 16
        body = {"queries": queries, "k": 1, "target": "texts"}
        fine = client.post("/v1/search/text/batch", json=body)
        assert fine.status_code == 200  # 16 x 60 KB: under 1 MB
        too_big = client.post(
            "/v1/search/text/batch", json={"queries": queries * 2, "k": 1, "target": "texts"}
        )
        assert too_big.status_code == 422
        assert "XMR_MAX_RESPONSE_MB" in too_big.json()["detail"]


def test_queries_times_k_is_bounded(client: TestClient) -> None:
    response = client.post(
        "/v1/search/text/batch", json={"queries": ["a"] * 256, "k": 1000, "target": "texts"}
    )
    assert response.status_code == 422
    assert "queries x (k + offset)" in response.json()["detail"]


def test_texts_longer_than_the_limit_are_refused(client: TestClient) -> None:
    from app.schemas import MAX_TEXT_CHARS

    response = client.post("/v1/texts", json={"items": [{"text": "x" * (MAX_TEXT_CHARS + 1)}]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "items", 0, "text"]


# -- 10. input is never echoed whole ----------------------------------------------------------


def test_errors_quote_a_short_escaped_excerpt_of_the_input(client: TestClient) -> None:
    long_id = quote("evil\n" + "z" * 5000, safe="")
    for response in (
        client.get(f"/v1/items/{long_id}"),
        client.get(f"/v1/jobs/{long_id}"),
        client.post("/v1/batch", json={"items": [{"image_path": "../" + "a" * 5_000_000}]}),
    ):
        assert 400 <= response.status_code < 500
        detail = response.json()["detail"]
        assert len(detail) < 200, detail[:300]
        assert "\n" not in detail


def test_a_newline_in_the_path_cannot_forge_a_log_line(client: TestClient) -> None:
    from app.observability.logs import TEXT_FORMAT, RequestIdFilter, TextFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(TextFormatter(TEXT_FORMAT))
    access = logging.getLogger("xmr.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        client.get("/v1/items/a%0A2026-01-01 INFO xmr.access forged" + "%0A" * 3 + "x" * 5000)
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "\\x0a2026-01-01 INFO xmr.access forged" in lines[0]
    assert len(lines[0]) < 700


# -- 11. ids with slashes and other reserved characters ---------------------------------------

ODD_IDS = [
    "p",
    "p/content",
    "/content",
    "a/b/c",
    "100%",
    "%2F",
    "what?x=1",
    "tag#1",
    "with space",
    "日本/写真.jpg",
]


def test_odd_ids_through_every_item_route_and_the_client(live_server: str) -> None:
    from xmr.client import XmrClient, XmrError

    images = {item_id: image_bytes((n * 20, 255 - n * 20, 90)) for n, item_id in enumerate(ODD_IDS)}
    with XmrClient(live_server) as client:
        assert client.index_images(list(images.values()), ids=list(images)) == ODD_IDS
        for item_id, data in images.items():
            assert client.get_item(item_id)["id"] == item_id
            assert client.item_content(item_id) == data
        # the plain routes spell it out: an encoded slash belongs to the id
        import httpx

        with httpx.Client(base_url=live_server) as http:
            assert http.get("/v1/items/p%2Fcontent").json()["id"] == "p/content"
            assert http.get("/v1/items/p/content").content == images["p"]
            assert http.get("/v1/items/p%2Fcontent/content").content == images["p/content"]
        for item_id in ODD_IDS:
            client.delete_item(item_id)
            with pytest.raises(XmrError) as gone:
                client.get_item(item_id)
            assert gone.value.status == 404
        assert client.info()["images"] == 0
