"""The HTTP API end to end through a real app: tiny open_clip model, real FAISS, real SQLite."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from index import ModelMismatchError
from models import OpenClipEncoder
from models.options import LoadOptions
from tests.conftest import (
    BACKENDS,
    TINY_MODEL,
    DefaultCollectionClient,
    image_bytes,
    png_file,
    reference_open_clip,
    torch_state,
    wait_for_job,
    with_backend,
)


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """These API tests run once per vector backend."""
    return with_backend(settings, request.param)


@pytest.fixture(params=["/v1", "/v1/collections/default"])
def client(
    request: pytest.FixtureRequest, settings: Settings, tiny_encoder: OpenClipEncoder
) -> Iterator[TestClient]:
    """...and once through the routes of today, once through the default collection's."""
    client_type = TestClient if request.param == "/v1" else DefaultCollectionClient
    with client_type(create_app(settings, encoder=tiny_encoder)) as test_client:
        yield test_client


def index_texts(client: TestClient, *items: dict) -> list[str]:
    response = client.post("/v1/texts", json={"items": list(items)})
    assert response.status_code == 201, response.text
    return response.json()["ids"]


def test_health_ready_and_info(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/info").json()
    assert info["model"] == TINY_MODEL and info["dim"] == 64 and info["device"] == "cpu"
    assert (info["images"], info["texts"]) == (0, 0)
    # the fixture's encoder: the default runtime, which reproduces PyTorch here
    assert (info["runtime"], info["precision"]) == ("openvino", "fp32")


def test_readyz_is_503_outside_the_lifespan(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    app = create_app(settings, encoder=tiny_encoder)
    client = TestClient(app)  # not entered: the lifespan has not loaded anything
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    response = client.get("/v1/info")
    assert response.status_code == 503 and "Retry-After" in response.headers


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
    assert record["kind"] == "image" and record["metadata"] == {"colour": "red"}
    assert record["content_type"] == "image/png" and record["model"] == f"{TINY_MODEL}/random-init"
    content = client.get("/v1/items/red/content")
    assert content.headers["content-type"] == "image/png"
    assert content.content == image_bytes("red")
    assert client.get("/v1/info").json()["images"] == 2


def test_text_search_ranks_by_cosine_and_scores_match_embeddings(client: TestClient) -> None:
    client.post(
        "/v1/images",
        files=[png_file(f"{c}.png", c) for c in ("red", "green", "blue")],
        data={"ids": '["red", "green", "blue"]'},
    )
    results = client.get("/v1/search/text", params={"q": "a red circle", "k": 3}).json()
    assert [r["kind"] for r in results["results"]] == ["image"] * 3
    query = np.array(
        client.post("/v1/embed/text", json={"texts": ["a red circle"]}).json()["embeddings"][0]
    )
    image_vectors = np.array(
        client.post(
            "/v1/embed/image", files=[png_file(f"{c}.png", c) for c in ("red", "green", "blue")]
        ).json()["embeddings"]
    )
    expected = sorted(
        zip(image_vectors @ query, ["red", "green", "blue"], strict=True), reverse=True
    )
    assert [r["id"] for r in results["results"]] == [name for _, name in expected]
    for result, (score, _) in zip(results["results"], expected, strict=True):
        assert result["score"] == pytest.approx(score, abs=1e-4)
    assert results["took_ms"] > 0


def test_image_search_finds_texts_and_images(client: TestClient) -> None:
    index_texts(
        client, {"text": "first", "id": "t1"}, {"text": "second", "id": "t2", "metadata": {"n": 2}}
    )
    client.post("/v1/images", files=[png_file("r.png", "red")], data={"ids": '["red"]'})
    query = {"file": ("q.png", image_bytes("red"), "image/png")}
    texts = client.post("/v1/search/image", files=query, data={"k": "5"}).json()["results"]
    assert {r["id"] for r in texts} == {"t1", "t2"}
    assert all(r["kind"] == "text" and r["text"] for r in texts)
    images = client.post(
        "/v1/search/image", files=query, data={"k": "1", "target": "images"}
    ).json()
    assert images["results"][0]["id"] == "red"
    assert images["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


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


def test_embeddings_equal_open_clip_through_the_api(
    client: TestClient, torch_encoder: OpenClipEncoder
) -> None:
    import torch

    model, preprocess, tokenizer = reference_open_clip(torch_encoder)
    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 255, (50, 80, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    with torch.no_grad():
        expected_image = model.encode_image(preprocess(picture).unsqueeze(0), normalize=True)[
            0
        ].numpy()
        expected_text = model.encode_text(tokenizer(["two dogs"]), normalize=True)[0].numpy()
    got_image = client.post(
        "/v1/embed/image", files={"files": ("p.png", buffer.getvalue(), "image/png")}
    ).json()
    got_text = client.post("/v1/embed/text", json={"texts": ["two dogs"]}).json()
    assert got_image["dim"] == got_text["dim"] == 64
    assert float(np.dot(got_image["embeddings"][0], expected_image)) >= 0.9999
    assert float(np.dot(got_text["embeddings"][0], expected_text)) >= 0.9999


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


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "names"),
    [
        ("get", "/v1/search/text", {"params": {"q": "x", "k": 0}}, 422, "k"),
        ("get", "/v1/search/text", {"params": {"q": "x", "k": 5000}}, 422, "k must be"),
        ("get", "/v1/search/text", {"params": {"q": "x", "target": "videos"}}, 422, "target"),
        ("get", "/v1/search/text", {"params": {}}, 422, "q"),
        ("post", "/v1/texts", {"json": {"items": [{"text": "   "}]}}, 422, "items"),
        ("post", "/v1/texts", {"json": {"items": []}}, 422, "items"),
        (
            "post",
            "/v1/texts",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "JSON decode error",
        ),
        (
            "post",
            "/v1/texts",
            {"json": {"items": [{"text": "a", "id": "d"}, {"text": "b", "id": "d"}]}},
            422,
            "appears twice",
        ),
        (
            "post",
            "/v1/images",
            {"files": [("files", ("a.txt", b"not an image", "text/plain"))]},
            422,
            "files[0]",
        ),
        (
            "post",
            "/v1/images",
            {"files": [("files", ("a.png", b"", "image/png"))]},
            422,
            "files[0]",
        ),
        (
            "post",
            "/v1/images",
            {"files": [png_file("a.png", "red")], "data": {"ids": '["a", "b"]'}},
            422,
            "ids",
        ),
        (
            "post",
            "/v1/images",
            {"files": [png_file("a.png", "red")], "data": {"metadata": "[1]"}},
            422,
            "metadata[0]",
        ),
        ("post", "/v1/images", {"data": {"ids": "[]"}}, 422, "files"),
        (
            "post",
            "/v1/search/image",
            {"files": {"file": ("a.ppm", image_bytes(fmt="PPM"), "image/x-ppm")}},
            415,
            "PPM",
        ),
        (
            "post",
            "/v1/batch",
            {"json": {"items": [{"text": "a", "image_path": "b"}]}},
            422,
            "exactly one of",
        ),
        (
            "post",
            "/v1/batch",
            {"content": b"plain", "headers": {"content-type": "text/plain"}},
            422,
            "application/json",
        ),
        ("post", "/v1/embed/text", {"json": {"texts": [""]}}, 422, "texts[0]"),
        (
            "post",
            "/v1/texts",
            {
                "content": b'{"items": [{"text": "a", "metadata": {"x": NaN}}]}',
                "headers": {"content-type": "application/json"},
            },
            422,
            "metadata",
        ),
        (
            "post",
            "/v1/images",
            {"files": [png_file("a.png", "red")], "data": {"metadata": '[{"x": Infinity}]'}},
            422,
            "metadata",
        ),
        ("get", "/v1/jobs/nope", {}, 404, "nope"),
        ("post", "/v1/jobs/nope/resume", {}, 404, "nope"),
        ("get", "/v1/items/nope/content", {}, 404, "nope"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    client: TestClient, method: str, url: str, kwargs: dict, status: int, names: str
) -> None:
    """The status the README documents, a message naming what was wrong, the input not echoed."""
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    detail = json.dumps(response.json()["detail"])
    assert names in detail, detail
    echoed = [v for v in _strings_sent(kwargs) if len(v) >= 6 and v in response.text]
    assert not echoed, echoed


def _strings_sent(kwargs: dict) -> list[str]:
    """The string values a request carries (query, form and JSON values, a raw body)."""
    found: list[str] = []
    pending: list[object] = [kwargs.get(k) for k in ("params", "data", "json")]
    if isinstance(kwargs.get("content"), bytes):
        found.append(kwargs["content"].decode(errors="replace"))
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return found


def test_openapi_docs_are_served_with_examples(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/images",
        "/v1/texts",
        "/v1/batch",
        "/v1/search/text",
        "/v1/search/image",
        "/v1/items/{item_id}",
        "/v1/jobs/{job_id}",
        "/v1/embed/text",
        "/v1/embed/image",
    ):
        assert path in spec["paths"], path
    assert "a red circle" in str(spec)


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


def test_similar_items_rank_by_the_stored_vector_without_the_item_itself(
    client: TestClient,
) -> None:
    colours = ["red", "orange", "blue", "green"]
    files = [png_file(f"{c}.png", c) for c in colours]
    ids = json.dumps(colours)
    assert client.post("/v1/images", files=files, data={"ids": ids}).status_code == 201
    index_texts(client, {"text": "a red thing", "id": "t-red"})
    vectors = np.array(
        client.post("/v1/embed/image", files=[png_file(f"{c}.png", c) for c in colours]).json()[
            "embeddings"
        ]
    )
    expected = sorted(
        ((float(vectors[i] @ vectors[0]), c) for i, c in enumerate(colours) if c != "red"),
        reverse=True,
    )
    similar = client.get("/v1/items/red/similar", params={"k": 10}).json()["results"]
    assert [h["id"] for h in similar] == [c for _, c in expected]
    np.testing.assert_allclose([h["score"] for h in similar], [s for s, _ in expected], atol=1e-4)
    paged = client.get("/v1/items/red/similar", params={"k": 1, "offset": 1}).json()["results"]
    assert [h["id"] for h in paged] == [expected[1][1]]
    cut = client.get("/v1/items/red/similar", params={"min_score": expected[1][0] - 1e-6})
    assert [h["id"] for h in cut.json()["results"]] == [c for _, c in expected[:2]]
    texts = client.get("/v1/items/red/similar", params={"target": "texts"}).json()["results"]
    assert [h["id"] for h in texts] == ["t-red"]
    assert client.get("/v1/items/nope/similar").status_code == 404
    index_texts(client, {"text": "an odd id", "id": "p/similar"})
    assert client.get("/v1/items/p%2Fsimilar").json()["id"] == "p/similar"


def test_a_composite_query_equals_the_weighted_sum_a_client_computes(client: TestClient) -> None:
    colours = ["red", "orange", "blue", "green"]
    files = [png_file(f"{c}.png", c) for c in colours]
    assert (
        client.post("/v1/images", files=files, data={"ids": json.dumps(colours)}).status_code == 201
    )
    index_texts(client, {"text": "a red circle", "id": "t1"}, {"text": "a blue square", "id": "t2"})

    def embed_texts(*texts: str) -> np.ndarray:
        return np.array(
            client.post("/v1/embed/text", json={"texts": list(texts)}).json()["embeddings"]
        )

    images = np.array(
        client.post("/v1/embed/image", files=[png_file(f"{c}.png", c) for c in colours]).json()[
            "embeddings"
        ]
    )
    blue = base64.b64encode(image_bytes("blue")).decode()
    parts = [
        {"text": "a red thing", "weight": 1.0},
        {"image_base64": blue, "weight": 0.5},
        {"item": "t2"},  # weight 1 by default: its stored vector
        {"text": "green", "weight": -0.4},
    ]
    units = [embed_texts("a red thing")[0], images[2], embed_texts("a blue square")[0]]
    units.append(embed_texts("green")[0])
    query = sum(w * u for w, u in zip([1.0, 0.5, 1.0, -0.4], units, strict=True))
    query = query / np.linalg.norm(query)
    expected = sorted(((float(images[i] @ query), c) for i, c in enumerate(colours)), reverse=True)

    body = {"query": parts, "target": "images", "k": 10}
    got = client.post("/v1/search", json=body).json()["results"]
    assert [h["id"] for h in got] == [c for _, c in expected]
    np.testing.assert_allclose([h["score"] for h in got], [s for s, _ in expected], atol=1e-4)
    # the same with the image uploaded as a file part
    form_parts = [dict(p) for p in parts]
    form_parts[1] = {"image_file": 0, "weight": 0.5}
    as_form = client.post(
        "/v1/search",
        data={"request": json.dumps({**body, "query": form_parts})},
        files=[png_file("q.png", "blue")],
    ).json()["results"]
    assert [h["id"] for h in as_form] == [h["id"] for h in got]
    paged = client.post("/v1/search", json={**body, "k": 2, "offset": 1}).json()["results"]
    assert [h["id"] for h in paged] == [c for _, c in expected[1:3]]
    # the items named in the query are left out unless asked for
    texts = {"query": [{"item": "t2"}], "target": "texts", "k": 5}
    assert [h["id"] for h in client.post("/v1/search", json=texts).json()["results"]] == ["t1"]
    kept = client.post("/v1/search", json={**texts, "exclude_query_items": False}).json()
    assert kept["results"][0]["id"] == "t2" and kept["results"][0]["score"] == pytest.approx(
        1.0, abs=1e-4
    )


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ([{"text": "x", "weight": 1.0}, {"text": "x", "weight": -1.0}], 422, "cancel out"),
        ([{"text": "x"}] * 17, 422, "query"),
        ([{"text": "x", "item": "t1"}], 422, "exactly one"),
        ([{"image_base64": "not base64!"}], 422, "base64"),
        ([{"image_file": 0}], 422, "0 files"),
        ([{"item": "nope"}], 404, "nope"),
        ([{"text": "x", "weight": float("nan")}], 422, "weight"),
    ],
)
def test_bad_composite_queries_get_a_clear_4xx(
    client: TestClient, query: list, status: int, says: str
) -> None:
    index_texts(client, {"text": "a red circle", "id": "t1"})
    response = client.post(
        "/v1/search",
        content=json.dumps({"query": query}, allow_nan=True),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status, response.text
    assert says in response.text
    for mode in ("keyword", "hybrid"):  # the words to look for come from positive text parts
        no_words = [{"item": "t1"}, {"text": "x", "weight": -1.0}]
        refused = client.post("/v1/search", json={"query": no_words, "mode": mode})
        assert refused.status_code == 422 and "text part" in refused.json()["detail"]
    assert (
        client.post("/v1/search", json={"query": [{"text": "x"}], "mode": "?"}).status_code == 422
    )


INVOICE = "INV-2024-88317"


def _keyword_corpus(client: TestClient) -> None:
    """Texts that a vector query for the invoice number likes better than the invoice itself."""
    numbers = [n for n in range(88300, 88330) if n != 88317]
    near = [{"text": f"INV-2024-{n}", "id": f"near-{n}"} for n in numbers]
    other = [{"text": f"a {c} circle", "id": f"circle-{c}"} for c in ("red", "blue", "green")]
    invoice = {
        "text": f"four white garden chairs, delivered on a Tuesday: invoice {INVOICE}",
        "id": "invoice",
    }
    index_texts(client, *near, *other, invoice)
    client.post(
        "/v1/images",
        files=[png_file("scan.png", "red")],
        data={
            "ids": json.dumps(["scan"]),
            "metadata": json.dumps([{"file": "scan-0042.png", "tags": {"by": ["Renée"]}}]),
        },
    )


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


def test_keyword_and_hybrid_search_find_an_exact_rare_token_that_vectors_rank_low(
    client: TestClient,
) -> None:
    _keyword_corpus(client)
    text = {"q": INVOICE, "target": "texts", "k": 40}
    by_vector = _ids(client.get("/v1/search/text", params=text))
    assert by_vector.index("invoice") >= 5  # the premise: vector search alone ranks it low
    assert _ids(client.get("/v1/search/text", params={**text, "mode": "keyword"})) == ["invoice"]
    keyword = client.get("/v1/search/text", params={**text, "mode": "keyword"}).json()["results"]
    for fusion in ("relative", "rrf"):
        hybrid = client.get("/v1/search/text", params={**text, "mode": "hybrid", "fusion": fusion})
        hits = hybrid.json()["results"]
        assert hits[0]["id"] == "invoice", fusion
        assert hits[0]["keyword_score"] == pytest.approx(keyword[0]["score"])
        assert all(h["keyword_score"] is None for h in hits[1:])
        # every hit's vector_score is its cosine, as vector search scores it
        cosines = {
            h["id"]: h["score"]
            for h in client.get("/v1/search/text", params=text).json()["results"]
        }
        for hit in hits:
            assert hit["vector_score"] == pytest.approx(cosines[hit["id"]], abs=1e-5)
        assert len(hits) == len(cosines)  # every item is in the vector ranking
    # alpha 1 is the vector ranking; the same route through POST /v1/search
    only_vectors = {**text, "mode": "hybrid", "alpha": 1.0}
    assert _ids(client.get("/v1/search/text", params=only_vectors))[:5] == by_vector[:5]
    body = {"query": [{"text": INVOICE}], "target": "texts", "mode": "hybrid", "k": 3}
    assert _ids(client.post("/v1/search", json=body))[0] == "invoice"
    assert _ids(client.post("/v1/search", json={**body, "mode": "keyword"})) == ["invoice"]
    # metadata strings are searched too, nested ones and without their accents
    images = {"target": "images", "mode": "keyword"}
    for words in ("scan-0042.png", "renee", "0042"):
        assert _ids(client.get("/v1/search/text", params={**images, "q": words})) == ["scan"]
    # nothing a user types is read as FTS5 syntax
    for odd in ('"', "*", "NEAR(x", "a AND", "-", ":", "^x", "(", "chairs OR"):
        assert (
            client.get("/v1/search/text", params={**text, "q": odd, "mode": "keyword"}).status_code
            == 200
        )
    # a replaced or deleted item is gone from both sides at once
    index_texts(client, {"text": "garden chairs", "id": "invoice"})
    assert _ids(client.get("/v1/search/text", params={**text, "mode": "keyword"})) == []
    assert client.delete("/v1/items/scan").status_code == 204
    assert _ids(client.get("/v1/search/text", params={**images, "q": "renee"})) == []
    hybrid_images = {**images, "q": "renee", "mode": "hybrid"}
    assert _ids(client.get("/v1/search/text", params=hybrid_images)) == []


def test_keyword_and_hybrid_search_take_filters_paging_cutoffs_and_negative_words(
    client: TestClient,
) -> None:
    index_texts(
        client,
        *[
            {"text": f"a {c} garden chair", "id": f"chair-{c}", "metadata": {"shop": s}}
            for c, s in [("red", "a"), ("blue", "b"), ("green", "a"), ("plastic red", "b")]
        ],
        {"text": "a red table", "id": "table", "metadata": {"shop": "a"}},
    )
    text = {"q": "red chair", "target": "texts", "k": 10}
    keyword = client.get("/v1/search/text", params={**text, "mode": "keyword"}).json()["results"]
    assert {h["id"] for h in keyword} == {
        "chair-red",
        "chair-blue",
        "chair-green",
        "chair-plastic red",
        "table",
    }
    scores = [h["score"] for h in keyword]
    assert scores == sorted(scores, reverse=True) and keyword[0]["id"] in (
        "chair-red",
        "chair-plastic red",
    )
    # filters apply to both sides before fusion
    shop_a = {**text, "filter": json.dumps({"shop": "a"})}
    for mode in ("keyword", "hybrid"):
        hits = client.get("/v1/search/text", params={**shop_a, "mode": mode}).json()["results"]
        assert {h["id"] for h in hits} == {"chair-red", "chair-green", "table"}, mode
    # pages of a hybrid ranking are slices of the whole ranking
    whole = _ids(client.get("/v1/search/text", params={**text, "mode": "hybrid"}))
    page = _ids(
        client.get("/v1/search/text", params={**text, "mode": "hybrid", "k": 2, "offset": 2})
    )
    assert page == whole[2:4]
    # min_score cuts on the mode's score
    cut = keyword[1]["score"]
    kept = _ids(client.get("/v1/search/text", params={**text, "mode": "keyword", "min_score": cut}))
    assert kept == [h["id"] for h in keyword if h["score"] >= cut]
    # a negative text part leaves the items holding its words out of the keyword ranking
    body = {
        "query": [{"text": "chair"}, {"text": "plastic", "weight": -0.5}],
        "target": "texts",
        "mode": "keyword",
    }
    assert set(_ids(client.post("/v1/search", json=body))) == {
        "chair-red",
        "chair-blue",
        "chair-green",
    }


def test_zero_shot_labels_are_clips_softmax_over_label_cosines(
    client: TestClient, tiny_encoder: OpenClipEncoder
) -> None:
    labels = ["red", "blue", "green"]
    template = "a photo of {}"
    texts = [template.format(label) for label in labels]
    label_vectors = np.array(
        client.post("/v1/embed/text", json={"texts": texts}).json()["embeddings"]
    )
    colours = ["red", "blue"]
    images = np.array(
        client.post("/v1/embed/image", files=[png_file(f"{c}.png", c) for c in colours]).json()[
            "embeddings"
        ]
    )
    response = client.post(
        "/v1/classify",
        files=[png_file(f"{c}.png", c) for c in colours],
        data={"labels": json.dumps(labels), "template": template},
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 2
    for image, row in zip(images, results, strict=True):
        cosines = label_vectors @ image
        logits = tiny_encoder.logit_scale * cosines
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        order = np.argsort(-probabilities)
        assert [r["label"] for r in row] == [labels[i] for i in order]
        np.testing.assert_allclose([r["score"] for r in row], cosines[order], atol=1e-4)
        np.testing.assert_allclose([r["probability"] for r in row], probabilities[order], atol=1e-4)
        assert sum(r["probability"] for r in row) == pytest.approx(1.0)
    # stored items by their stored vectors: the same answer
    client.post(
        "/v1/images",
        files=[png_file(f"{c}.png", c) for c in colours],
        data={"ids": json.dumps(colours)},
    )
    by_items = client.post(
        "/v1/classify", json={"items": colours, "labels": labels, "template": template}
    ).json()["results"]
    for got, want in zip(by_items, results, strict=True):
        assert [r["label"] for r in got] == [r["label"] for r in want]
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-4)
    one = client.post("/v1/classify", json={"items": ["red"], "labels": ["red"]})
    assert one.status_code == 422
    bad_template = client.post(
        "/v1/classify", json={"items": ["red"], "labels": labels, "template": "no slot"}
    )
    assert bad_template.status_code == 422 and "{}" in bad_template.json()["detail"]
    assert (
        client.post("/v1/classify", json={"items": ["nope"], "labels": labels}).status_code == 404
    )
    too_many = [png_file("r.png", "red")] * 65
    refused = client.post("/v1/classify", files=too_many, data={"labels": json.dumps(labels)})
    assert refused.status_code in (400, 422)
