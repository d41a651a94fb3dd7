"""The raw vectors the API returns equal open_clip's own."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from models import OpenClipEncoder
from tests.conftest import (
    reference_open_clip,
)


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
