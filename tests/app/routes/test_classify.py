"""Zero-shot labels through the API."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models import OpenClipEncoder
from tests.conftest import (
    png_file,
)


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
