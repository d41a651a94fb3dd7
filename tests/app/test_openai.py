"""`POST /v1/embeddings` and `GET /v1/models` through the real openai client, as programs that
embed with OpenAI today would call xmr: its vectors must be xmr's own, float and base64."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from tests.conftest import image_bytes, serve_in_thread

openai = pytest.importorskip("openai", reason="the openai package is a test dependency")
KEY = "sk-xmr-test-key-0123456789"


@pytest.fixture
def server(settings: Settings, tiny_encoder: OpenClipEncoder) -> Iterator[str]:
    keyed = settings.model_copy(update={"api_key": SecretStr(KEY)})
    with serve_in_thread(create_app(keyed, encoder=tiny_encoder)) as url:
        yield url


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def xmr_vectors(server: str, route: str, **request: object) -> np.ndarray:
    response = httpx.post(f"{server}/v1/embed/{route}", headers={"X-API-Key": KEY}, **request)
    response.raise_for_status()
    return np.array(response.json()["embeddings"], dtype=np.float32)


def vectors_of(answer: object) -> np.ndarray:
    """The vectors of an answer; base64 asked for explicitly comes back as sent (float32 bytes)."""
    rows = [
        np.frombuffer(base64.b64decode(e), dtype="<f4") if isinstance(e, str) else np.array(e)
        for e in (item.embedding for item in answer.data)  # type: ignore[attr-defined]
    ]
    return np.array(rows, dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_the_openai_client_embeds_texts_as_xmr_does(
    client: openai.OpenAI, server: str, encoding_format: str
) -> None:
    texts = ["a red circle", "a photo of a dog on the beach", "ünïcode & punctuation!"]
    answer = client.embeddings.create(model="default", input=texts, encoding_format=encoding_format)
    ours = xmr_vectors(server, "text", json={"texts": texts})
    theirs = vectors_of(answer)
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert theirs.shape == ours.shape and cosines(theirs, ours).min() >= 0.99999
    assert answer.model == "default" and answer.object == "list"
    assert 0 < answer.usage.prompt_tokens == answer.usage.total_tokens < 3 * 77


def test_the_sdks_default_base64_is_decoded_to_the_same_vectors(
    client: openai.OpenAI, server: str
) -> None:
    # without encoding_format the SDK asks for base64 and decodes it itself
    answer = client.embeddings.create(model="default", input="a blue square")
    ours = xmr_vectors(server, "text", json={"texts": ["a blue square"]})
    assert cosines(np.array([answer.data[0].embedding]), ours)[0] >= 0.99999
    raw = httpx.post(
        f"{server}/v1/embeddings",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "default", "input": "a blue square", "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, ours[0])


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_images_go_through_the_same_route_as_data_uris(
    client: openai.OpenAI, server: str, encoding_format: str
) -> None:
    images = [image_bytes("red", "PNG", (64, 48)), image_bytes("blue", "JPEG", (40, 40))]
    uris = [
        "data:image/png;base64," + base64.b64encode(images[0]).decode(),
        "data:image/jpeg;base64," + base64.b64encode(images[1]).decode(),
    ]
    answer = client.embeddings.create(
        model="default",
        input=uris,
        encoding_format=encoding_format,
        extra_body={"modality": "image"},
    )
    files = [("files", (f"{n}.bin", data)) for n, data in enumerate(images)]
    ours = xmr_vectors(server, "image", files=files)
    theirs = vectors_of(answer)
    assert cosines(theirs, ours).min() >= 0.99999


def test_the_model_is_named_by_collection_or_model_and_listed(
    client: openai.OpenAI, tiny_encoder: OpenClipEncoder
) -> None:
    listed = {model.id for model in client.models.list()}
    assert listed == {"default", tiny_encoder.model_id}
    by_name = client.embeddings.create(model="default", input="x y", encoding_format="float")
    by_model = client.embeddings.create(
        model=tiny_encoder.model_id, input="x y", encoding_format="float"
    )
    assert by_name.data[0].embedding == by_model.data[0].embedding


def test_errors_come_in_openais_shape(client: openai.OpenAI, server: str) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="no-such-model", input="x")
    assert missing.value.code == "model_not_found"
    assert "no-such-model" in missing.value.message
    with pytest.raises(openai.UnprocessableEntityError) as shortened:
        client.embeddings.create(model="default", input="x", dimensions=3)
    assert shortened.value.param == "dimensions"
    with pytest.raises(openai.UnprocessableEntityError) as not_data:
        client.embeddings.create(
            model="default", input="https://example.com/a.jpg", extra_body={"modality": "image"}
        )
    assert "data:image" in not_data.value.message
    body = httpx.post(
        f"{server}/v1/embeddings",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "default", "input": [1, 2, 3]},  # token arrays: not taken
    ).json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="default", input="x"
        )
    # the other routes keep xmr's own error shape
    other = httpx.get(f"{server}/v1/items/none", headers={"X-API-Key": KEY})
    assert other.status_code == 404 and "detail" in other.json()
