"""Embeddings for OpenAI-style clients: which collection a `model` names, and its vectors.

A client names a collection, or the model a collection serves (its id, or its open_clip name);
texts go through the text tower, data: URIs of images through the image tower (infinity's
`"modality": "image"`), so one client gets both. The vectors are exactly those of
`/v1/embed/text` and `/v1/embed/image`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

import numpy as np

from app.services.collections import Collection
from app.services.errors import CollectionNotFoundError, InvalidInputError
from app.services.registry import CollectionRegistry

MAX_INPUTS = 2048
MAX_TEXT_CHARS = 100_000
_DATA_URI = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?;base64,", re.IGNORECASE)


class InvalidEmbeddingsInputError(InvalidInputError):
    """An embeddings request that cannot be served; `param` names the field at fault."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def resolve_model(collections: CollectionRegistry, model: str) -> Collection:
    """The collection `model` names: a collection's name first, then the model id or open_clip
    name a collection serves (`default` first among several serving it)."""
    serving = collections.all()
    for collection in serving:
        if collection.state.name == model:
            return collection
    for collection in serving:
        current = collection.state.current
        if model in (current.model_id, current.spec.model):
            return collection
    raise CollectionNotFoundError(model)


def model_names(collections: CollectionRegistry) -> list[tuple[str, float]]:
    """What `GET /v1/models` lists: each collection's name, and each model id served, with when
    its collection was made."""
    names: dict[str, float] = {}
    for collection in collections.all():
        state = collection.state
        names.setdefault(state.name, state.created_at)
        names.setdefault(state.current.model_id, state.created_at)
    return list(names.items())


def check_dimensions(dimensions: int | None, dim: int) -> None:
    if dimensions is not None and dimensions != dim:
        raise InvalidEmbeddingsInputError(
            f"this model's vectors have {dim} dimensions; a CLIP vector cannot be shortened "
            f"(leave out dimensions, or ask for {dim})",
            "dimensions",
        )


def check_inputs(inputs: Sequence[str]) -> None:
    if not inputs:
        raise InvalidEmbeddingsInputError("input must not be empty", "input")
    if len(inputs) > MAX_INPUTS:
        raise InvalidEmbeddingsInputError(f"at most {MAX_INPUTS} inputs a request", "input")


def check_texts(texts: Sequence[str]) -> None:
    for position, text in enumerate(texts):
        if not text.strip():
            raise InvalidEmbeddingsInputError(f"input[{position}] is empty", "input")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidEmbeddingsInputError(
                f"input[{position}] is longer than {MAX_TEXT_CHARS} characters", "input"
            )


def image_bytes(uri: str, position: int) -> bytes:
    """The bytes of a `data:image/...;base64,` URI (addresses elsewhere are not fetched)."""
    match = _DATA_URI.match(uri)
    if match is None:
        raise InvalidEmbeddingsInputError(
            f"input[{position}]: images are sent as data:image/...;base64,... URIs "
            "(xmr fetches no addresses)",
            "input",
        )
    try:
        return base64.b64decode(uri[match.end() :], validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidEmbeddingsInputError(
            f"input[{position}]: the data URI is not valid base64", "input"
        ) from e


def as_base64(vector: np.ndarray) -> str:
    """A vector as OpenAI's base64 encoding: its float32 bytes, little-endian."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
