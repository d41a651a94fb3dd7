"""Batch jobs across restarts: interrupted jobs say so, keep what was committed, and resume."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.conftest import wait_for_job


class SlowEncoder:
    """The real tiny encoder, slowed down so that a shutdown lands in the middle of a job."""

    def __init__(self, inner: OpenClipEncoder, delay_s: float) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self.model_id, self.dim, self.device = inner.model_id, inner.dim, inner.device
        self.precision, self.image_size = inner.precision, inner.image_size
        self.runtime, self.tower_runs = inner.runtime, inner.tower_runs
        self.prepare_image = inner.prepare_image
        self.tokenize = inner.tokenize

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_tokens(list(self.tokenize(texts)))

    def encode_tokens(self, rows: Sequence[Any]) -> np.ndarray:
        time.sleep(self._delay_s)
        return self._inner.encode_tokens(rows)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        time.sleep(self._delay_s)
        return self._inner.encode_images(images)

    def encode_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        time.sleep(self._delay_s)
        return self._inner.encode_prepared(prepared)


def test_interrupted_job_keeps_its_progress_and_resumes(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    small_batches = settings.model_copy(update={"encode_batch_size": 4})
    items = [{"id": f"t{i}", "text": f"caption {i}"} for i in range(200)]
    with TestClient(create_app(small_batches, encoder=SlowEncoder(tiny_encoder, 0.05))) as client:
        job_id = client.post("/v1/batch", json={"items": items}).json()["job_id"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{job_id}").json()["done"] < 8:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    # the app has shut down mid-job
    with TestClient(create_app(small_batches, encoder=tiny_encoder)) as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "interrupted"
        assert 8 <= job["done"] < 200
        assert client.get("/v1/info").json()["texts"] == job["done"]  # committed = counted done
        resumed = client.post(f"/v1/jobs/{job_id}/resume")
        assert resumed.status_code == 202
        final = wait_for_job(client, job_id)
        assert (final["status"], final["done"], final["failed"]) == ("done", 200, 0)
        assert client.get("/v1/info").json()["texts"] == 200
        assert client.post(f"/v1/jobs/{job_id}/resume").status_code == 409


def test_a_job_whose_storage_is_away_waits_for_it_instead_of_failing(
    settings: Settings, tiny_encoder: OpenClipEncoder, monkeypatch: Any
) -> None:
    from app.services.items import ItemService
    from index import VectorStoreUnavailableError

    store_items = ItemService.store_items
    outage = {"left": 2}  # two writes refused, as while Milvus restarts

    async def refused_at_first(self: ItemService, items: Sequence[Any]) -> list[str]:
        if outage["left"]:
            outage["left"] -= 1
            raise VectorStoreUnavailableError("Milvus could not write to: it does not answer")
        return await store_items(self, items)

    monkeypatch.setattr(ItemService, "store_items", refused_at_first)
    small_batches = settings.model_copy(update={"encode_batch_size": 4})
    items = [{"id": f"t{i}", "text": f"caption {i}"} for i in range(40)]
    with TestClient(create_app(small_batches, encoder=tiny_encoder)) as client:
        job_id = client.post("/v1/batch", json={"items": items}).json()["job_id"]
        final = wait_for_job(client, job_id, timeout_s=60)
        assert (final["status"], final["done"], final["failed"]) == ("done", 40, 0)
        assert outage["left"] == 0 and client.get("/v1/info").json()["texts"] == 40


def test_an_interrupted_vectors_job_resumes_where_it_stopped(
    settings: Settings, tiny_encoder: OpenClipEncoder, monkeypatch: Any
) -> None:
    import asyncio

    from app.jobs import batch
    from app.services.items import ItemService

    store_items = ItemService.store_items

    async def slowly(self: ItemService, items: Sequence[Any]) -> list[str]:
        await asyncio.sleep(0.1)  # so that the shutdown lands in the middle of the job
        return await store_items(self, items)

    monkeypatch.setattr(batch, "VECTOR_BATCH", 50)
    monkeypatch.setattr(ItemService, "store_items", slowly)
    rows = np.random.default_rng(0).standard_normal((1000, tiny_encoder.dim))
    items = [{"id": f"v{n}", "vector": row.tolist()} for n, row in enumerate(rows)]
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        job_id = client.post("/v1/vectors", json={"items": items}).json()["job_id"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{job_id}").json()["done"] < 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    monkeypatch.setattr(ItemService, "store_items", store_items)
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "interrupted" and 200 <= job["done"] < 1000
        assert client.get("/v1/info").json()["images"] == job["done"]
        assert client.post(f"/v1/jobs/{job_id}/resume").status_code == 202
        final = wait_for_job(client, job_id)
        assert (final["status"], final["done"], final["failed"]) == ("done", 1000, 0)
        assert client.get("/v1/info").json()["images"] == 1000  # each once
