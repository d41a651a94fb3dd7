"""Bodies of searches (text, image, composite), near-duplicates and zero-shot labels."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.fields import MAX_TEXT_CHARS, JSONObject, QueryText, Target
from app.services.search import MAX_OFFSET, Mode
from index import Kind
from index.fusion import Fusion


class SearchHit(BaseModel):
    id: str
    kind: Kind
    score: float = Field(
        ...,
        description="vector mode: cosine in [-1, 1]; keyword: BM25; hybrid: the fused score",
    )
    vector_score: float | None = Field(None, description="hybrid: cosine to the query vector")
    keyword_score: float | None = Field(
        None, description="hybrid: BM25 of the query's words; null when the item has none"
    )
    metadata: JSONObject | None = None
    text: str | None = None
    content_url: str
    thumbnail_url: str | None = Field(
        None, description="images: a small rendition (384 px, JPEG) for result grids"
    )


class SearchResponse(BaseModel):
    results: list[SearchHit]
    took_ms: float


MAX_QUERIES = 256


MIN_SCORE_HELP = "only results scoring at least this (cosine); fewer than k may come back"


SCORED_MIN_SCORE_HELP = (
    "only results whose score is at least this (vector mode: cosine; keyword: BM25; "
    "hybrid: the fused score); fewer than k may come back"
)


MODE_HELP = (
    "vector: cosine to the query's vector; keyword: BM25 over the query's words (only items "
    "holding one); hybrid: both rankings fused"
)


ALPHA_HELP = "hybrid: the vector ranking's weight, the keyword ranking gets 1 - alpha"


FUSION_HELP = (
    "hybrid: relative (each ranking's scores min-max normalized, then weighted by alpha) or "
    "rrf (reciprocal rank fusion, k=60, weighted by alpha)"
)


SearchMode = Mode


FusionName = Fusion


class TextQueriesRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"queries": ["a red circle", "a blue square"], "k": 5, "target": "images"}]
        },
    )

    queries: list[QueryText] = Field(..., min_length=1, max_length=MAX_QUERIES)
    k: int = Field(10, ge=1)
    target: Target = "images"
    filter: dict[str, Any] | None = Field(None, description="metadata conditions, all required")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="skip this many results (paging)")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description=MIN_SCORE_HELP)

    @model_validator(mode="after")
    def _not_blank(self) -> TextQueriesRequest:
        for position, query in enumerate(self.queries):
            if not query.strip():
                raise ValueError(f"queries[{position}] is empty or only whitespace")
        return self


MAX_QUERY_PARTS = 16


class QueryPart(BaseModel):
    """One part of a composite query: exactly one of text, image_base64 or item, and a weight."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)
    image_base64: str | None = Field(None, description="an image, base64-encoded")
    item: str | None = Field(None, description="a stored item's id: its stored vector")
    image_file: int | None = Field(
        None, ge=0, description="multipart only: the position of an uploaded `files` part"
    )
    weight: float = Field(1.0, ge=-100.0, le=100.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_kind(self) -> QueryPart:
        kinds = ("text", "image_base64", "item", "image_file")
        given = [n for n in kinds if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "a query part needs exactly one of text, image_base64, item or image_file"
            )
        if self.text is not None and not self.text.strip():
            raise ValueError("text is empty or only whitespace")
        return self


class CompositeSearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "query": [
                        {"text": "a dog on a beach", "weight": 1.0},
                        {"item": "photo-17", "weight": 0.5},
                        {"text": "blurry", "weight": -0.4},
                    ],
                    "target": "images",
                    "k": 10,
                }
            ]
        },
    )

    query: list[QueryPart] = Field(..., min_length=1, max_length=MAX_QUERY_PARTS)
    target: Target = "images"
    k: int = Field(10, ge=1)
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="skip this many results (paging)")
    filter: dict[str, Any] | None = Field(None, description="metadata conditions, all required")
    min_score: float | None = Field(
        None, ge=-1.0, allow_inf_nan=False, description=SCORED_MIN_SCORE_HELP
    )
    mode: SearchMode = Field(
        "vector",
        description="vector: cosine to the weighted sum of the parts' unit vectors; keyword: "
        "BM25 over the words of the text parts (negative ones leave their matches out); "
        "hybrid: both rankings fused",
    )
    alpha: float = Field(0.5, ge=0.0, le=1.0, description=ALPHA_HELP)
    fusion: FusionName = Field("relative", description=FUSION_HELP)
    exclude_query_items: bool = Field(True, description="leave the items named in the query out")


class MultiSearchResponse(BaseModel):
    results: list[list[SearchHit]] = Field(..., description="one ranked list per query, in order")
    took_ms: float


class DuplicateGroupResponse(BaseModel):
    ids: list[str] = Field(description="the group's items, oldest first")
    min_score: float = Field(description="the weakest pair's cosine")


class DuplicatesResponse(BaseModel):
    groups: list[DuplicateGroupResponse]
    total_groups: int


class TagRequestBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"labels": ["cat", "dog", "car"], "field": "tag", "template": "a photo of {}"}
            ]
        },
    )

    labels: list[str] = Field(..., min_length=2, max_length=1000)
    field: str = Field(..., min_length=1, max_length=64, description="the metadata key to write")
    template: str | None = Field(None, max_length=1000)
    filter: dict[str, Any] | None = Field(None, description="only items matching these")
    target: Target = Field("images", description="which items to label")
    overwrite: bool = Field(
        False,
        description="replace the field where items have it already (without: 409 if any has)",
    )


class ClassifyItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[str] = Field(..., min_length=1, max_length=1000, description="stored item ids")
    labels: list[str] = Field(..., min_length=2, max_length=1000)
    template: str | None = Field(None, max_length=1000, examples=["a photo of {}"])


class LabelResult(BaseModel):
    label: str
    score: float = Field(description="cosine between the image and the label's text")
    probability: float = Field(description="softmax of the model's logit scale x the cosines")


class ClassifyResponse(BaseModel):
    results: list[list[LabelResult]] = Field(description="per image, in order: labels, best first")
