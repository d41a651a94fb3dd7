"""`xmr index --ray` on a local Ray instance: the same items as the ordinary path, resumable."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_MODEL
from tests.photos import camera_exif
from tests.xmr.commands import run_xmr

pytest.importorskip("ray", reason="ray is not installed")


xmr = run_xmr


def photos(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for n in range(7):
        pixels = rng.integers(0, 255, (40 + 30 * n, 60 + 20 * n, 3), dtype=np.uint8)
        target = folder / ("sub" if n % 2 else "") / f"p{n}.{'jpg' if n % 3 else 'png'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        exif = camera_exif("2025:06:14 10:22:31") if n == 1 else None
        encoded = Image.fromarray(pixels)
        if exif is None:
            encoded.save(buffer, "JPEG" if n % 3 else "PNG")
        else:
            encoded.save(buffer, "JPEG", exif=exif)
        target.write_bytes(buffer.getvalue())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")


def stored(data_dir: Path) -> dict[str, tuple[str, str, np.ndarray]]:
    with sqlite3.connect(data_dir / "records.sqlite3") as db:
        rows = db.execute("SELECT id, metadata, content_sha256, vector FROM items").fetchall()
    return {r[0]: (r[1], r[2], np.frombuffer(r[3], dtype=np.float32)) for r in rows}


def test_ray_indexes_what_the_ordinary_path_indexes(live_server: str, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    photos(folder)
    ordinary = xmr("index", str(folder), "-r", XMR_SERVER=live_server)
    assert ordinary.returncode == 1, ordinary.stderr  # broken.jpg fails, the rest is indexed

    ray_data = tmp_path / "ray-data"
    env = {
        "XMR_MODEL": TINY_MODEL,
        "XMR_PRETRAINED": "",
        "XMR_DEVICE": "cpu",
        "XMR_PRECISION": "fp32",
        "XMR_DATA_DIR": str(ray_data),
    }
    first = xmr("index", str(folder), "-r", "--ray", "--workers", "2", "--batch-size", "3", **env)
    assert first.returncode == 1, first.stderr
    assert (
        "indexed 7 images (1 with a capture date), skipped 0 already indexed, 1 failed"
        in first.stdout
    )
    assert "broken.jpg:" in first.stderr

    expected, got = stored(tmp_path / "data"), stored(ray_data)
    assert sorted(got) == sorted(expected) and len(got) == 7
    for item_id, (metadata, sha, vector) in expected.items():
        assert got[item_id][:2] == (metadata, sha)
        np.testing.assert_allclose(got[item_id][2], vector, atol=1e-5)
    thumbnails = sorted(p.name for p in (tmp_path / "data").rglob("*.thumb.jpg"))
    assert len(thumbnails) == 7
    assert sorted(p.name for p in ray_data.rglob("*.thumb.jpg")) == thumbnails

    again = xmr("index", str(folder), "-r", "--ray", **env)
    assert "indexed 0 images (0 with a capture date), skipped 7 already indexed" in again.stdout
