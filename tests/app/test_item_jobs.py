"""Near-duplicates (groups, dedup at indexing) and zero-shot tagging, on the shapes-tiny model:
held-out drawings it has never seen, re-encoded and resized the way photo libraries get them."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from app.services import tagging
from models import OpenClipEncoder
from tests.app.test_collections import create_shapes
from tests.conftest import BACKENDS, wait_for_job, with_backend
from xmr.shapes import COLORS, SHAPES, random_scene, render

BASE = "/v1/collections/shapes"
PAIRS = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "star")]


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """On both vector backends; models the app loads itself run on PyTorch fp32."""
    settings = settings.model_copy(update={"runtime": "torch", "precision": "fp32"})
    return with_backend(settings, request.param)


@pytest.fixture
def client(settings: Settings, tiny_encoder: OpenClipEncoder) -> Iterator[TestClient]:
    with TestClient(create_app(settings, encoder=tiny_encoder)) as test_client:
        create_shapes(test_client)
        yield test_client


def drawing(pair: tuple[str, str], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return render(random_scene(rng, 1, pairs=[pair], min_side=200, max_side=260))


def encoded(image: Image.Image, fmt: str = "PNG", scale: float = 1.0) -> bytes:
    if scale != 1.0:
        image = image.resize((int(image.width * scale), int(image.height * scale)))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def upload(client: TestClient, named: dict[str, bytes], **form: Any) -> dict[str, Any]:
    files = [
        ("files", (f"{name}.img", data, "application/octet-stream")) for name, data in named.items()
    ]
    response = client.post(
        f"{BASE}/images", files=files, data={"ids": json.dumps(list(named)), **form}
    )
    assert response.status_code == 201, response.text
    return response.json()


def embed(client: TestClient, *blobs: bytes) -> np.ndarray:
    files = [("files", ("x.img", b, "application/octet-stream")) for b in blobs]
    return np.array(client.post(f"{BASE}/embed/image", files=files).json()["embeddings"])


def gallery() -> dict[str, bytes]:
    """Two drawings with copies (a re-encoded JPEG, a 90 % resize), two without."""
    a, b, c, d = (drawing(pair, seed) for seed, pair in enumerate(PAIRS))
    return {
        "a": encoded(a),
        "a-jpeg": encoded(a, "JPEG"),
        "a-90": encoded(a, scale=0.9),
        "b": encoded(b),
        "b-jpeg": encoded(b, "JPEG"),
        "c": encoded(c),
        "d": encoded(d),
    }


def test_duplicates_group_copies_and_not_different_images(
    client: TestClient, settings: Settings
) -> None:
    images = gallery()
    upload(client, images)
    vectors = dict(zip(images, embed(client, *images.values()), strict=True))
    response = client.get(f"{BASE}/duplicates", params={"threshold": 0.95})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [g["ids"] for g in body["groups"]] == [["a", "a-jpeg", "a-90"], ["b", "b-jpeg"]]
    assert body["total_groups"] == 2
    expected_min = min(
        float(vectors[x] @ vectors[y])
        for x in ("a", "a-jpeg", "a-90")
        for y in ("a", "a-jpeg", "a-90")
        if x < y
    )
    assert body["groups"][0]["min_score"] == pytest.approx(expected_min, abs=1e-4)
    # the different drawings are far below the threshold: the premise of the test
    assert max(float(vectors["c"] @ vectors[o]) for o in ("a", "b", "d")) < 0.9
    # pages of groups, a filter, another target
    second = client.get(f"{BASE}/duplicates", params={"threshold": 0.95, "limit": 1, "offset": 1})
    assert [g["ids"] for g in second.json()["groups"]] == [["b", "b-jpeg"]]
    assert client.get(f"{BASE}/duplicates", params={"target": "texts"}).json()["groups"] == []
    # a lower threshold joins more; a threshold of 1.0 keeps only exact copies
    loose = client.get(f"{BASE}/duplicates", params={"threshold": 0.5}).json()["groups"]
    tight = [set(g["ids"]) for g in body["groups"]]
    assert all(any(group <= set(joined["ids"]) for joined in loose) for group in tight)
    assert sum(len(g["ids"]) for g in loose) >= sum(len(g) for g in tight)
    # lower thresholds join nearly every pair: n² work for nothing (issue 23)
    assert client.get(f"{BASE}/duplicates", params={"threshold": -1.0}).status_code == 422
    assert client.get(f"{BASE}/duplicates", params={"threshold": 1.5}).status_code == 422


def test_duplicates_over_the_sync_limit_run_as_a_job_with_the_same_groups(
    settings: Settings, tiny_encoder: OpenClipEncoder
) -> None:
    settings = settings.model_copy(update={"duplicates_sync_limit": 3})
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        create_shapes(client)
        upload(client, gallery())
        response = client.get(
            f"{BASE}/duplicates", params={"threshold": 0.95, "filter": '{"x": {"in": [1]}}'}
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["job_id"])
        assert job["kind"] == "duplicates" and job["status"] == "done"
        assert job["result"] == {"groups": [], "total_groups": 0}  # the filter matches nothing
        job_id = client.get(f"{BASE}/duplicates", params={"threshold": 0.95}).json()["job_id"]
        job = wait_for_job(client, job_id)
        assert (job["total"], job["done"]) == (7, 7)
        assert [g["ids"] for g in job["result"]["groups"]] == [
            ["a", "a-jpeg", "a-90"],
            ["b", "b-jpeg"],
        ]


def test_dedup_at_indexing_returns_the_existing_id(client: TestClient) -> None:
    images = gallery()
    upload(client, {"a": images["a"], "b": images["b"]})
    answer = upload(
        client,
        {
            "copy": images["a-jpeg"],
            "c": images["c"],
            "c-again": encoded(drawing(PAIRS[2], 2), scale=0.9),
        },
        dedup_threshold="0.95",
    )
    assert answer["ids"] == ["a", "c", "c"]
    assert [(d["position"], d["duplicate_of"]) for d in answer["duplicates"]] == [
        (0, "a"),
        (2, "c"),
    ]
    assert answer["duplicates"][0]["score"] >= 0.95
    assert client.get(f"{BASE}/items/copy").status_code == 404
    assert client.get(f"{BASE}/items/c-again").status_code == 404
    # without the threshold a copy is stored as before
    assert upload(client, {"copy": images["a-jpeg"]})["duplicates"] == []
    # batch jobs: a JSON body and a multipart form
    body = {
        "items": [
            {"id": "b-copy", "image_base64": base64.b64encode(images["b-jpeg"]).decode()},
            {"id": "d", "image_base64": base64.b64encode(images["d"]).decode()},
        ],
        "dedup_threshold": 0.95,
    }
    job = wait_for_job(client, client.post(f"{BASE}/batch", json=body).json()["job_id"])
    assert job["status"] == "done" and job["done"] == 2
    assert [(d["position"], d["id"], d["duplicate_of"]) for d in job["duplicates"]] == [
        (0, "b-copy", "b")
    ]
    form = client.post(
        f"{BASE}/batch",
        files=[("files", ("a.png", images["a-90"], "image/png"))],
        data={"ids": '["a-small"]', "dedup_threshold": "0.95"},
    )
    job = wait_for_job(client, form.json()["job_id"])
    assert [d["duplicate_of"] for d in job["duplicates"]] == ["a"]  # "copy" is "a" as well
    assert client.get(f"{BASE}/items/d").status_code == 200
    bad = client.post(
        f"{BASE}/batch",
        files=[("files", ("a.png", images["a"], "image/png"))],
        data={"dedup_threshold": "x"},
    )
    assert bad.status_code == 422


def held_out_drawings(n: int, seed: int) -> list[tuple[str, bytes]]:
    """Drawings with the training set's variation (colour jitter, blur, noise), unseen seeds."""
    rng = np.random.default_rng(seed)
    drawings = []
    for _ in range(n):
        scene = random_scene(rng, 1)
        shape = scene.shapes[0]
        drawings.append((f"{shape.color} {shape.kind}", encoded(render(scene, rng))))
    return drawings


LABELS = [f"{color} {shape}" for color in COLORS for shape in SHAPES]


def test_zero_shot_labels_name_colour_and_shape_of_held_out_drawings(client: TestClient) -> None:
    drawings = held_out_drawings(48, seed=90_210)
    response = client.post(
        f"{BASE}/classify",
        files=[("files", (f"{i}.png", data, "image/png")) for i, (_, data) in enumerate(drawings)],
        data={"labels": json.dumps(LABELS), "template": "a {}"},
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    right = sum(row[0]["label"] == truth for row, (truth, _) in zip(results, drawings, strict=True))
    assert right / len(drawings) >= 0.9
    for row in results:
        assert len(row) == len(LABELS)
        assert sum(r["probability"] for r in row) == pytest.approx(1.0, abs=1e-6)


def test_tagging_writes_the_best_label_into_metadata_and_resumes(
    settings: Settings, tiny_encoder: OpenClipEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawings = held_out_drawings(12, seed=4242)
    monkeypatch.setattr(tagging, "TAG_BATCH", 3)
    slow_step = tagging.tag_next

    async def one_step_at_a_time(*args: Any) -> Any:
        await asyncio.sleep(0.3)  # room to stop the service between steps
        return await slow_step(*args)

    monkeypatch.setattr("app.jobs.tagging.tag_next", one_step_at_a_time)
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        create_shapes(client)
        files = [("files", (f"{i}.png", data, "image/png")) for i, (_, data) in enumerate(drawings)]
        ids = [f"d{i}" for i in range(len(drawings))]
        meta = [{"set": "tagged" if i < 9 else "other"} for i in range(len(drawings))]
        client.post(
            f"{BASE}/images",
            files=files,
            data={"ids": json.dumps(ids), "metadata": json.dumps(meta)},
        )
        request = {
            "labels": LABELS,
            "template": "a {}",
            "field": "tag",
            "filter": {"set": "tagged"},
        }
        job_id = client.post(f"{BASE}/classify/tag", json=request).json()["job_id"]
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job_id}").json()["done"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # the service stopped between steps: the job waits, and what it wrote is kept
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "interrupted" and 3 <= job["done"] < 9, job
        first = {i: client.get(f"{BASE}/items/{i}").json() for i in ids}
        tagged_before = [i for i in ids if "tag" in (first[i]["metadata"] or {})]
        assert len(tagged_before) == job["done"]
        assert client.post(f"/v1/jobs/{job_id}/resume").status_code == 202
        job = wait_for_job(client, job_id)
        assert (job["status"], job["done"]) == ("done", 9)
        items = {i: client.get(f"{BASE}/items/{i}").json() for i in ids}
        right = 0
        for position, (truth, _) in enumerate(drawings):
            metadata = items[f"d{position}"]["metadata"]
            if position >= 9:
                assert {k: v for k, v in metadata.items() if k != "exif"} == {"set": "other"}
                continue
            right += metadata["tag"] == truth
            assert 0.0 < metadata["tag_probability"] <= 1.0 and metadata["set"] == "tagged"
        assert right >= 8
        for item_id in tagged_before:  # not labelled twice
            assert items[item_id]["updated_at"] == first[item_id]["updated_at"]
        # the keyword index follows metadata written by the job
        tag = items["d0"]["metadata"]["tag"]
        found = client.get(
            f"{BASE}/search/text", params={"q": tag, "mode": "keyword", "k": 20}
        ).json()["results"]
        assert "d0" in [h["id"] for h in found]
        bad = client.post(f"{BASE}/classify/tag", json={**request, "field": "a.b"})
        assert bad.status_code == 422


def test_a_cancelled_tagging_job_stops_between_batches(
    settings: Settings, tiny_encoder: OpenClipEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tagging, "TAG_BATCH", 2)
    step = tagging.tag_next

    async def slow(*args: Any) -> Any:
        await asyncio.sleep(0.3)
        return await step(*args)

    monkeypatch.setattr("app.jobs.tagging.tag_next", slow)
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        create_shapes(client)
        upload(client, gallery())
        request = {"labels": LABELS, "field": "tag"}
        job_id = client.post(f"{BASE}/classify/tag", json=request).json()["job_id"]
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job_id}").json()["done"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        time.sleep(1.0)  # more than a step: a job that went on would have moved
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["done"] < job["total"] == 7
        tagged = [
            i
            for i in gallery()
            if "tag" in (client.get(f"{BASE}/items/{i}").json()["metadata"] or {})
        ]
        assert len(tagged) == job["done"]
