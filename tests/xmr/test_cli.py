"""The `xmr` command line against a real server: index with resume, search, info, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.app.test_server_process import free_port
from tests.photos import camera_exif
from xmr.client import XmrClient

REPO = Path(__file__).resolve().parents[2]


def xmr(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    return xmr_with({}, *args, server=server)


def gallery(folder: Path) -> dict[str, str]:
    colours = {"red.png": "red", "sub/blue.png": "blue", "sub/deeper/green.jpg": "green"}
    for name, colour in colours.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        taken = {"exif": camera_exif("2025:06:14 10:22:31")} if name.endswith(".jpg") else {}
        Image.new("RGB", (40, 30), colour).save(folder / name, **taken)
    (folder / "notes.txt").write_text("not an image")
    return colours


def test_index_search_and_resume_by_content_hash(live_server: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    gallery(photos)
    captions = tmp_path / "captions.csv"
    captions.write_text("red.png,a red square\nblue.png,a blue square\nmissing.png,nothing\n")

    flat = xmr("index", str(photos), server=live_server)
    assert flat.returncode == 0, flat.stderr
    assert "indexed 1 images (0 with a capture date), skipped 0" in flat.stdout

    deep = xmr("index", str(photos), "-r", "--captions", str(captions), server=live_server)
    assert deep.returncode == 0, deep.stderr
    assert (  # green.jpg says when it was taken
        "indexed 2 images (1 with a capture date), skipped 1 already indexed, 0 failed, 2 captions"
        in deep.stdout
    )

    again = xmr("index", str(photos), "--recursive", server=live_server)
    assert "indexed 0 images (0 with a capture date), skipped 3 already indexed" in again.stdout

    with XmrClient(live_server) as client:
        info = client.info()
        assert (info["images"], info["texts"]) == (3, 2)
        assert client.get_item("sub/blue.png")["metadata"] == {
            "path": "sub/blue.png",
            "exif": {"format": "png", "width": 40, "height": 30},
        }
        assert client.get_item("sub/deeper/green.jpg")["metadata"]["exif"]["taken_at"] == (
            "2025-06-14T10:22:31"
        )
        assert client.get_item("sub/blue.png#0")["metadata"] == {"image_id": "sub/blue.png"}

    found = xmr("search", "a square", "-k", "2", "--json", server=live_server)
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["results"]) == 2
    caption = xmr("search", "a red square", "--target", "texts", "--json", server=live_server)
    first = json.loads(caption.stdout)["results"][0]
    assert first["id"] == "red.png#0" and first["score"] > 0.9999  # its own caption, first
    by_image = xmr(
        "search",
        "--image",
        str(photos / "red.png"),
        "--target",
        "images",
        "--json",
        server=live_server,
    )
    assert by_image.returncode == 0, by_image.stderr
    assert json.loads(by_image.stdout)["results"][0]["id"] == "red.png"
    filtered = xmr(
        "search", "a square", "--filter", '{"path": "red.png"}', "--json", server=live_server
    )
    assert [h["id"] for h in json.loads(filtered.stdout)["results"]] == ["red.png"]
    shown = xmr("info", server=live_server)
    assert json.loads(shown.stdout)["images"] == 3


def test_failed_images_are_listed_with_exit_code_1(live_server: str, tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(b"")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result = xmr("index", str(tmp_path), server=live_server)
    assert result.returncode == 1
    assert "indexed 1 images (0 with a capture date), skipped 0 already indexed, 1 failed" in (
        result.stdout
    )
    assert "broken.jpg:" in result.stderr


def test_usage_errors_and_an_unreachable_server(tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    assert xmr("search", server=nobody).returncode == 2
    missing = xmr("index", str(tmp_path / "nope"), server=nobody)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    down = xmr("info", server=nobody)
    assert down.returncode == 3
    assert "cannot reach the server" in down.stderr
    assert xmr("--help", server=nobody).returncode == 0
    assert "Recall" in xmr("eval", "--help", server=nobody).stdout


def test_migrate_to_milvus_and_back(tmp_path: Path) -> None:
    from index import NewItem
    from index.store import ItemStore
    from tests.conftest import _milvus_available

    if not _milvus_available():
        import pytest

        pytest.skip("pymilvus/milvus-lite missing")
    from index.layout import CollectionFolder, Generation, ModelSpec, new_state

    data = tmp_path / "data"
    store = ItemStore(data, "m/1", 4)
    store.upsert([NewItem(f"t{i}", "text", np.eye(4, dtype=np.float32)[i % 4]) for i in range(12)])
    store.close()
    docs = CollectionFolder(data, "docs")
    docs.write(new_state("docs", Generation("", ModelSpec("m"), "m/1", 4)))
    store = ItemStore(docs.root, "m/1", 4)
    store.upsert([NewItem(f"d{i}", "image", np.eye(4, dtype=np.float32)[i % 4]) for i in range(5)])
    store.close()
    uri = str(tmp_path / "milvus.db")
    there = xmr(
        "migrate", "--to", "milvus", "--data-dir", str(data), "--milvus-uri", uri, server=""
    )
    assert there.returncode == 0, there.stderr
    assert "default: text: 12 vectors in faiss, 12 in milvus" in there.stdout
    assert "docs: image: 5 vectors in faiss, 5 in milvus" in there.stdout
    assert "0 differ" in there.stdout
    one = xmr(
        "migrate",
        "--to",
        "milvus",
        "--data-dir",
        str(data),
        "--milvus-uri",
        uri,
        "--collection",
        "docs",
        server="",
    )
    assert one.returncode == 0 and "default:" not in one.stdout, one.stderr
    back = xmr("migrate", "--to", "faiss", "--data-dir", str(data), "--milvus-uri", uri, server="")
    assert back.returncode == 0 and "done" in back.stdout, back.stderr
    bad = xmr("migrate", "--to", "elsewhere", "--data-dir", str(data), server="")
    assert bad.returncode == 2


def test_collections_commands(live_server: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    gallery(photos)
    created = xmr("collections", "create", "shapes", "--model", "shapes-tiny", server=live_server)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["model"] == "shapes-tiny"
    indexed = xmr("index", str(photos), "-r", "--collection", "shapes", server=live_server)
    assert "indexed 3 images" in indexed.stdout, indexed.stderr
    listed = xmr("collections", "list", server=live_server)
    assert "shapes" in listed.stdout and "shapes-tiny/" in listed.stdout
    found = xmr("search", "red", "-c", "shapes", "--json", server=live_server)
    assert {h["id"] for h in json.loads(found.stdout)["results"]} == {
        "red.png",
        "sub/blue.png",
        "sub/deeper/green.jpg",
    }
    assert json.loads(xmr("search", "red", "--json", server=live_server).stdout)["results"] == []
    strict = xmr("search", "red", "-c", "shapes", "--json", "--min-score", "1", server=live_server)
    assert json.loads(strict.stdout)["results"] == [], strict.stderr
    # the file's path is in its metadata, so its words are found by keyword
    for mode in ("keyword", "hybrid"):
        by_name = xmr(
            "search", "deeper", "-c", "shapes", "--json", "--mode", mode, server=live_server
        )
        hits = json.loads(by_name.stdout)["results"]
        assert hits[0]["id"] == "sub/deeper/green.jpg", by_name.stderr
        assert len(hits) == (1 if mode == "keyword" else 3)
    env_progress = {"XMR_PROGRESS": "1"}
    switched = xmr_with(
        env_progress,
        "collections",
        "reindex",
        "shapes",
        "--model",
        "xmr-test-tiny",
        "--pretrained",
        "",
        server=live_server,
    )
    assert switched.returncode == 0, switched.stderr
    assert "re-embedding shapes" in switched.stderr and "3/3" in switched.stderr
    assert "now runs xmr-test-tiny: 3 items" in switched.stdout
    shown = json.loads(xmr("collections", "show", "shapes", server=live_server).stdout)
    assert (shown["model"], shown["images"], shown["status"]) == ("xmr-test-tiny", 3, "ready")
    assert xmr("collections", "delete", "shapes", "--yes", server=live_server).returncode == 0
    gone = xmr("collections", "show", "shapes", server=live_server)
    assert gone.returncode == 1 and "404" in gone.stderr


def xmr_with(env: dict[str, str], *args: str, server: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XMR_")}
    return subprocess.run(
        [sys.executable, "-m", "xmr", *args],
        cwd=REPO,
        env=clean | env | {"XMR_SERVER": server},
        text=True,
        capture_output=True,
        timeout=120,
    )


def test_duplicates_report_and_delete_keep_first(live_server: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    gallery(photos)
    Image.open(photos / "red.png").save(photos / "red-copy.jpg", quality=90)  # re-encoded
    assert xmr("index", str(photos), "-r", server=live_server).returncode == 0
    report = xmr("duplicates", "--threshold", "0.999", "--json", server=live_server)
    assert report.returncode == 0, report.stderr
    groups = json.loads(report.stdout)["groups"]
    assert [g["ids"] for g in groups] == [["red-copy.jpg", "red.png"]] or [
        g["ids"] for g in groups
    ] == [["red.png", "red-copy.jpg"]]
    first = groups[0]["ids"][0]
    deleted = xmr("duplicates", "--threshold", "0.999", "--delete-keep-first", server=live_server)
    assert "deleted 1 items" in deleted.stdout, deleted.stderr
    with XmrClient(live_server) as client:
        assert client.info()["images"] == 3
        assert client.get_item(first)["id"] == first
    again = xmr("duplicates", "--threshold", "0.999", server=live_server)
    assert "0 groups" in again.stdout


def test_classify_writes_labels_into_metadata(live_server: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    gallery(photos)
    assert xmr("index", str(photos), "-r", server=live_server).returncode == 0
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n\ngreen\n")
    tagged = xmr(
        "classify",
        "--labels",
        str(labels),
        "--write-metadata",
        "colour",
        "--template",
        "a {} picture",
        "--filter",
        '{"path": {"in": ["red.png", "sub/blue.png"]}}',
        server=live_server,
    )
    assert tagged.returncode == 0, tagged.stderr
    assert "tagged 2 items" in tagged.stdout
    with XmrClient(live_server) as client:
        for item_id in ("red.png", "sub/blue.png"):
            metadata = client.get_item(item_id)["metadata"]
            assert metadata["colour"] in ("red", "blue", "green") and metadata["path"] == item_id
            assert 0 < metadata["colour_probability"] <= 1
        assert "colour" not in client.get_item("sub/deeper/green.jpg")["metadata"]
    missing = xmr(
        "classify",
        "--labels",
        str(tmp_path / "nope.txt"),
        "--write-metadata",
        "x",
        server=live_server,
    )
    assert missing.returncode == 2


def test_migrate_to_database_moves_a_served_data_directory(
    tmp_path: Path, postgres_database: str
) -> None:
    """Written by a server on SQLite, copied with `xmr migrate --to-database`, then served from
    PostgreSQL: the same items, the same answers, the image bytes read back."""
    from tests.app.test_server_process import server_env, start_server

    photos = tmp_path / "photos"
    gallery(photos)
    data = tmp_path / "data"
    env = server_env(data, free_port())
    server = start_server(env)
    url = f"http://127.0.0.1:{env['XMR_PORT']}"
    try:
        with XmrClient(url) as client:
            client.wait_ready(60)
            client.index_images([photos / "red.png", photos / "sub/blue.png"], ids=["red", "blue"])
            client.index_texts([{"id": f"t{i}", "text": f"caption {i}"} for i in range(30)])
            client.delete_item("t3")
            before = client.search_text("caption 7", target="texts", k=5)["results"]
    finally:
        server.terminate()
        server.wait(60)
    blobs = tmp_path / "shared-blobs"
    moved = xmr(
        "migrate", "--to-database", postgres_database, "--data-dir", str(data),
        "--blob-dir", str(blobs), server="",
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert "default: text: 29 vectors in sqlite, 29 in PostgreSQL" in moved.stdout
    assert "default: image: 2 vectors in sqlite, 2 in PostgreSQL" in moved.stdout
    assert "0 differ" in moved.stdout
    again = xmr("migrate", "--to-database", postgres_database, "--data-dir", str(data), server="")
    assert again.returncode == 2 and "already holds records" in again.stderr
    server = start_server(env | {"XMR_DATABASE_URL": postgres_database, "XMR_BLOB_DIR": str(blobs)})
    try:
        with XmrClient(url) as client:
            client.wait_ready(60)
            assert (client.info()["texts"], client.info()["images"]) == (29, 2)
            after = client.search_text("caption 7", target="texts", k=5)["results"]
            assert [h["id"] for h in after] == [h["id"] for h in before]
            assert client.item_content("red") == (photos / "red.png").read_bytes()
    finally:
        server.kill()
        server.wait()
    wrong = xmr("migrate", "--to-database", "mysql://x", "--data-dir", str(data), server="")
    assert wrong.returncode == 2 and "unknown database" in wrong.stderr
