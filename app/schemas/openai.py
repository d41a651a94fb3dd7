"""OpenAI's embeddings API, as its clients send and read it (the openai SDK, LangChain's and
LlamaIndex's OpenAI embeddings with a `base_url`): `POST /v1/embeddings`, `GET /v1/models`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

OPENAI_PATHS = ("/v1/embeddings", "/v1/models")


class EmbeddingsRequest(BaseModel):
    model: str = Field(..., max_length=256, description="a collection's name, or its model")
    input: str | list[str] = Field(
        ..., description='texts; with "modality": "image", data: URIs of images'
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector's float32 bytes, little-endian"
    )
    dimensions: int | None = Field(None, ge=1, description="if given, the model's own dimension")
    modality: Literal["text", "image"] = Field("text", description="as infinity: which tower")
    user: str | None = Field(None, max_length=256, description="accepted, not used")

    def inputs(self) -> list[str]:
        """The inputs as a list (checked for count and size by the service)."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "xmr"


class ModelsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]
