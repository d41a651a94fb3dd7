"""A tagging job never undoes what a client wrote: tags are merged into each item's metadata as
it is when written, items rewritten since they were read are left for a later run, metadata
never grows past XMR_MAX_METADATA_BYTES, and a field items hold already needs `overwrite`."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.services import classify as classify_module
from tests.conftest import wait_for_job

LABELS = [f"label {n}" for n in range(50)]


def put_texts(http: httpx.Client, *items: dict[str, Any]) -> None:
    response = http.post("/v1/texts", json={"items": list(items)})
    assert response.status_code == 201, response.text


def tag(http: httpx.Client, **extra: Any) -> httpx.Response:
    body = {"labels": LABELS, "field": "owner", "target": "texts", **extra}
    return http.post("/v1/classify/tag", json=body)


def test_a_write_during_tagging_is_never_overwritten(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_texts(http, *[{"id": f"t{n}", "text": f"text {n}", "metadata": {"v": 1}} for n in range(6)])
    ranking, rewritten = threading.Event(), threading.Event()
    rank = classify_module.ClassifyService.rank

    async def rank_after_a_rewrite(self: Any, *args: Any) -> Any:
        ranking.set()  # the job has read its records; the client now rewrites one
        while not rewritten.is_set():
            await asyncio.sleep(0.02)
        return await rank(self, *args)

    monkeypatch.setattr(classify_module.ClassifyService, "rank", rank_after_a_rewrite)
    response = tag(http, overwrite=True)
    assert response.status_code == 202, response.text
    assert ranking.wait(30)
    new = {"v": 2, "owner": "bob", "important": "keep me"}
    put_texts(http, {"id": "t3", "text": "a new text", "metadata": new})
    rewritten.set()
    job = wait_for_job(http, response.json()["job_id"])
    assert job["status"] == "done", job
    item = http.get("/v1/items/t3").json()
    assert (item["text"], item["metadata"]) == ("a new text", new)
    for n in (0, 1, 2, 4, 5):
        metadata = http.get(f"/v1/items/t{n}").json()["metadata"]
        assert metadata["v"] == 1 and metadata["owner"] in LABELS


def test_tagging_never_pushes_metadata_past_the_limit(
    http: httpx.Client, settings: Settings
) -> None:
    limit = settings.max_metadata_bytes
    padding = "x" * (limit - len(json.dumps({"pad": ""})) - 10)
    full = {"pad": padding}
    assert len(json.dumps(full).encode()) <= limit
    put_texts(
        http, {"id": "full", "text": "full", "metadata": full}, {"id": "small", "text": "small"}
    )
    for run in range(5):
        response = tag(http, field=f"tag{run}")
        assert response.status_code == 202, response.text
        assert wait_for_job(http, response.json()["job_id"])["status"] == "done"
    stored = http.get("/v1/items/full").json()["metadata"]
    assert stored == full  # no room for a tag: left as it was
    assert len(json.dumps(stored, ensure_ascii=False).encode()) <= limit
    small = http.get("/v1/items/small").json()["metadata"]
    assert all(f"tag{run}" in small for run in range(5))
    again = http.post(
        "/v1/texts", json={"items": [{"id": "full", "text": "x", "metadata": stored}]}
    )
    assert again.status_code == 201, again.text


def test_tagging_into_a_field_items_hold_is_a_409_unless_overwrite(http: httpx.Client) -> None:
    put_texts(
        http,
        {"id": "a", "text": "a", "metadata": {"owner": "alice"}},
        {"id": "b", "text": "b", "metadata": {"other": 1}},
    )
    refused = tag(http)
    assert refused.status_code == 409
    assert "overwrite" in refused.json()["detail"]
    other = tag(http, filter={"other": 1})  # none of those has the field
    assert other.status_code == 202
    wait_for_job(http, other.json()["job_id"])
    response = tag(http, overwrite=True)
    assert response.status_code == 202
    wait_for_job(http, response.json()["job_id"])
    assert http.get("/v1/items/a").json()["metadata"]["owner"] in LABELS
