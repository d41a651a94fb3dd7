"""`xmr import-embeddings`: clip-retrieval's output (npy shards + parquet, in exactly its
layout) and plain npy + parquet into a collection, checked, idempotent, resumable."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from index.store import ItemStore
from models import OpenClipEncoder, decode_image
from tests.conftest import TINY_MODEL, serve_in_thread
from tests.xmr.commands import REPO, run_xmr
from xmr.import_embeddings import import_embeddings
from xmr.shapes import random_scene, render


def photos(root: Path, count: int) -> dict[str, bytes]:
    """Distinct scenes as PNG files under `root`: absolute path -> bytes."""
    rng = np.random.default_rng(7)
    made = {}
    for n in range(count):
        image = render(random_scene(rng, 2, min_side=96, max_side=160))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        path = root / "photos" / f"p{n:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        made[str(path)] = buffer.getvalue()
    return made


def clip_retrieval_folder(
    folder: Path, images: dict[str, bytes], encoder: OpenClipEncoder, shard: int = 8
) -> None:
    """What `clip-retrieval inference` writes: img_emb/, text_emb/ and metadata/ shards, the
    vectors in float16 as it saves them."""
    paths = list(images)
    vectors = encoder.encode_prepared(
        [encoder.prepare_image(decode_image(images[p])) for p in paths]
    )
    captions = [f"picture number {n}" for n in range(len(paths))]
    caption_vectors = encoder.encode_texts(captions)
    for name in ("img_emb", "text_emb", "metadata"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(paths), shard)):
        rows = slice(start, start + shard)
        np.save(folder / "img_emb" / f"img_emb_{number}.npy", vectors[rows].astype(np.float16))
        np.save(
            folder / "text_emb" / f"text_emb_{number}.npy",
            caption_vectors[rows].astype(np.float16),
        )
        table = pa.table(
            {
                "image_path": paths[rows],
                "caption": captions[rows],
                "width": [160] * len(paths[rows]),
                "exif": [None] * len(paths[rows]),
            }
        )
        pq.write_table(table, folder / "metadata" / f"metadata_{number}.parquet")


xmr = run_xmr


def server_env(tmp_path: Path) -> dict[str, str]:
    return {
        "XMR_MODEL": TINY_MODEL,
        "XMR_PRETRAINED": "",
        "XMR_DEVICE": "cpu",
        "XMR_PRECISION": "fp32",
        "XMR_DATA_DIR": str(tmp_path / "data"),
        "XMR_IMPORT_ROOT": str(tmp_path),
    }


def settings_for(tmp_path: Path) -> Settings:
    return Settings(
        model=TINY_MODEL,
        pretrained="",
        device="cpu",
        data_dir=tmp_path / "data",
        import_root=tmp_path,
        snapshot_interval_s=3600,
        allowed_hosts="testserver",
    )


def image_count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "records.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM items WHERE kind = 'image'").fetchone()[0])


def test_a_clip_retrieval_folder_imports_and_each_image_finds_itself(
    tmp_path: Path, tiny_encoder: OpenClipEncoder
) -> None:
    images = photos(tmp_path, 12)
    clip_retrieval_folder(tmp_path / "embeddings", images, tiny_encoder)
    env = server_env(tmp_path)
    first = xmr("import-embeddings", str(tmp_path / "embeddings"), "--verify", "4", **env)
    assert first.returncode == 0, first.stderr
    assert "verified 4 images against the collection's model" in first.stdout
    assert "imported 12 images and 12 captions, 0 failed" in first.stdout
    again = xmr("import-embeddings", str(tmp_path / "embeddings"), **env)
    assert again.returncode == 0, again.stderr
    assert image_count(tmp_path / "data") == 12  # twice imported, stored once
    with TestClient(create_app(settings_for(tmp_path), encoder=tiny_encoder)) as client:
        assert client.get("/v1/info").json()["images"] == 12
        for path, data in images.items():
            hits = client.post(
                "/v1/search/image", files={"file": ("q.png", data)}, data={"target": "images"}
            ).json()["results"]
            assert hits[0]["id"] == path and hits[0]["score"] > 0.999
        record = client.get(f"/v1/items/{path.replace('/', '%2F')}").json()
        assert record["metadata"] == {"image_path": path, "width": 160}
        assert record["thumbnail_url"] is None
        content = client.get(f"/v1/items/{path.replace('/', '%2F')}/content")
        assert content.status_code == 404 and "imported as a vector" in content.json()["detail"]
        caption = client.get("/v1/search/text", params={"q": "picture number 3", "target": "texts"})
        top = caption.json()["results"][0]
        assert top["metadata"]["image_id"].endswith("p003.png") and top["id"].endswith("#0")


def test_a_folder_made_by_another_model_fails_verify_and_nothing_is_imported(
    tmp_path: Path, tiny_encoder: OpenClipEncoder
) -> None:
    images = photos(tmp_path, 6)
    clip_retrieval_folder(tmp_path / "embeddings", images, tiny_encoder)
    rng = np.random.default_rng(0)
    for shard in (tmp_path / "embeddings" / "img_emb").glob("*.npy"):  # another model's vectors
        rows = np.load(shard).shape[0]
        np.save(shard, rng.standard_normal((rows, tiny_encoder.dim)).astype(np.float16))
    result = xmr(
        "import-embeddings", str(tmp_path / "embeddings"), "--verify", "4", **server_env(tmp_path)
    )
    assert result.returncode == 2
    assert "are not this collection's model's" in result.stderr
    assert image_count(tmp_path / "data") == 0
    wrong_dim = tmp_path / "wide"
    wrong_dim.mkdir()
    np.save(wrong_dim / "vectors.npy", rng.standard_normal((3, 512)).astype(np.float32))
    pq.write_table(pa.table({"id": ["a", "b", "c"]}), wrong_dim / "metadata.parquet")
    refused = xmr("import-embeddings", str(wrong_dim), **server_env(tmp_path))
    assert refused.returncode == 2 and "512 dimensions" in refused.stderr


def test_through_a_running_server_each_image_finds_itself_and_twice_stores_once(
    tmp_path: Path, tiny_encoder: OpenClipEncoder
) -> None:
    images = photos(tmp_path, 12)
    folder = tmp_path / "embeddings"
    clip_retrieval_folder(folder, images, tiny_encoder)
    env = {"XMR_IMPORT_ROOT": str(tmp_path)}  # where --verify reads the originals
    settings = settings_for(tmp_path).model_copy(update={"allowed_hosts": "127.0.0.1"})
    with serve_in_thread(create_app(settings, encoder=tiny_encoder)) as url:
        args = ("import-embeddings", str(folder), "--server", url, "--chunk", "5")
        first = xmr(*args, "--verify", "4", **env)
        assert first.returncode == 0, first.stderr
        assert "verified 4 images against the collection's model" in first.stdout
        assert "imported 12 images and 12 captions, 0 failed" in first.stdout
        again = xmr(*args, **env)
        assert again.returncode == 0, again.stderr
        with httpx.Client(base_url=url, timeout=60) as http:
            info = http.get("/v1/info").json()
            assert (info["images"], info["texts"]) == (12, 12)  # sent twice, stored once
            for path, data in images.items():
                hits = http.post(
                    "/v1/search/image", files={"file": ("q.png", data)}, data={"target": "images"}
                ).json()["results"]
                assert hits[0]["id"] == path and hits[0]["score"] > 0.999
        rng = np.random.default_rng(0)
        for shard in (folder / "img_emb").glob("*.npy"):  # now another model's vectors
            np.save(shard, rng.standard_normal(np.load(shard).shape).astype(np.float16))
        refused = xmr(*args, "--verify", "4", **env)
        assert refused.returncode == 2 and "are not this collection's model's" in refused.stderr
        wide = tmp_path / "wide"
        wide.mkdir()
        np.save(wide / "vectors.npy", rng.standard_normal((3, 512)).astype(np.float32))
        pq.write_table(pa.table({"id": ["a", "b", "c"]}), wide / "metadata.parquet")
        wrong = xmr("import-embeddings", str(wide), "--server", url, **env)
        assert wrong.returncode == 2 and "512 dimensions" in wrong.stderr, wrong.stderr


def test_plain_npy_and_parquet_with_bad_rows_named(
    tmp_path: Path, tiny_encoder: OpenClipEncoder
) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    vectors = np.random.default_rng(1).standard_normal((5, tiny_encoder.dim)).astype(np.float32)
    vectors[3] = np.nan
    vectors[4] = 0.0
    np.save(folder / "vectors.npy", vectors * 7.0)  # not unit: normalized on the way in
    pq.write_table(
        pa.table({"sku": ["s0", "s1", "s2", "s3", "s4"], "price": [1.5, float("nan"), 3, 4, 5]}),
        folder / "metadata.parquet",
    )
    store = ItemStore(tmp_path / "data", tiny_encoder.model_id, tiny_encoder.dim)
    try:
        report = import_embeddings(folder, store, tiny_encoder, id_column="sku", chunk=2)
        assert (report.images, report.texts) == (3, 0)
        assert dict(report.failed) == {
            "s3": "the vector holds NaN or infinity",
            "s4": "the vector is all zeros",
        }
        record, stored = store.stored_vector("s0")
        assert record.metadata == {"sku": "s0", "price": 1.5}
        assert store.get("s1").metadata == {"sku": "s1"}  # NaN, pandas' missing value: left out
        np.testing.assert_allclose(np.linalg.norm(stored), 1.0, rtol=1e-5)
        np.testing.assert_allclose(stored[0], vectors[0] / np.linalg.norm(vectors[0]), rtol=1e-5)
    finally:
        store.close()


def test_an_import_killed_midway_is_finished_by_running_it_again(
    tmp_path: Path, tiny_encoder: OpenClipEncoder
) -> None:
    rows = 60_000
    folder = tmp_path / "big"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    rng = np.random.default_rng(2)
    for number in range(3):
        np.save(
            folder / "img_emb" / f"img_emb_{number}.npy",
            rng.standard_normal((rows // 3, tiny_encoder.dim)).astype(np.float16),
        )
        ids = [f"https://example.com/{number}/{n}.jpg" for n in range(rows // 3)]
        pq.write_table(pa.table({"url": ids}), folder / "metadata" / f"metadata_{number}.parquet")
    env = server_env(tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith("XMR_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "xmr", "import-embeddings", str(folder)],
        cwd=REPO,
        env=base | env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        database = tmp_path / "data" / "records.sqlite3"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if database.exists() and 0 < _committed(database) < rows:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the import ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert 0 < _committed(database) < rows
    finished = xmr("import-embeddings", str(folder), **env)
    assert finished.returncode == 0, finished.stderr
    assert image_count(tmp_path / "data") == rows  # each once


def _committed(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_a_collection_with_imported_vectors_refuses_another_model(
    tmp_path: Path, tiny_encoder: OpenClipEncoder
) -> None:
    settings = settings_for(tmp_path)
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        created = client.post(
            "/v1/collections", json={"name": "shots", "model": TINY_MODEL, "pretrained": ""}
        )
        assert created.status_code == 201, created.text
    images = photos(tmp_path, 4)
    clip_retrieval_folder(tmp_path / "embeddings", images, tiny_encoder)
    env = server_env(tmp_path)
    result = xmr("import-embeddings", str(tmp_path / "embeddings"), "-c", "shots", **env)
    assert result.returncode == 0, result.stderr
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        assert client.get("/v1/collections/shots").json()["images"] == 4
        switch = client.post("/v1/collections/shots/reindex", json={"model": "shapes-tiny"})
        assert switch.status_code == 409
        assert "4 images of collection shots were imported as vectors" in json.dumps(switch.json())
        assert client.get("/v1/collections/shots").json()["status"] == "ready"
