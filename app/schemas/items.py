"""Bodies of the item routes: indexing texts and images, hash lookups, items, raw embeddings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.fields import MAX_TEXT_CHARS, JSONObject, Metadata, QueryText
from index import Kind


class TextItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(
        ...,
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="the text to index; stored whole, encoded cut to the model's context",
    )
    id: str | None = Field(None, min_length=1, max_length=256)
    metadata: Metadata = None

    @model_validator(mode="after")
    def _not_blank(self) -> TextItem:
        if not self.text.strip():
            raise ValueError("text must not be empty or only whitespace")
        return self


class IndexTextsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"text": "a red circle", "id": "caption-1", "metadata": {"lang": "en"}},
                        {"text": "a blue square and a yellow star"},
                    ]
                }
            ]
        },
    )

    items: list[TextItem] = Field(..., min_length=1, max_length=10_000)


DEDUP_HELP = (
    "images whose cosine to a stored image (or to one before them in the request) is at "
    "least this are not stored again; their id is the existing item's"
)


class DuplicateResponse(BaseModel):
    position: int = Field(description="the image's position in the request")
    duplicate_of: str = Field(description="the id of the stored item it duplicates")
    score: float = Field(description="their cosine")


class IndexedResponse(BaseModel):
    ids: list[str] = Field(description="per item, in order; a duplicate's is the existing id")
    duplicates: list[DuplicateResponse] = Field(
        default_factory=list, description="with dedup_threshold: the images not stored again"
    )


class HashLookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: list[str] = Field(..., min_length=1, max_length=10_000)


class HashLookupResponse(BaseModel):
    found: dict[str, str] = Field(..., description="digest -> id of an image with those bytes")


class ItemResponse(BaseModel):
    id: str
    kind: Kind
    metadata: JSONObject | None = None
    text: str | None = None
    content_type: str | None = None
    content_url: str
    thumbnail_url: str | None = Field(
        None, description="images: a small rendition (384 px, JPEG) for result grids"
    )
    model: str
    created_at: float
    updated_at: float


class EmbedTextRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"texts": ["a red circle", "a dog"]}]}
    )

    texts: list[QueryText] = Field(..., min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _not_blank(self) -> EmbedTextRequest:
        for position, text in enumerate(self.texts):
            if not text.strip():
                raise ValueError(f"texts[{position}] is empty or only whitespace")
        return self


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int
