"""Batch jobs: JSON items, multipart files, paths under the import root."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.conftest import (
    image_bytes,
    png_file,
    wait_for_job,
)


def test_batch_job_with_good_and_bad_items(client: TestClient, settings: Settings) -> None:
    assert settings.import_root is not None
    settings.import_root.mkdir(parents=True)
    (settings.import_root / "ok.png").write_bytes(image_bytes("green"))
    (settings.import_root / "broken.png").write_bytes(b"\x89PNG broken")
    items = [
        {"id": "txt", "text": "a caption", "metadata": {"src": "json"}},
        {"id": "b64", "image_base64": base64.b64encode(image_bytes("blue")).decode()},
        {"id": "path", "image_path": "ok.png"},
        {"id": "missing", "image_path": "nope.png"},
        {"id": "broken", "image_path": "broken.png"},
        {"id": "notb64", "image_base64": "***"},
    ]
    response = client.post("/v1/batch", json={"items": items})
    assert response.status_code == 202
    job = wait_for_job(client, response.json()["job_id"])
    assert job["status"] == "done"
    assert (job["total"], job["done"], job["failed"]) == (6, 3, 3)
    errors = {e["id"]: e["error"] for e in job["errors"]}
    assert set(errors) == {"missing", "broken", "notb64"}
    assert "does not exist" in errors["missing"] and "base64" in errors["notb64"]
    assert client.get("/v1/items/path/content").content == image_bytes("green")
    assert client.get("/v1/items/txt").json()["metadata"] == {"src": "json"}
    assert client.get("/v1/info").json()["images"] == 2


def test_batch_multipart_files(client: TestClient) -> None:
    files = [png_file(f"{i}.png", (i * 20, 0, 0)) for i in range(10)] + [
        ("files", ("x.png", b"junk", "image/png"))
    ]
    response = client.post(
        "/v1/batch", files=files, data={"ids": str([f"f{i}" for i in range(11)]).replace("'", '"')}
    )
    assert response.status_code == 202
    job = wait_for_job(client, response.json()["job_id"])
    assert (job["status"], job["done"], job["failed"]) == ("done", 10, 1)
    assert job["errors"][0]["id"] == "f10"
    assert client.get("/v1/info").json()["images"] == 10


@pytest.mark.parametrize("path", ["../secret.png", "/etc/passwd", "sub/../../x.png"])
def test_batch_paths_outside_the_import_root_are_refused(client: TestClient, path: str) -> None:
    response = client.post("/v1/batch", json={"items": [{"image_path": path}]})
    assert response.status_code == 422
    assert "outside the import root" in response.json()["detail"]


def test_batch_symlink_escaping_the_import_root_is_refused(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """Links are not followed under the import root: the item fails, nothing outside is read."""
    assert settings.import_root is not None
    settings.import_root.mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(image_bytes())
    (settings.import_root / "link.png").symlink_to(tmp_path / "outside.png")
    response = client.post("/v1/batch", json={"items": [{"image_path": "link.png"}]})
    job = wait_for_job(client, response.json()["job_id"])
    assert (job["status"], job["done"], job["failed"]) == ("done", 0, 1)
    assert "symbolic link" in job["errors"][0]["error"]
    assert client.get("/v1/info").json()["images"] == 0


def test_batch_uploads_are_staged_in_object_storage_when_the_bytes_live_there(
    settings: Settings,
    tiny_encoder: OpenClipEncoder,
    s3_server: Any,
    s3_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No shared folder needed: a job any replica takes over reads its uploads from S3."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    on_s3 = settings.model_copy(
        update={"blob_url": s3_url, "s3_endpoint_url": s3_server.endpoint_url}
    )
    bucket = s3_server.client()
    staged_prefix = s3_url.removeprefix("s3://xmr-tests/") + "/staging/"
    with TestClient(create_app(on_s3, encoder=tiny_encoder)) as client:
        files = [png_file(f"{i}.png", (i * 20, 0, 0)) for i in range(6)]
        ids = str([f"s{i}" for i in range(6)]).replace("'", '"')
        response = client.post("/v1/batch", files=files, data={"ids": ids})
        assert response.status_code == 202
        job = wait_for_job(client, response.json()["job_id"])
        assert (job["status"], job["done"], job["failed"]) == ("done", 6, 0)
        assert client.get("/v1/items/s3/content").content == png_file("3.png", (60, 0, 0))[1][1]
        assert not (on_s3.data_dir / "staging").exists()  # nothing staged on this replica
        left = bucket.list_objects_v2(Bucket="xmr-tests", Prefix=staged_prefix)
        assert left.get("KeyCount", 0) == 0  # removed once the job was done
