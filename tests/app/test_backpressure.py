"""A full encode queue answers 429 with Retry-After at once, and the service stays healthy."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.app.test_jobs import SlowEncoder


class GatedEncoder(SlowEncoder):
    """Text encoding held until the test opens the gate."""

    def __init__(self, inner: OpenClipEncoder) -> None:
        super().__init__(inner, 0.0)
        self.gate = threading.Event()

    def encode_tokens(self, rows: Sequence[Any]) -> np.ndarray:
        assert self.gate.wait(60), "the test never opened the gate"
        return super().encode_tokens(rows)


def test_overload_gets_429_at_once_and_others_succeed(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    """While the model is held, a full queue refuses at once: the 429s come back before it moves."""
    tight = settings.model_copy(update={"max_queue": 2, "max_batch": 2})
    encoder = GatedEncoder(tiny_encoder)
    refused_while_held: list[bool] = []
    with TestClient(create_app(tight, encoder=encoder)) as client:

        def search(i: int) -> tuple[int, str | None]:
            response = client.get("/v1/search/text", params={"q": f"query {i}"})
            if response.status_code == 429:
                refused_while_held.append(not encoder.gate.is_set())
            return response.status_code, response.headers.get("retry-after")

        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(search, i) for i in range(12)]
            # 1 in the model and 2 queued: the other 9 are refused while the model is held
            for _ in range(600):
                if len(refused_while_held) >= 9:
                    break
                threading.Event().wait(0.05)
            encoder.gate.set()
            results = [future.result() for future in futures]
        statuses = [status for status, _ in results]
        assert set(statuses) <= {200, 429}
        assert statuses.count(429) >= 4 and statuses.count(200) >= 2
        assert all(retry == "1" for status, retry in results if status == 429)
        assert refused_while_held and all(refused_while_held)
        assert client.get("/v1/search/text", params={"q": "after"}).status_code == 200
