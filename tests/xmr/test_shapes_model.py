"""The bundled shapes-tiny model loads like any open_clip model, and its searches mean something."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from models.options import LoadOptions
from xmr.client import XmrClient
from xmr.eval import evaluate, load_karpathy
from xmr.shapes import SHAPES, write_eval_set

RGB = {
    "red": (220, 20, 20),
    "blue": (20, 60, 230),
    "green": (30, 170, 40),
    "yellow": (245, 220, 20),
}


@pytest.fixture(scope="module")
def shapes_encoder() -> OpenClipEncoder:
    return OpenClipEncoder.load("shapes-tiny", None, LoadOptions(device="cpu"))


@pytest.fixture
def shapes_client(tmp_path: Path, shapes_encoder: OpenClipEncoder) -> Iterator[TestClient]:
    settings = Settings(
        model="shapes-tiny",
        data_dir=tmp_path / "data",
        snapshot_interval_s=3600,
        allowed_hosts="testserver",
    )
    with TestClient(create_app(settings, encoder=shapes_encoder)) as client:
        yield client


def draw(
    shape: str, color: str, size: tuple[int, int] = (200, 160), background: int = 128
) -> bytes:
    """Draw one shape with plain Pillow calls, independently of xmr.shapes' renderer."""
    image = Image.new("RGB", size, (background,) * 3)
    pen = ImageDraw.Draw(image)
    cx, cy, r = size[0] / 2, size[1] / 2, min(size) * 0.3
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=RGB[color])
    elif shape == "square":
        pen.rectangle((cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8), fill=RGB[color])
    elif shape == "triangle":
        pen.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=RGB[color])
    else:  # star
        points = [
            (
                cx + (r if i % 2 == 0 else r * 0.4) * math.cos(math.radians(90 + 36 * i)),
                cy - (r if i % 2 == 0 else r * 0.4) * math.sin(math.radians(90 + 36 * i)),
            )
            for i in range(10)
        ]
        pen.polygon(points, fill=RGB[color])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_bundled_model_loads_through_open_clip_local_dir(shapes_encoder: OpenClipEncoder) -> None:
    assert shapes_encoder.model_id.startswith("shapes-tiny/local@")
    assert shapes_encoder.dim == 128
    vectors = shapes_encoder.encode_texts(["a red circle"])
    assert vectors.dtype == np.float32
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)


def test_a_red_circle_query_ranks_red_circles_first(shapes_client: TestClient) -> None:
    gallery = {
        "red-circle-1": draw("circle", "red"),
        "red-circle-2": draw("circle", "red", size=(150, 180), background=90),
        "red-square": draw("square", "red"),
        "blue-circle": draw("circle", "blue"),
        "green-triangle": draw("triangle", "green"),
        "yellow-star": draw("star", "yellow"),
        "blue-square": draw("square", "blue"),
    }
    response = shapes_client.post(
        "/v1/images",
        files=[("files", (f"{name}.jpg", data, "image/jpeg")) for name, data in gallery.items()],
        data={"ids": str(list(gallery)).replace("'", '"')},
    )
    assert response.status_code == 201

    def top(query: str, k: int) -> list[str]:
        results = shapes_client.get("/v1/search/text", params={"q": query, "k": k}).json()
        return [r["id"] for r in results["results"]]

    assert set(top("a red circle", 2)) == {"red-circle-1", "red-circle-2"}
    assert top("a red circle", 3)[2] == "red-square"  # the right colour before the right shape
    assert top("a red square", 1) == ["red-square"]
    assert top("a blue square", 1) == ["blue-square"]
    assert top("a yellow star", 1) == ["yellow-star"]
    assert top("a green triangle", 1) == ["green-triangle"]


def test_image_query_finds_its_caption(shapes_client: TestClient) -> None:
    captions = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
    shapes_client.post("/v1/texts", json={"items": [{"text": c, "id": c} for c in captions]})
    query = {"file": ("q.jpg", draw("star", "yellow"), "image/jpeg")}
    results = shapes_client.post("/v1/search/image", files=query, data={"k": "1"}).json()
    assert results["results"][0]["id"] == "a yellow star"


def test_zero_shot_labels_name_the_colour_and_shape_of_held_out_drawings(
    shapes_client: TestClient,
) -> None:
    """Every colour x shape label, and drawings the model never saw (this file's own renderer,
    other sizes and backgrounds): top-1 >= 0.9, as the issue asks, and each row sums to 1."""
    labels = [f"{color} {shape}" for color in RGB for shape in SHAPES]
    drawings = [
        (f"{color} {shape}", draw(shape, color, size=size, background=background))
        for color in RGB
        for shape in SHAPES
        for size, background in (((200, 160), 128), ((150, 190), 70))
    ]
    response = shapes_client.post(
        "/v1/classify",
        files=[("files", (f"{n}.jpg", data, "image/jpeg")) for n, (_, data) in enumerate(drawings)],
        data={"labels": json.dumps(labels), "template": "a {}"},
    )
    assert response.status_code == 200, response.text
    rows = response.json()["results"]
    assert len(rows) == len(drawings) == 32
    right = [row[0]["label"] == truth for (truth, _), row in zip(drawings, rows, strict=True)]
    assert sum(right) / len(right) >= 0.9, [r[0]["label"] for r in rows]
    for row in rows:
        assert sorted(r["label"] for r in row) == sorted(labels)
        assert sum(r["probability"] for r in row) == pytest.approx(1.0, abs=1e-4)
        probabilities = [r["probability"] for r in row]
        assert probabilities == sorted(probabilities, reverse=True)


def test_held_out_recall_through_the_api(shapes_client: TestClient, tmp_path: Path) -> None:
    captions = write_eval_set(tmp_path / "eval", seed=999, n_two=40)
    images = load_karpathy(captions, None, "test")
    report = evaluate(XmrClient(http=shapes_client), images, (1, 5, 10), keep=False)
    # the targets (measured on the full held-out set: 1.0, 1.0, 1.0, 1.0; BENCHMARKS.md)
    assert report["text_to_image"]["1-shape"]["R@1"] >= 0.9
    assert report["image_to_text"]["1-shape"]["R@1"] >= 0.9
    assert report["text_to_image"]["2-shape"]["R@5"] >= 0.9
    assert report["image_to_text"]["2-shape"]["R@5"] >= 0.9
    assert shapes_client.get("/v1/info").json()["images"] == 0  # the evaluation cleaned up


def test_eval_sets_are_reproducible(tmp_path: Path) -> None:
    first = write_eval_set(tmp_path / "a", seed=5, n_two=10).read_text()
    second = write_eval_set(tmp_path / "b", seed=5, n_two=10).read_text()
    assert first == second
    assert (tmp_path / "a" / "00000.png").read_bytes() == (
        tmp_path / "b" / "00000.png"
    ).read_bytes()
