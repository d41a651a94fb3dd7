"""A full encode queue answers 429 with Retry-After at once, and the service stays healthy."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.app.test_jobs import SlowEncoder


def test_overload_gets_429_quickly_and_others_succeed(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    tight = settings.model_copy(update={"max_queue": 2, "max_batch": 2})
    with TestClient(create_app(tight, encoder=SlowEncoder(tiny_encoder, 0.2))) as client:

        def search(i: int) -> tuple[int, float, str | None]:
            started = time.perf_counter()
            response = client.get("/v1/search/text", params={"q": f"query {i}"})
            return (
                response.status_code,
                time.perf_counter() - started,
                response.headers.get("retry-after"),
            )

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(search, range(12)))
        statuses = [status for status, _, _ in results]
        assert set(statuses) <= {200, 429}
        assert statuses.count(429) >= 4 and statuses.count(200) >= 2
        refused = [(elapsed, retry) for status, elapsed, retry in results if status == 429]
        assert all(retry == "1" for _, retry in refused)
        assert min(elapsed for elapsed, _ in refused) < 0.15  # refused without waiting its turn
        assert client.get("/v1/search/text", params={"q": "after"}).status_code == 200
