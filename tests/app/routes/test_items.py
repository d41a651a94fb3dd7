"""Indexing, replacing, deleting and looking up items; restarts; storage failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from index import ModelMismatchError
from models import OpenClipEncoder
from models.options import LoadOptions
from tests.app.routes.conftest import index_texts
from tests.conftest import (
    TINY_MODEL,
    image_bytes,
    png_file,
    torch_state,
)


def test_index_images_with_ids_and_metadata(client: TestClient) -> None:
    response = client.post(
        "/v1/images",
        files=[png_file("r.png", "red"), png_file("b.png", "blue")],
        data={"ids": '["red", null]', "metadata": '[{"colour": "red"}, null]'},
    )
    assert response.status_code == 201
    ids = response.json()["ids"]
    assert ids[0] == "red" and len(ids[1]) == 32
    record = client.get("/v1/items/red").json()
    assert record["kind"] == "image"  # its own metadata, and the facts of the file
    assert record["metadata"] == {
        "colour": "red",
        "exif": {"format": "png", "width": 64, "height": 48},
    }
    assert record["content_type"] == "image/png" and record["model"] == f"{TINY_MODEL}/random-init"
    content = client.get("/v1/items/red/content")
    assert content.headers["content-type"] == "image/png"
    assert content.content == image_bytes("red")
    assert client.get("/v1/info").json()["images"] == 2


def test_upsert_replaces_an_existing_id(client: TestClient) -> None:
    index_texts(client, {"text": "old words", "id": "doc", "metadata": {"v": 1}})
    index_texts(client, {"text": "new words", "id": "doc", "metadata": {"v": 2}})
    assert client.get("/v1/info").json()["texts"] == 1
    record = client.get("/v1/items/doc").json()
    assert record["text"] == "new words" and record["metadata"] == {"v": 2}
    results = client.get("/v1/search/text", params={"q": "new words", "target": "texts"}).json()
    assert [r["id"] for r in results["results"]] == ["doc"]
    assert results["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_delete_is_immediate(client: TestClient) -> None:
    index_texts(client, {"text": "keep", "id": "keep"}, {"text": "drop", "id": "drop"})
    assert client.delete("/v1/items/drop").status_code == 204
    results = client.get("/v1/search/text", params={"q": "drop", "target": "texts"}).json()
    assert [r["id"] for r in results["results"]] == ["keep"]
    assert client.get("/v1/items/drop").status_code == 404
    assert client.delete("/v1/items/drop").status_code == 404


def test_ids_with_slashes_and_unicode_round_trip(client: TestClient) -> None:
    index_texts(client, {"text": "a path id", "id": "albums/2024/ünïcødé.jpg"})
    record = client.get("/v1/items/albums/2024/ünïcødé.jpg")
    assert record.status_code == 200 and record.json()["text"] == "a path id"
    assert client.get(record.json()["content_url"]).text == "a path id"


def test_restart_keeps_every_item_searchable(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        index_texts(client, *({"text": f"caption {i}", "id": f"t{i}"} for i in range(20)))
        client.post("/v1/images", files=[png_file("r.png", "red")], data={"ids": '["red"]'})
        before = client.get(
            "/v1/search/text", params={"q": "caption 7", "target": "texts", "k": 5}
        ).json()
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        info = client.get("/v1/info").json()
        assert (info["texts"], info["images"]) == (20, 1)
        after = client.get(
            "/v1/search/text", params={"q": "caption 7", "target": "texts", "k": 5}
        ).json()
        assert [r["id"] for r in after["results"]] == [r["id"] for r in before["results"]]
        assert client.get("/v1/items/red/content").content == image_bytes("red")


def test_restart_with_another_model_is_refused(
    settings: Settings,
    tiny_encoder: OpenClipEncoder,
    torch_encoder: OpenClipEncoder,
    tmp_path: Path,
) -> None:
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        index_texts(client, {"text": "hello"})
    checkpoint = tmp_path / "other.pt"
    import torch

    torch.save(
        {
            k: v + 0.01 if v.is_floating_point() else v
            for k, v in torch_state(torch_encoder).items()
        },
        checkpoint,
    )
    other = OpenClipEncoder.load(TINY_MODEL, str(checkpoint), LoadOptions(device="cpu"))
    with (
        pytest.raises(ModelMismatchError, match="random-init"),
        TestClient(create_app(settings, encoder=other)),
    ):
        pass


def test_disk_full_is_a_507_with_a_clear_message(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from index import blobs

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(blobs, "write_atomic", disk_full)
    response = client.post("/v1/images", files=[png_file("a.png", "red")])
    assert response.status_code == 507
    assert "No space left on device" in response.json()["detail"]
    assert client.get("/v1/info").json()["images"] == 0


def test_sqlite_itself_out_of_space_is_a_507_and_changes_nothing(client: TestClient) -> None:
    index_texts(client, {"text": "before", "id": "before"})
    store = client.app.state.services.collections.get("default").store  # type: ignore[attr-defined]
    if store.options.backend != "faiss":
        pytest.skip("the same records; the vector backend does not matter here")
    conn = store.records._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    items = [{"text": f"bulky {i}", "metadata": {"pad": "x" * 3000}} for i in range(30)]
    response = client.post("/v1/texts", json={"items": items})
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert response.status_code == 507
    assert "full" in response.json()["detail"]
    assert client.get("/v1/info").json()["texts"] == 1
    index_texts(client, {"text": "after"})  # and the service goes on
    assert client.get("/v1/info").json()["texts"] == 2


def test_any_text_is_accepted_and_long_text_is_truncated(client: TestClient) -> None:
    texts = {
        "nul": "before\x00after",
        "unicode": "日本語のテキスト 🐈 ñandú Ελληνικά",
        "long": "word " * 5000,
        "control": "tab\tnew\nline\r",
    }
    ids = index_texts(client, *({"text": t, "id": i} for i, t in texts.items()))
    assert ids == list(texts)
    for item_id, text in texts.items():
        assert client.get(f"/v1/items/{item_id}").json()["text"] == text
        hits = client.get("/v1/search/text", params={"q": text[:2000], "target": "texts", "k": 1})
        assert hits.status_code == 200
        first = hits.json()["results"][0]  # the same text embeds the same: itself, first
        assert first["id"] == item_id and first["score"] == pytest.approx(1.0, abs=1e-4)


def test_content_hash_lookup_finds_indexed_bytes_and_refuses_bad_digests(
    client: TestClient,
) -> None:
    import hashlib

    data = image_bytes("red")
    client.post(
        "/v1/images", files=[("files", ("r.png", data, "image/png"))], data={"ids": '["r"]'}
    )
    known, unknown = hashlib.sha256(data).hexdigest(), "0" * 64
    found = client.post("/v1/items/lookup", json={"sha256": [known.upper(), unknown]})
    assert found.status_code == 200
    assert found.json() == {"found": {known: "r"}}
    bad = client.post("/v1/items/lookup", json={"sha256": [known, "xyz"]})
    assert bad.status_code == 422
    assert "sha256[1] is not a hex SHA-256 digest" in bad.json()["detail"]
    assert client.post("/v1/items/lookup", json={"sha256": []}).status_code == 422


@pytest.mark.parametrize("presign", [False, True])
def test_image_bytes_in_object_storage_are_streamed_or_redirected_to(
    settings: Settings,
    tiny_encoder: OpenClipEncoder,
    s3_server: Any,
    s3_url: str,
    monkeypatch: pytest.MonkeyPatch,
    presign: bool,
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    on_s3 = settings.model_copy(
        update={
            "blob_url": s3_url,
            "s3_endpoint_url": s3_server.endpoint_url,
            "s3_presign": presign,
        }
    )
    with TestClient(create_app(on_s3, encoder=tiny_encoder)) as client:
        stored = client.post(
            "/v1/images", files=[png_file("red.png", "red")], data={"ids": '["red"]'}
        )
        assert stored.status_code == 201
        content = client.get("/v1/items/red/content", follow_redirects=False)
        if presign:
            assert content.status_code == 307
            fetched = httpx.get(content.headers["location"])
            assert fetched.content == image_bytes("red")
            assert fetched.headers["content-type"] == "image/png"
        else:
            assert content.status_code == 200 and content.content == image_bytes("red")
            assert content.headers["content-type"] == "image/png"
        stored = s3_server.client().list_objects_v2(
            Bucket="xmr-tests", Prefix=s3_url.removeprefix("s3://xmr-tests/")
        )
        sizes = {o["Key"].rsplit("/", 1)[1].split(".", 1)[1]: o["Size"] for o in stored["Contents"]}
        assert sizes.keys() == {"png", "thumb.jpg"}  # the bytes, and their thumbnail beside
        assert sizes["png"] == len(image_bytes("red"))
        thumbnail = client.get("/v1/items/red/thumbnail")
        assert thumbnail.status_code == 200 and len(thumbnail.content) == sizes["thumb.jpg"]
