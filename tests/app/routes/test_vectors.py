"""Vectors made elsewhere (`POST /v1/vectors`): checked, normalized, stored by id as a batch job
whose items need no encoding; JSON rows or a multipart .npy array."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models import OpenClipEncoder
from tests.conftest import wait_for_job

CAPTIONS = ["a red circle", "two blue squares", "a green triangle on white", "stripes"]


def npy(vectors: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    return buffer.getvalue()


def stored(client: TestClient, response: object) -> dict:
    assert response.status_code == 202, response.text  # type: ignore[attr-defined]
    return wait_for_job(client, response.json()["job_id"])  # type: ignore[attr-defined]


def test_json_vectors_are_stored_normalized_and_each_is_found_by_its_own_text(
    client: TestClient, tiny_encoder: OpenClipEncoder
) -> None:
    vectors = tiny_encoder.encode_texts(CAPTIONS) * 3.0  # not unit: normalized on the way in
    items = [
        {"id": f"img-{n}", "vector": v.tolist(), "metadata": {"n": n}}
        for n, v in enumerate(vectors)
    ]
    job = stored(client, client.post("/v1/vectors", json={"items": items}))
    assert (job["status"], job["done"], job["failed"]) == ("done", 4, 0)
    assert client.get("/v1/info").json()["images"] == 4
    for n, caption in enumerate(CAPTIONS):
        hits = client.get("/v1/search/text", params={"q": caption, "k": 1}).json()["results"]
        assert hits[0]["id"] == f"img-{n}"
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)  # unit: a cosine, not 3x one
    assert client.get("/v1/items/img-2").json()["metadata"] == {"n": 2}
    assert client.get("/v1/items/img-2/content").status_code == 404  # xmr never saw the image


def test_an_npy_array_of_float16_with_text_items_and_sending_twice_stores_each_once(
    client: TestClient, tiny_encoder: OpenClipEncoder
) -> None:
    vectors = tiny_encoder.encode_texts(CAPTIONS).astype(np.float16)  # as clip-retrieval saves
    fields = [{"id": f"t{n}", "kind": "text", "text": c} for n, c in enumerate(CAPTIONS[:2])]
    fields += [{"id": f"i{n}", "metadata": {"album": "x"}} for n in range(2, 4)]
    for _ in range(2):
        response = client.post(
            "/v1/vectors",
            files={"vectors": ("v.npy", npy(vectors), "application/octet-stream")},
            data={"items": json.dumps(fields)},
        )
        assert stored(client, response)["done"] == 4
    info = client.get("/v1/info").json()
    assert (info["texts"], info["images"]) == (2, 2)
    assert client.get("/v1/items/t1").json()["text"] == CAPTIONS[1]
    hits = client.get(
        "/v1/search/text", params={"q": CAPTIONS[1], "k": 1, "target": "texts"}
    ).json()["results"]
    assert hits[0]["id"] == "t1" and hits[0]["score"] == pytest.approx(1.0, abs=2e-3)


def test_a_request_of_thousands_of_rows_with_metadata_is_one_job(
    client: TestClient, tiny_encoder: OpenClipEncoder
) -> None:
    rows = 3000
    vectors = np.random.default_rng(0).standard_normal((rows, tiny_encoder.dim)).astype(np.float16)
    fields = [{"id": f"r{n}", "metadata": {"note": "x" * 400, "n": n}} for n in range(rows)]
    assert len(json.dumps(fields)) > 2**20  # past a form field's default 1 MB
    response = client.post(
        "/v1/vectors",
        files={"vectors": ("v.npy", npy(vectors), "application/octet-stream")},
        data={"items": json.dumps(fields)},
    )
    assert stored(client, response)["done"] == rows
    assert client.get("/v1/items/r2999").json()["metadata"]["n"] == 2999


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda v, f: (v[:, :-1], f), "dimensions"),
        (lambda v, f: (np.where(np.arange(4)[:, None] == 1, np.nan, v), f), "vectors[1]"),
        (lambda v, f: (v * (np.arange(4)[:, None] != 2), f), "all zeros"),
        (lambda v, f: (v[:3], f), "3 vectors for 4 items"),
        (lambda v, f: (v, [*f[:3], {"id": "a"}]), "appears twice"),
        (lambda v, f: (v, [*f[:3], {"id": "d", "kind": "text"}]), "needs its text"),
        (lambda v, f: (v, [*f[:3], {"id": "d", "metadata": {"exif": {}}}]), "reserved"),
    ],
)
def test_a_bad_row_refuses_the_whole_request_and_names_it(
    client: TestClient, tiny_encoder: OpenClipEncoder, change: object, message: str
) -> None:
    vectors = tiny_encoder.encode_texts(CAPTIONS)
    fields = [{"id": name} for name in "abcd"]
    bad_vectors, bad_fields = change(vectors, fields)  # type: ignore[operator]
    response = client.post(
        "/v1/vectors",
        files={"vectors": ("v.npy", npy(bad_vectors), "application/octet-stream")},
        data={"items": json.dumps(bad_fields)},
    )
    assert response.status_code == 422 and message in response.text, response.text
    assert client.get("/v1/info").json()["images"] == 0


def test_what_is_not_an_array_of_vectors_is_refused(client: TestClient) -> None:
    not_npy = client.post(
        "/v1/vectors",
        files={"vectors": ("v.npy", b"\x80\x04pickle?", "application/octet-stream")},
        data={"items": json.dumps([{"id": "a"}])},
    )
    assert not_npy.status_code == 422 and ".npy" in not_npy.text
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    objects = client.post(
        "/v1/vectors",
        files={"vectors": ("v.npy", pickled.getvalue(), "application/octet-stream")},
        data={"items": json.dumps([{"id": "a"}])},
    )
    assert objects.status_code == 422  # never unpickled
    ragged = client.post(
        "/v1/vectors", json={"items": [{"id": "a", "vector": [1, 0]}, {"id": "b", "vector": [1]}]}
    )
    assert ragged.status_code == 422 and "differ in length" in ragged.text
    no_items = client.post(
        "/v1/vectors", files={"vectors": ("v.npy", npy(np.ones((1, 4))), "application/x")}
    )
    assert no_items.status_code == 422 and "'items'" in no_items.text
