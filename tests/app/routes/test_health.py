"""Liveness, readiness, /v1/info and the OpenAPI documents."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.conftest import (
    TINY_MODEL,
)


def test_health_ready_and_info(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/info").json()
    assert info["model"] == TINY_MODEL and info["dim"] == 64 and info["device"] == "cpu"
    assert (info["images"], info["texts"]) == (0, 0)
    # the fixture's encoder: the default runtime, which reproduces PyTorch here
    assert (info["runtime"], info["precision"]) == ("openvino", "fp32")


def test_readyz_is_503_outside_the_lifespan(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    app = create_app(settings, encoder=tiny_encoder)
    client = TestClient(app)  # not entered: the lifespan has not loaded anything
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    response = client.get("/v1/info")
    assert response.status_code == 503 and "Retry-After" in response.headers


def test_openapi_docs_are_served_with_examples(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/images",
        "/v1/texts",
        "/v1/batch",
        "/v1/search/text",
        "/v1/search/image",
        "/v1/items/{item_id}",
        "/v1/jobs/{job_id}",
        "/v1/embed/text",
        "/v1/embed/image",
    ):
        assert path in spec["paths"], path
    assert "a red circle" in str(spec)
