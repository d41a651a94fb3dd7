"""Several attacks at once against the real server: queries stay answered, memory stays bounded.

100 uploads that stall mid-body, four 49-megapixel 16-bit RGBA PNGs and four 49-megapixel 8-bit
PNGs at once, and a 256-query batch search over items with the largest metadata allowed, while a
probe sends a text query every 100 ms. Run alone with `pytest -m hostile -s` for the figures;
XMR_SOAK_MODEL runs it on another model (e.g. ViT-B-32 with XMR_SOAK_PRETRAINED unset: random
weights).
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app.test_server_process import free_port, server_env, start_server
from tests.reliability.probe import Probe
from tests.reliability.test_load import rss_mb
from xmr.client import XmrClient

pytestmark = pytest.mark.hostile
SIDE = 7000  # 49 megapixels: under the 50-megapixel cap
STALLED = 100


def png_16bit_rgba(side: int) -> bytes:
    """A mostly flat 16-bit RGBA PNG (about 380 KB for 7000x7000)."""
    row = np.zeros((side, 4), dtype=">u2").tobytes()
    striped = np.full((side, 4), 40000, dtype=">u2").tobytes()
    raw = b"".join(b"\x00" + (striped if y % 97 == 0 else row) for y in range(side))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def png_8bit_rgb(side: int) -> bytes:
    pixels = np.zeros((side, side, 3), dtype=np.uint8)
    pixels[::50] = (200, 40, 90)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def stall_uploads(port: int, count: int) -> list[socket.socket]:
    """Connections that send headers and part of a body, then nothing."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(
            b"POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n"
        )
        sockets.append(s)
    return sockets


async def attack(base: str, rgba16: bytes, rgb8: bytes) -> dict[str, list[int]]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:

        async def upload(data: bytes) -> int:
            files = {"files": ("big.png", data, "image/png")}
            return (await http.post("/v1/images", files=files)).status_code

        async def batch_search() -> int:
            body = {"queries": [f"query {i}" for i in range(256)], "k": 1, "target": "texts"}
            return (await http.post("/v1/search/text/batch", json=body)).status_code

        statuses = await asyncio.gather(
            *(upload(rgba16) for _ in range(4)),
            *(upload(rgb8) for _ in range(4)),
            batch_search(),
        )
    return {"rgba16": statuses[:4], "rgb8": statuses[4:8], "batch": statuses[8:]}


def test_attacks_at_once_leave_queries_fast_and_memory_bounded(tmp_path: Path) -> None:
    rgba16, rgb8 = png_16bit_rgba(SIDE), png_8bit_rgb(SIDE)
    port = free_port()
    extra = {"XMR_BODY_TIMEOUT_S": "20"}
    if "XMR_SOAK_MODEL" in os.environ:
        extra |= {
            "XMR_MODEL": os.environ["XMR_SOAK_MODEL"],
            "XMR_PRETRAINED": os.environ.get("XMR_SOAK_PRETRAINED", ""),
        }
    process = start_server(server_env(tmp_path / "data", port, **extra))
    base = f"http://127.0.0.1:{port}"
    stalled: list[socket.socket] = []
    peak = 0.0
    try:
        with XmrClient(base) as client:
            client.wait_ready(300)
            heavy = {"blob": "x" * 60_000}  # under the 64 KB metadata limit
            client.index_texts([{"text": f"text {i}", "metadata": heavy} for i in range(300)])
            client.search_text("warm up", k=5)
        rss_start = rss_mb(process.pid)
        with Probe(base) as probe:
            time.sleep(0.5)
            stalled = stall_uploads(port, STALLED)
            started = time.monotonic()
            statuses = asyncio.run(attack(base, rgba16, rgb8))
            attack_s = time.monotonic() - started
            peak = rss_mb(process.pid)
            time.sleep(1.0)
        rss_end = rss_mb(process.pid)
    finally:
        for s in stalled:
            s.close()
        process.kill()
        process.wait(30)
    latencies = np.array(probe.all_latencies) * 1000
    print(
        f"\nhostile soak: {STALLED} stalled uploads, 4 x 49 Mpx 16-bit RGBA {statuses['rgba16']}, "
        f"4 x 49 Mpx 8-bit RGB {statuses['rgb8']}, 256-query batch {statuses['batch']} in "
        f"{attack_s:.1f} s; text probe {len(latencies)} queries, p50 {np.median(latencies):.0f} "
        f"ms, max {latencies.max():.0f} ms; RSS {rss_start:.0f} -> peak {peak:.0f} -> "
        f"{rss_end:.0f} MB"
    )
    assert statuses["rgba16"] == [413] * 4  # 392 MB decoded: over the 256 MB bound
    assert statuses["rgb8"] == [201] * 4
    assert statuses["batch"] == [200]
    assert not probe.failures, probe.failures
    assert latencies.max() < 2000
    assert max(peak, rss_end) - rss_start < 800
