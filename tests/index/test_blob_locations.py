"""Where a store keeps its image bytes (a folder, or S3 on a real server: Ceph's RADOS Gateway),
and what a crash between the bytes and the record leaves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index import IndexOptions, NewItem
from index.store import SHARED_BLOB_GRACE_S, ItemStore

DIM = 4


def image(item_id: str, content: bytes) -> NewItem:
    v = np.zeros(DIM, dtype=np.float32)
    v[len(content) % DIM] = 1.0
    return NewItem(item_id, "image", v, content=content, content_type="image/png")


@pytest.fixture(params=["folder", "s3"])
def options(request: pytest.FixtureRequest, tmp_path: Path) -> IndexOptions:
    if request.param == "folder":
        return IndexOptions(blob_dir=tmp_path / "blobs")
    server: Any = request.getfixturevalue("s3_server")
    request.getfixturevalue("monkeypatch").setenv("AWS_ACCESS_KEY_ID", server.access_key)
    request.getfixturevalue("monkeypatch").setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    request.getfixturevalue("monkeypatch").setenv("AWS_DEFAULT_REGION", "us-east-1")
    return IndexOptions(
        blob_url=request.getfixturevalue("s3_url"), s3_endpoint_url=server.endpoint_url
    )


def test_bytes_are_written_read_streamed_and_deleted_with_their_item(
    tmp_path: Path, options: IndexOptions
) -> None:
    store = ItemStore(tmp_path / "data", "m/1", DIM, options, "c/gen-1")
    try:
        store.upsert([image("p", b"picture"), image("q", b"picture")])  # the same bytes twice
        record = store.get("p")
        assert store.read_content(record) == b"picture"
        assert b"".join(store.content_stream(store.get("q"))) == b"picture"
        store.delete("p")
        assert store.read_content(store.get("q")) == b"picture"  # q still uses them
        store.delete("q")
        with pytest.raises(OSError):
            store.read_content(record)
    finally:
        store.close()


def test_bytes_written_before_a_crash_that_lost_the_record_are_swept_at_start(
    tmp_path: Path, options: IndexOptions
) -> None:
    store = ItemStore(tmp_path / "data", "m/1", DIM, options, "c/gen-1")
    store.upsert([image("kept", b"kept")])
    orphan = store._blobs.put(b"orphan", "image/png")  # the crash: bytes, then no commit
    store.close()
    again = ItemStore(tmp_path / "data", "m/1", DIM, options, "c/gen-1")
    try:
        with pytest.raises(OSError):
            again._blobs.read(orphan.path)
        assert again.read_content(again.get("kept")) == b"kept"
    finally:
        again.close()


def test_shared_stores_sweep_only_bytes_older_than_their_grace(
    tmp_path: Path, options: IndexOptions, postgres_database: str
) -> None:
    shared = replace(options, database_url=postgres_database)
    store = ItemStore(tmp_path / "a", "m/1", DIM, shared, "c/gen-1")
    orphan = store._blobs.put(b"being written by another replica", "image/png")
    store.close()
    ItemStore(tmp_path / "b", "m/1", DIM, shared, "c/gen-1").close()  # a replica starting
    assert SHARED_BLOB_GRACE_S > 60
    store = ItemStore(tmp_path / "a", "m/1", DIM, shared, "c/gen-1")
    try:
        assert store._blobs.read(orphan.path) == b"being written by another replica"
    finally:
        store.destroy()


def test_a_presigned_address_serves_the_bytes_from_object_storage(
    tmp_path: Path, options: IndexOptions
) -> None:
    import httpx

    store = ItemStore(tmp_path / "data", "m/1", DIM, options, "c/gen-1")
    try:
        store.upsert([image("p", b"picture")])
        url = store.content_url(store.get("p"), 60)
        if options.blob_url is None:
            assert url is None  # a folder: the replica serves the bytes itself
            return
        assert url is not None
        response = httpx.get(url)
        assert response.status_code == 200 and response.content == b"picture"
    finally:
        store.close()
