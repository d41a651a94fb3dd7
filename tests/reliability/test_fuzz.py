"""Fuzzing the API: mutated images and malformed requests never get a 5xx."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.photos import camera_exif, encoded

pytestmark = pytest.mark.fuzz
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _seed_images() -> list[bytes]:
    seeds = []
    for fmt, mode in (
        ("PNG", "RGBA"),
        ("JPEG", "RGB"),
        ("GIF", "P"),
        ("WEBP", "RGB"),
        ("BMP", "RGB"),
        ("TIFF", "CMYK"),
        ("HEIF", "RGB"),
        ("AVIF", "RGB"),
    ):
        buffer = io.BytesIO()
        Image.new(mode, (33, 21), 120).save(buffer, fmt)
        seeds.append(buffer.getvalue())
    # a photo's EXIF (date, camera, lens, place, orientation), read at indexing
    exif = camera_exif("2025:06:14 10:22:31", "+02:00", gps=(52.52, 13.4), orientation=6)
    seeds.append(encoded(Image.new("RGB", (33, 21), 120), "JPEG", exif))
    return seeds


SEEDS = _seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        else:  # rewrite bytes in the header, where sizes and modes live
            data[min(position, 40) : min(position, 40) + 4] = draw(
                st.binary(min_size=4, max_size=4)
            )
    return bytes(data)


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, tiny_encoder: OpenClipEncoder
) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("fuzz")
    config = Settings(
        model="xmr-test-tiny",
        pretrained="",
        data_dir=folder / "data",
        import_root=folder / "import",
        snapshot_interval_s=3600,
        allowed_hosts="testserver",
    )
    (folder / "import").mkdir()
    with TestClient(create_app(config, encoder=tiny_encoder)) as test_client:
        yield test_client


def no_server_error(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()  # every answer, good or bad, is JSON with content


@FUZZ
@given(data=mutated_images())
def test_mutated_images_never_cause_5xx(client: TestClient, data: bytes) -> None:
    no_server_error(client.post("/v1/images", files={"files": ("f.png", data, "image/png")}))
    no_server_error(client.post("/v1/search/image", files={"file": ("f", data, "image/png")}))


# what a JSON encoder can send (httpx refuses NaN and Infinity; the raw-body test sends those)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    q=st.text(max_size=300),
    k=st.one_of(st.integers(-5, 5000), st.text(max_size=5)),
    target=st.sampled_from(["images", "texts", "both", "", "IMAGES"]),
    mode=st.sampled_from(["vector", "keyword", "hybrid", "", "KEYWORD"]),
)
def test_search_parameters_never_cause_5xx(
    client: TestClient, q: str, k: object, target: str, mode: str
) -> None:
    """Any text in any mode: FTS5 syntax in a keyword query is never an error of the server."""
    params = {"q": q, "k": k, "target": target, "mode": mode}
    no_server_error(client.get("/v1/search/text", params=params))


raw_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(body=raw_json_values, route=st.sampled_from(["/v1/texts", "/v1/batch", "/v1/embed/text"]))
def test_arbitrary_json_bodies_never_cause_5xx(
    client: TestClient, body: object, route: str
) -> None:
    no_server_error(
        client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    )


@FUZZ
@given(
    items=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "id": st.text(max_size=300),
                "text": st.text(max_size=200),
                "image_path": st.text(max_size=40),
                "image_base64": st.text(max_size=40),
                "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
            },
        ),
        min_size=0,
        max_size=5,
    ),
    route=st.sampled_from(["/v1/texts", "/v1/batch"]),
)
def test_item_lists_never_cause_5xx(client: TestClient, items: list[dict], route: str) -> None:
    no_server_error(client.post(route, json={"items": items}))


@FUZZ
@given(
    ids=st.text(max_size=50),
    metadata=st.text(max_size=50),
    data=st.binary(max_size=200),
    k=st.text(max_size=6),
)
def test_multipart_fields_never_cause_5xx(
    client: TestClient, ids: str, metadata: str, data: bytes, k: str
) -> None:
    no_server_error(
        client.post(
            "/v1/images", files={"files": ("x", data)}, data={"ids": ids, "metadata": metadata}
        )
    )
    no_server_error(client.post("/v1/batch", files={"files": ("x", data)}, data={"ids": ids}))
    no_server_error(client.post("/v1/search/image", files={"file": ("x", data)}, data={"k": k}))
