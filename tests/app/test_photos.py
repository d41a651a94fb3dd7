"""Photos as people keep them: HEIC and AVIF, thumbnails, EXIF dates and places as filters.

The photos are made here, by Pillow and pillow-heif, with the shapes model's scenes in them so
that a text finds them; EXIF is written the way cameras write it.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.app.test_collections import SHAPES, shapes_encoder  # noqa: F401
from tests.conftest import _milvus_available, image_bytes, with_backend
from tests.photos import camera_exif, encoded, noisy_photo
from xmr.shapes import random_scene, render


def scene(color: str, kind: str, seed: int = 0, size: int = 160) -> Image.Image:
    rng = np.random.default_rng(seed)
    return render(random_scene(rng, 1, [(color, kind)], min_side=size, max_side=size))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"model": SHAPES, "pretrained": None})


@pytest.fixture
def client(settings: Settings, shapes_encoder: OpenClipEncoder) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(create_app(settings, encoder=shapes_encoder)) as test_client:
        yield test_client


def index(client: TestClient, files: dict[str, bytes], metadata: list | None = None) -> None:
    response = client.post(
        "/v1/images",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files.items()],
        data={"ids": json.dumps(list(files)), "metadata": json.dumps(metadata)}
        if metadata
        else {"ids": json.dumps(list(files))},
    )
    assert response.status_code == 201, response.text


def top_ids(client: TestClient, query: str, k: int = 1, **params: object) -> list[str]:
    response = client.get("/v1/search/text", params={"q": query, "k": k, **params})
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


# -- formats -------------------------------------------------------------------------------------
def test_a_heic_and_an_avif_photo_index_and_are_found_by_text(client: TestClient) -> None:
    # the HEIC is stored sideways, as a phone held upright stores it, and says so in its EXIF
    sideways = scene("red", "square", size=192).rotate(90, expand=True)
    heic = encoded(sideways, "HEIF", camera_exif(orientation=6), quality=90)
    avif = encoded(scene("blue", "circle", size=192), "AVIF", quality=90)
    plain = image_bytes("yellow", "PNG", (64, 64))
    index(client, {"phone.heic": heic, "web.avif": avif, "plain.png": plain})
    assert top_ids(client, "a red square") == ["phone.heic"]
    assert top_ids(client, "a blue circle") == ["web.avif"]
    records = {name: client.get(f"/v1/items/{name}").json() for name in ("phone.heic", "web.avif")}
    assert records["phone.heic"]["content_type"] == "image/heic"
    assert records["web.avif"]["content_type"] == "image/avif"
    assert records["phone.heic"]["metadata"]["exif"]["format"] == "heic"
    assert records["web.avif"]["metadata"]["exif"]["format"] == "avif"
    content = client.get("/v1/items/phone.heic/content")
    assert content.headers["content-type"] == "image/heic" and content.content == heic


def test_a_rotated_heic_is_shown_upright_in_its_thumbnail(client: TestClient) -> None:
    upright = Image.new("RGB", (300, 200), "white")
    upright.paste(Image.new("RGB", (300, 50), "black"), (0, 0))  # black along the top
    sideways = upright.rotate(90, expand=True)  # 200 x 300, the black band on the left
    index(client, {"turned.heic": encoded(sideways, "HEIF", camera_exif(orientation=6))})
    record = client.get("/v1/items/turned.heic").json()
    assert (record["metadata"]["exif"]["width"], record["metadata"]["exif"]["height"]) == (300, 200)
    thumbnail = Image.open(io.BytesIO(client.get(record["thumbnail_url"]).content))
    assert thumbnail.size == (300, 200)
    assert sum(thumbnail.getpixel((150, 10))) < 100  # top: black
    assert sum(thumbnail.getpixel((150, 190))) > 600  # bottom: white


def heic_declaring(width: int, height: int) -> bytes:
    """A small HEIC whose image boxes (ispe) declare `width` x `height`."""
    data = bytearray(encoded(Image.new("RGB", (64, 64), "red"), "HEIF"))
    at = data.find(b"ispe")
    while at > 0:
        data[at + 8 : at + 16] = struct.pack(">II", width, height)
        at = data.find(b"ispe", at + 1)
    return bytes(data)


@pytest.mark.parametrize("size", [(20_000, 20_000), (9000, 9000)])
def test_a_heic_decompression_bomb_is_refused_like_a_png_one(
    client: TestClient, size: tuple[int, int]
) -> None:
    for route, field in (("/v1/images", "files"), ("/v1/search/image", "file")):
        response = client.post(route, files={field: ("bomb.heic", heic_declaring(*size))})
        assert response.status_code == 413, response.text
        assert "pixels" in response.json()["detail"]


# -- thumbnails ----------------------------------------------------------------------------------
def test_every_image_has_a_small_thumbnail_with_an_etag(client: TestClient) -> None:
    photo = noisy_photo(1)
    index(client, {"big.jpg": photo})
    client.post("/v1/texts", json={"items": [{"id": "words", "text": "a red square"}]})
    hit = client.get("/v1/search/text", params={"q": "a photo", "k": 1}).json()["results"][0]
    assert hit["thumbnail_url"].startswith("/v1/items/big.jpg/thumbnail?v=")
    response = client.get(hit["thumbnail_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert "immutable" in response.headers["cache-control"]
    assert len(response.content) < 40_000 < len(photo) / 4
    assert Image.open(io.BytesIO(response.content)).size == (384, 288)
    etag = response.headers["etag"]
    again = client.get(hit["thumbnail_url"], headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    bare = client.get("/v1/items/big.jpg/thumbnail")
    assert bare.status_code == 200 and bare.headers["cache-control"] == "private, no-cache"
    assert client.get("/v1/items/words/thumbnail").status_code == 404
    texts = client.get("/v1/search/text", params={"q": "red", "target": "texts"}).json()
    assert texts["results"][0]["thumbnail_url"] is None


def test_the_same_bytes_again_share_one_thumbnail_and_the_id_changes_its_etag(
    client: TestClient, settings: Settings
) -> None:
    first, second = noisy_photo(1, (640, 480)), noisy_photo(2, (640, 480))
    index(client, {"a": first, "b": first})
    thumbnails = sorted((settings.data_dir).rglob("*.thumb.jpg"))
    assert len(thumbnails) == 1
    etag = client.get("/v1/items/a/thumbnail").headers["etag"]
    index(client, {"a": second})  # the id now shows other bytes
    response = client.get("/v1/items/a/thumbnail", headers={"If-None-Match": etag})
    assert response.status_code == 200 and response.headers["etag"] != etag
    assert client.delete("/v1/items/b").status_code == 204  # the first bytes: no record now
    assert len(sorted(settings.data_dir.rglob("*.thumb.jpg"))) == 1


def test_an_image_stored_without_a_thumbnail_gets_one_on_first_request(
    client: TestClient, settings: Settings
) -> None:
    index(client, {"old": noisy_photo(3, (800, 600))})
    (stored,) = settings.data_dir.rglob("*.thumb.jpg")
    stored.unlink()  # as an item indexed before thumbnails were made
    response = client.get("/v1/items/old/thumbnail")
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (384, 288)
    assert stored.is_file() and stored.read_bytes() == response.content  # made once, kept


# -- EXIF as metadata ----------------------------------------------------------------------------
def test_exif_facts_are_kept_under_exif_and_the_place_only_when_asked(
    client: TestClient,
) -> None:
    exif = camera_exif("2025:06:14 10:22:31", "+02:00", gps=(52.52, -13.405))
    photo = encoded(scene("red", "square"), "JPEG", exif)
    index(client, {"p": photo}, [{"album": "summer"}])
    metadata = client.get("/v1/items/p").json()["metadata"]
    assert metadata == {
        "album": "summer",
        "exif": {
            "format": "jpeg",
            "taken_at": "2025-06-14T10:22:31+02:00",
            "camera": "Canon EOS R5",
            "lens": "RF24-105mm F4 L IS USM",
            "width": 160,
            "height": 160,
        },
    }


def test_the_place_is_kept_with_keep_gps(
    settings: Settings,
    shapes_encoder: OpenClipEncoder,  # noqa: F811
) -> None:
    exif = camera_exif("2025:06:14 10:22:31", gps=(52.52, -13.405))
    photo = encoded(scene("red", "square"), "JPEG", exif)
    with TestClient(
        create_app(settings.model_copy(update={"keep_gps": True}), encoder=shapes_encoder)
    ) as client:
        index(client, {"p": photo})
        assert client.get("/v1/items/p").json()["metadata"]["exif"]["gps"] == {
            "lat": 52.52,
            "lon": -13.405,
        }
        near = {"exif.gps": {"near": {"lat": 52.5, "lon": -13.4, "km": 5}}}
        far = {"exif.gps": {"near": {"lat": 48.8, "lon": 2.3, "km": 5}}}
        assert top_ids(client, "a photo", filter=json.dumps(near)) == ["p"]
        assert top_ids(client, "a photo", filter=json.dumps(far)) == []


def test_a_clients_own_exif_key_is_refused(client: TestClient) -> None:
    response = client.post(
        "/v1/images",
        files=[("files", ("p.png", image_bytes("red"), "image/png"))],
        data={"metadata": json.dumps([{"exif": {"taken_at": "1999-01-01"}}])},
    )
    assert response.status_code == 422
    assert "files[0].metadata.exif: reserved" in response.json()["detail"]
    batch = client.post(
        "/v1/batch",
        json={"items": [{"image_base64": "aGk=", "metadata": {"exif": {}}}]},
    )
    assert batch.status_code == 422 and "reserved" in batch.json()["detail"]


MILVUS = pytest.mark.skipif(not _milvus_available(), reason="pymilvus/milvus-lite missing")
MONTHS = {  # three months, and one photo without a date
    "may": "2025:05:20 09:00:00",
    "june": "2025:06:30 23:30:00",
    "july": "2025:07:01 00:10:00",
    "undated": None,
}


@pytest.fixture(
    params=[
        ("faiss", "Flat"),
        ("faiss", "HNSW32"),
        pytest.param(("milvus", "auto"), marks=MILVUS),
        pytest.param(("milvus-server", "auto"), marks=MILVUS),
    ],
    ids=lambda p: "-".join(p),
)
def dated_client(
    request: pytest.FixtureRequest,
    settings: Settings,
    shapes_encoder: OpenClipEncoder,  # noqa: F811
) -> Iterator[TestClient]:
    backend, structure = request.param
    if backend == "milvus-server":  # a server's AUTOINDEX is approximate
        uri = request.getfixturevalue("milvus_lite_server")
        configured = with_backend(settings, "milvus").model_copy(update={"milvus_uri": uri})
    else:
        configured = with_backend(settings, backend)
    configured = configured.model_copy(update={"index": structure})
    with TestClient(create_app(configured, encoder=shapes_encoder)) as client:
        files = {
            name: encoded(scene("red", "square", seed=n), "JPEG", camera_exif(taken))
            for n, (name, taken) in enumerate(MONTHS.items())
        }
        index(client, files)
        yield client


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"gte": "2025-06-01", "lt": "2025-07-01"}, {"june"}),
        ({"gte": "2025-05-01", "lte": "2025-06-30"}, {"may", "june"}),
        ({"gt": "2025-05-20"}, {"june", "july"}),
        ({"gte": "2025-06-30T23:00", "lt": "2025-07-01T00:10"}, {"june"}),
        ({"lt": "2030-01-01"}, {"may", "june", "july"}),
    ],
)
def test_a_date_range_returns_exactly_the_photos_taken_in_it(
    dated_client: TestClient, where: dict, expected: set[str]
) -> None:
    ids = top_ids(dated_client, "a red square", k=10, filter=json.dumps({"exif.taken_at": where}))
    assert set(ids) == expected and len(ids) == len(expected)
