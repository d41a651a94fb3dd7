"""The service with its records, keywords and jobs in PostgreSQL (XMR_DATABASE_URL): what a
client does against it, through a restart, and a deleted collection's records gone with it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.conftest import TINY_MODEL, png_file, wait_for_job


@pytest.fixture
def pg_settings(settings: Settings, postgres_database: str) -> Settings:
    return settings.model_copy(update={"database_url": SecretStr(postgres_database)})


@pytest.fixture
def client(pg_settings: Settings, tiny_encoder: OpenClipEncoder) -> Iterator[TestClient]:
    with TestClient(create_app(pg_settings, encoder=tiny_encoder)) as test_client:
        yield test_client


def schemas(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'xmr%'")
        return {row[0] for row in rows}


def test_writes_searches_and_jobs_live_in_postgresql(
    client: TestClient, pg_settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    texts = [
        {"id": "inv", "text": "invoice INV-2024-88317 paid", "metadata": {"year": 2024}},
        {"id": "cat", "text": "a cat on a mat", "metadata": {"year": 2019}},
        {"id": "dog", "text": "a dog in the park", "metadata": {"year": 2021}},
    ]
    assert client.post("/v1/texts", json={"items": texts}).status_code == 201
    images = client.post("/v1/images", files=[png_file("red.png", "red")])
    assert images.status_code == 201
    search = {"q": "a cat", "target": "texts", "k": 3}
    assert client.get("/v1/search/text", params=search).json()["results"][0]["id"] == "cat"
    keyword = {"q": "INV-2024-88317", "target": "texts", "mode": "keyword"}
    assert [h["id"] for h in client.get("/v1/search/text", params=keyword).json()["results"]] == [
        "inv"
    ]
    # hybrid fusion on PostgreSQL's ranking (ts_rank_cd): the item with the words leads
    hybrid = {"q": "invoice paid", "target": "texts", "k": 3, "mode": "hybrid", "alpha": 0.3}
    fused = client.get("/v1/search/text", params=hybrid).json()["results"]
    assert fused[0]["id"] == "inv" and fused[0]["keyword_score"] > 0
    assert all(h["vector_score"] is not None for h in fused)
    recent = {"q": "animal", "target": "texts", "k": 3, "filter": '{"year": {"gte": 2020}}'}
    found = {h["id"] for h in client.get("/v1/search/text", params=recent).json()["results"]}
    assert found == {"inv", "dog"}
    job_id = client.post("/v1/batch", json={"items": [{"id": "b1", "text": "batch one"}]})
    job = wait_for_job(client, job_id.json()["job_id"])
    assert (job["status"], job["done"]) == ("done", 1)
    assert client.delete("/v1/items/dog").status_code == 204
    url = pg_settings.database_url.get_secret_value()  # type: ignore[union-attr]
    with psycopg.connect(url) as conn:
        jobs = conn.execute("SELECT status FROM xmr_jobs.jobs").fetchall()
    assert jobs == [("done",)]  # the ledger is in PostgreSQL, not beside the data

    # a restart without the vector snapshots: the indexes are rebuilt from PostgreSQL
    client.__exit__(None, None, None)
    shutil.rmtree(pg_settings.data_dir / "index")
    with TestClient(create_app(pg_settings, encoder=tiny_encoder)) as again:
        info = again.get("/v1/info").json()
        assert (info["texts"], info["images"]) == (3, 1)
        ids = {h["id"] for h in again.get("/v1/search/text", params=search).json()["results"]}
        assert "cat" in ids and "dog" not in ids
        assert again.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "done"


def test_a_deleted_collection_takes_its_records_along(
    client: TestClient, postgres_database: str
) -> None:
    body = {"name": "shop", "model": TINY_MODEL, "pretrained": ""}
    assert client.post("/v1/collections", json=body).status_code == 201
    item = {"items": [{"id": "t", "text": "a red circle"}]}
    assert client.post("/v1/collections/shop/texts", json=item).status_code == 201
    before = schemas(postgres_database)
    assert client.delete("/v1/collections/shop").status_code == 204
    after = schemas(postgres_database)
    assert len(before - after) == 1  # the collection's schema, and only it
    assert client.post("/v1/collections", json=body).status_code == 201
    assert client.get("/v1/collections/shop").json()["texts"] == 0  # starts empty


def test_a_database_that_cannot_be_used_stops_the_start_with_one_line(
    settings: Settings, postgres_database: str
) -> None:
    from app.preflight import preflight
    from tests.postgres import _free_port

    def problem(url: str) -> str | None:
        return preflight(settings.model_copy(update={"database_url": SecretStr(url)}))

    assert problem(postgres_database) is None
    unknown = problem("mysql://xmr@127.0.0.1/xmr")
    assert unknown is not None and "XMR_DATABASE_URL: unknown database 'mysql'" in unknown
    down = problem(f"postgresql://xmr:secret@127.0.0.1:{_free_port()}/xmr")
    assert down is not None and down.startswith("XMR_DATABASE_URL: PostgreSQL does not answer")
    assert "\n" not in down and "secret" not in down
