"""Bad requests get a clear 4xx, whatever the route."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.conftest import (
    image_bytes,
    png_file,
)


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "names"),
    [
        ("get", "/v1/search/text", {"params": {"q": "x", "k": 0}}, 422, "k"),
        ("get", "/v1/search/text", {"params": {"q": "x", "k": 5000}}, 422, "k must be"),
        ("get", "/v1/search/text", {"params": {"q": "x", "target": "videos"}}, 422, "target"),
        ("get", "/v1/search/text", {"params": {}}, 422, "q"),
        ("post", "/v1/texts", {"json": {"items": [{"text": "   "}]}}, 422, "items"),
        ("post", "/v1/texts", {"json": {"items": []}}, 422, "items"),
        (
            "post",
            "/v1/texts",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "JSON decode error",
        ),
        (
            "post",
            "/v1/texts",
            {"json": {"items": [{"text": "a", "id": "d"}, {"text": "b", "id": "d"}]}},
            422,
            "appears twice",
        ),
        (
            "post",
            "/v1/images",
            {"files": [("files", ("a.txt", b"not an image", "text/plain"))]},
            422,
            "files[0]",
        ),
        (
            "post",
            "/v1/images",
            {"files": [("files", ("a.png", b"", "image/png"))]},
            422,
            "files[0]",
        ),
        (
            "post",
            "/v1/images",
            {"files": [png_file("a.png", "red")], "data": {"ids": '["a", "b"]'}},
            422,
            "ids",
        ),
        (
            "post",
            "/v1/images",
            {"files": [png_file("a.png", "red")], "data": {"metadata": "[1]"}},
            422,
            "metadata[0]",
        ),
        ("post", "/v1/images", {"data": {"ids": "[]"}}, 422, "files"),
        (
            "post",
            "/v1/search/image",
            {"files": {"file": ("a.ppm", image_bytes(fmt="PPM"), "image/x-ppm")}},
            415,
            "PPM",
        ),
        (
            "post",
            "/v1/batch",
            {"json": {"items": [{"text": "a", "image_path": "b"}]}},
            422,
            "exactly one of",
        ),
        (
            "post",
            "/v1/batch",
            {"content": b"plain", "headers": {"content-type": "text/plain"}},
            422,
            "application/json",
        ),
        ("post", "/v1/embed/text", {"json": {"texts": [""]}}, 422, "texts[0]"),
        (
            "post",
            "/v1/texts",
            {
                "content": b'{"items": [{"text": "a", "metadata": {"x": NaN}}]}',
                "headers": {"content-type": "application/json"},
            },
            422,
            "metadata",
        ),
        (
            "post",
            "/v1/images",
            {"files": [png_file("a.png", "red")], "data": {"metadata": '[{"x": Infinity}]'}},
            422,
            "metadata",
        ),
        ("get", "/v1/jobs/nope", {}, 404, "nope"),
        ("post", "/v1/jobs/nope/resume", {}, 404, "nope"),
        ("get", "/v1/items/nope/content", {}, 404, "nope"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    client: TestClient, method: str, url: str, kwargs: dict, status: int, names: str
) -> None:
    """The status the README documents, a message naming what was wrong, the input not echoed."""
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    detail = json.dumps(response.json()["detail"])
    assert names in detail, detail
    echoed = [v for v in _strings_sent(kwargs) if len(v) >= 6 and v in response.text]
    assert not echoed, echoed


def _strings_sent(kwargs: dict) -> list[str]:
    """The string values a request carries (query, form and JSON values, a raw body)."""
    found: list[str] = []
    pending: list[object] = [kwargs.get(k) for k in ("params", "data", "json")]
    if isinstance(kwargs.get("content"), bytes):
        found.append(kwargs["content"].decode(errors="replace"))
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return found
