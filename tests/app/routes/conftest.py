"""The API routes, tested through a real app on the tiny model: once per vector backend, and
once through /v1 and once through the default collection's routes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.conftest import (
    BACKENDS,
    DefaultCollectionClient,
    with_backend,
)


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """These API tests run once per vector backend."""
    return with_backend(settings, request.param)


@pytest.fixture(params=["/v1", "/v1/collections/default"])
def client(
    request: pytest.FixtureRequest, settings: Settings, tiny_encoder: OpenClipEncoder
) -> Iterator[TestClient]:
    """...and once through the routes of today, once through the default collection's."""
    client_type = TestClient if request.param == "/v1" else DefaultCollectionClient
    with client_type(create_app(settings, encoder=tiny_encoder)) as test_client:
        yield test_client


def index_texts(client: TestClient, *items: dict) -> list[str]:
    response = client.post("/v1/texts", json={"items": list(items)})
    assert response.status_code == 201, response.text
    return response.json()["ids"]
