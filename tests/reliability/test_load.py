"""Load: 50 concurrent clients mix searches and indexing against the real server for a minute.

Run alone with `pytest -m load -s` to see the figures; XMR_LOAD_SECONDS changes the duration.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app.test_server_process import free_port, server_env, start_server
from xmr.client import XmrClient

pytestmark = pytest.mark.load
CLIENTS = 50
SECONDS = float(os.environ.get("XMR_LOAD_SECONDS", "60"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def small_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


async def client_loop(http: httpx.AsyncClient, worker: int, deadline: float, log: list) -> None:
    rng = random.Random(worker)
    n = 0
    while time.monotonic() < deadline:
        n += 1
        action = rng.random()
        started = time.perf_counter()
        if action < 0.55:
            response = await http.get(
                "/v1/search/text", params={"q": f"query {rng.random()}", "k": 10}
            )
        elif action < 0.7:
            files = {"file": ("q.png", small_png(rng.randrange(1000)), "image/png")}
            response = await http.post("/v1/search/image", files=files, data={"target": "images"})
        elif action < 0.9:
            items = [{"text": f"w{worker} n{n} {j}", "id": f"w{worker}-{n}-{j}"} for j in range(4)]
            response = await http.post("/v1/texts", json={"items": items})
        else:
            files = {"files": ("i.png", small_png(worker * 100000 + n), "image/png")}
            response = await http.post("/v1/images", files=files)
        log.append((action, response.status_code, (time.perf_counter() - started) * 1000))
        if response.status_code == 429:
            await asyncio.sleep(float(response.headers.get("retry-after", "1")) * rng.random())


async def run_load(base: str, seconds: float) -> list:
    log: list = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(client_loop(http, w, deadline, log) for w in range(CLIENTS)))
    return log


def test_fifty_clients_for_a_minute(tmp_path: Path) -> None:
    port = free_port()
    process = start_server(server_env(tmp_path / "data", port))
    base = f"http://127.0.0.1:{port}"
    try:
        with XmrClient(base) as client:
            client.wait_ready(60)
            client.index_texts([{"text": f"seed {i}"} for i in range(100)])
        asyncio.run(run_load(base, 3))  # warm-up
        rss_before = rss_mb(process.pid)
        log = asyncio.run(run_load(base, SECONDS))
        rss_after = rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    statuses = [status for _, status, _ in log]
    errors = [s for s in statuses if s not in (200, 201, 429)]
    ok = [ms for _, status, ms in log if status in (200, 201)]
    searches = [ms for action, status, ms in log if status == 200 and action < 0.7]
    p50, p99 = np.percentile(ok, 50), np.percentile(ok, 99)
    print(
        f"\nload test: {CLIENTS} clients, {SECONDS:.0f}s, {len(log)} requests "
        f"({len(log) / SECONDS:.1f}/s), errors {len(errors)}, 429s {statuses.count(429)}, "
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, search p50 {statistics.median(searches):.0f} ms, "
        f"RSS {rss_before:.0f} -> {rss_after:.0f} MB ({rss_after - rss_before:+.0f} MB)"
    )
    assert not errors, sorted(set(errors))
    assert len(ok) > CLIENTS * 5
    assert rss_after - rss_before < 300
