"""Acknowledged means durable: SIGKILL the real server again and again while it indexes.

Run alone with `pytest -m crash -s` to see the figures.
"""

from __future__ import annotations

import io
import json
import random
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from index.blobs import thumbnail_path
from tests.app.test_server_process import free_port, server_env, start_server
from xmr.client import XmrClient

KILLS = 20
pytestmark = [pytest.mark.crash, pytest.mark.timeout(1200)]


@dataclass
class Acknowledged:
    texts: dict[str, str] = field(default_factory=dict)  # id -> text
    images: dict[str, bytes] = field(default_factory=dict)  # id -> bytes
    jobs: dict[str, dict[str, str]] = field(default_factory=dict)  # job id -> {id: text}
    lock: threading.Lock = field(default_factory=threading.Lock)


def noise_png(rng: random.Random) -> bytes:
    pixels = np.frombuffer(rng.randbytes(24 * 24 * 3), dtype=np.uint8).reshape(24, 24, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def stream_writes(base: str, acked: Acknowledged, stop: threading.Event, seed: int) -> None:
    """Index texts, images and batch jobs until stopped; remember what got a 2xx."""
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=10) as http:
        n = 0
        while not stop.is_set():
            n += 1
            tag = f"s{seed}-{n}"
            try:
                choice = rng.random()
                if choice < 0.5:
                    items = [
                        {
                            "id": f"{tag}-{j}",
                            "text": f"note {tag} {j} {rng.random()}",
                            "metadata": {"id": f"{tag}-{j}"},
                        }
                        for j in range(rng.randint(1, 8))
                    ]
                    if http.post("/v1/texts", json={"items": items}).status_code == 201:
                        with acked.lock:
                            acked.texts.update({i["id"]: i["text"] for i in items})
                elif choice < 0.85:
                    data = noise_png(rng)
                    response = http.post(
                        "/v1/images",
                        files={"files": ("n.png", data, "image/png")},
                        data={"ids": json.dumps([tag]), "metadata": json.dumps([{"id": tag}])},
                    )
                    if response.status_code == 201:
                        with acked.lock:
                            acked.images[tag] = data
                else:
                    items = [
                        {
                            "id": f"{tag}-b{j}",
                            "text": f"batch {tag} {j}",
                            "metadata": {"id": f"{tag}-b{j}"},
                        }
                        for j in range(20)
                    ]
                    response = http.post("/v1/batch", json={"items": items})
                    if response.status_code == 202:
                        with acked.lock:
                            acked.jobs[response.json()["job_id"]] = {
                                i["id"]: i["text"] for i in items
                            }
            except httpx.HTTPError:
                time.sleep(0.01)  # the server is down: keep trying until stopped


def test_no_acknowledged_item_is_lost_across_kills(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    env = server_env(data_dir, port, XMR_SNAPSHOT_INTERVAL_S="0.3")
    base = f"http://127.0.0.1:{port}"
    acked = Acknowledged()
    rng = random.Random(1234)
    for kill in range(KILLS):
        process = start_server(env)
        client = XmrClient(base)
        client.wait_ready(60)
        stop = threading.Event()
        writers = [
            threading.Thread(target=stream_writes, args=(base, acked, stop, kill * 10 + w))
            for w in range(3)
        ]
        for writer in writers:
            writer.start()
        time.sleep(rng.uniform(0.3, 2.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        stop.set()
        for writer in writers:
            writer.join()
        client.close()

    process = start_server(env)
    try:
        with XmrClient(base) as client:
            client.wait_ready(60)
            lost = verify(client, acked, data_dir)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    total = len(acked.texts) + len(acked.images)
    print(
        f"\ncrash test: {KILLS} SIGKILLs, {total} acknowledged items "
        f"({len(acked.texts)} texts, {len(acked.images)} images, {len(acked.jobs)} batch jobs), "
        f"lost {lost}"
    )
    assert lost == 0
    assert total > 200
    assert not list(data_dir.rglob("*.tmp"))


def verify(client: XmrClient, acked: Acknowledged, data_dir: Path) -> int:
    """Count acknowledged items that are missing or answer with another item's record."""
    expected = dict(acked.texts)
    with sqlite3.connect(data_dir / "jobs.sqlite3") as jobs_db:
        for job_id, items in acked.jobs.items():  # what a job counted done is acknowledged
            done = jobs_db.execute(
                "SELECT item_id FROM job_items WHERE job_id = ? AND status = 'done'", (job_id,)
            ).fetchall()
            expected.update({item_id: items[item_id] for (item_id,) in done})
            assert client.job(job_id)["failed"] == 0
    lost = 0
    # Searchable: the item's own content finds it among the top hits with score ~1 (tiny-model
    # vectors of noise images can tie, so rank alone is not the test); its record is its own.
    for item_id, text in expected.items():
        hits = client.search_text(text, k=10, target="texts")["results"]
        lost += not _found_with_own_record(hits, item_id)
    for item_id, data in acked.images.items():
        hits = client.search_image(data, k=10, target="images")["results"]
        lost += not _found_with_own_record(hits, item_id)
    # the keyword index is written in the records' transactions: exactly one row per item
    for item_id in list(expected)[:50]:
        hits = client.search_text(item_id, k=10, target="texts", mode="keyword")["results"]
        lost += item_id not in [h["id"] for h in hits]
    info = client.info()
    with sqlite3.connect(data_dir / "records.sqlite3") as records_db:
        rows = records_db.execute("SELECT kind, COUNT(*) FROM items GROUP BY kind").fetchall()
        unindexed = records_db.execute(
            "SELECT label FROM items EXCEPT SELECT rowid FROM keywords"
        ).fetchall()
        orphans = records_db.execute(
            "SELECT rowid FROM keywords EXCEPT SELECT label FROM items"
        ).fetchall()
        image_paths = [
            path
            for (path,) in records_db.execute(
                "SELECT content_path FROM items WHERE kind = 'image'"
            ).fetchall()
        ]
    assert unindexed == [] and orphans == []
    # every image's thumbnail was made durable before its record committed
    without_thumbnail = [
        path for path in image_paths if not (data_dir / "blobs" / thumbnail_path(path)).is_file()
    ]
    assert image_paths and without_thumbnail == []
    counts = dict(rows)
    assert (info["images"], info["texts"]) == (counts.get("image", 0), counts.get("text", 0))
    assert info["texts"] >= len(expected) and info["images"] >= len(acked.images)
    acked.texts = expected
    return lost


def _found_with_own_record(hits: list[dict], item_id: str) -> bool:
    own = [h for h in hits if h["id"] == item_id]
    every_record_is_its_own = all(h["metadata"]["id"] == h["id"] for h in hits)
    return bool(own) and own[0]["score"] > 0.9999 and every_record_is_its_own
