"""Body-size limits (413 without buffering) and API-key protection of every route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.conftest import image_bytes

KEY = "s3cret-key"


@pytest.fixture
def small_limit_client(settings: Settings, tiny_encoder: OpenClipEncoder) -> Iterator[TestClient]:
    limited = settings.model_copy(update={"max_upload_mb": 0.05, "max_batch_upload_mb": 0.2})
    with TestClient(create_app(limited, encoder=tiny_encoder)) as client:
        yield client


def test_declared_oversized_body_gets_413(small_limit_client: TestClient) -> None:
    big = image_bytes(size=(400, 400), fmt="BMP")  # about 480 KB > 50 KB
    response = small_limit_client.post("/v1/images", files=[("files", ("a.bmp", big, "image/bmp"))])
    assert response.status_code == 413
    assert "0.05 MB" in response.json()["detail"]


def test_chunked_body_without_length_gets_413(small_limit_client: TestClient) -> None:
    # TestClient buffers the body; tests/app/test_server_process.py checks the streaming cut-off
    chunks = (b"x" * 10_000 for _ in range(100))
    response = small_limit_client.post(
        "/v1/texts", content=chunks, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_batch_route_has_its_own_larger_limit(small_limit_client: TestClient) -> None:
    bmp = image_bytes(size=(120, 120), fmt="BMP")  # 43 KB each: 3 pass 0.2 MB, not 0.05 MB
    files = [("files", (f"{i}.bmp", bmp, "image/bmp")) for i in range(3)]
    assert small_limit_client.post("/v1/images", files=files).status_code == 413
    assert small_limit_client.post("/v1/batch", files=files).status_code == 202


@pytest.fixture
def keyed_client(settings: Settings, tiny_encoder: OpenClipEncoder) -> Iterator[TestClient]:
    keyed = settings.model_copy(update={"api_key": SecretStr(KEY)})
    with TestClient(create_app(keyed, encoder=tiny_encoder)) as client:
        yield client


def all_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every documented operation, plus the docs themselves."""
    spec = client.app.openapi()  # type: ignore[attr-defined]
    routes = [
        (method.upper(), path.replace("{item_id}", "x").replace("{job_id}", "x"))
        for path, operations in spec["paths"].items()
        for method in operations
    ]
    return routes + [("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/redoc")]


def test_every_route_but_health_needs_the_key(keyed_client: TestClient) -> None:
    routes = all_routes(keyed_client)
    assert len(routes) >= 15
    for method, path in routes:
        anonymous = keyed_client.request(method, path)
        if path in ("/healthz", "/readyz"):
            assert anonymous.status_code == 200, path
        else:
            assert anonymous.status_code == 401, (method, path)
            wrong = keyed_client.request(method, path, headers={"X-API-Key": "nope"})
            assert wrong.status_code == 401, (method, path)
            for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
                assert keyed_client.request(method, path, headers=headers).status_code != 401


def test_docs_can_be_made_public(settings: Settings, tiny_encoder: OpenClipEncoder) -> None:
    public = settings.model_copy(update={"api_key": SecretStr(KEY), "docs_public": True})
    with TestClient(create_app(public, encoder=tiny_encoder)) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/v1/info").status_code == 401


def test_the_page_and_its_files_are_public_and_hold_no_data(keyed_client: TestClient) -> None:
    """RELIABILITY.md: the page and /static/ answer without the key; the data routes do not."""
    for path in ("/", "/static/app.js", "/static/style.css", "/static/swagger/swagger-ui.css"):
        assert keyed_client.get(path).status_code == 200, path
    assert keyed_client.get("/docs").status_code == 401  # the docs list the API: behind the key
    assert keyed_client.get("/static/../v1/info").status_code in (401, 404)
    assert keyed_client.get("/v1/info").status_code == 401
