"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from index import InvalidMetadataError, check_metadata_shape

Target = Literal["images", "texts"]
JSONObject = dict[str, Any]


def storable_metadata(value: JSONObject | None) -> JSONObject | None:
    """Refuse metadata that could not be sent back: too deep, or NaN and infinities in it.

    Its size is checked by the services, against XMR_MAX_METADATA_BYTES.
    """
    if value is not None:
        try:
            check_metadata_shape(value, "")
        except InvalidMetadataError as e:
            raise ValueError(str(e).removeprefix(": ")) from e
    return value


Metadata = Annotated[JSONObject | None, AfterValidator(storable_metadata)]

TARGET_KIND: dict[str, Literal["image", "text"]] = {"images": "image", "texts": "text"}
# every text a route takes (to index, to search with, to embed): stored whole and returned
# with each hit, encoded cut to the model's context (models.text)
MAX_TEXT_CHARS = 100_000
QueryText = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]  # blank: validators


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


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, min_length=1, max_length=256)
    metadata: Metadata = None
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    image_base64: str | None = None
    image_path: str | None = Field(None, description="relative to XMR_IMPORT_ROOT")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> BatchItem:
        given = [n for n in ("text", "image_base64", "image_path") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("each item needs exactly one of text, image_base64, image_path")
        if self.text is not None and not self.text.strip():
            raise ValueError("text must not be empty or only whitespace")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": "p1",
                            "image_path": "holiday/beach.jpg",
                            "metadata": {"album": "2024"},
                        },
                        {"text": "a dog on a beach"},
                    ]
                }
            ]
        },
    )

    items: list[BatchItem] = Field(..., min_length=1, max_length=1_000_000)
    dedup_threshold: float | None = Field(None, ge=-1.0, le=1.0, description=DEDUP_HELP)


class JobAccepted(BaseModel):
    job_id: str
    status: str = "queued"


class JobItemError(BaseModel):
    position: int
    id: str
    error: str


class JobDuplicate(BaseModel):
    position: int
    id: str = Field(description="the id the item was submitted with")
    duplicate_of: str = Field(description="the stored item it duplicates (it was not stored)")
    score: float


class JobResponse(BaseModel):
    job_id: str
    kind: Literal["batch", "reindex", "duplicates", "classify"] = "batch"
    collection: str = "default"
    status: Literal["queued", "running", "done", "failed", "interrupted", "cancelled"]
    total: int
    done: int
    failed: int
    errors: list[JobItemError]
    error: str | None = None
    created_at: float
    updated_at: float
    items_per_s: float | None = Field(None, description="while running: rate since it started")
    eta_s: float | None = Field(None, description="while running: seconds left at that rate")
    model: JSONObject | None = Field(None, description="a re-embedding: the model it moves to")
    params: JSONObject | None = Field(None, description="what the job was asked to do")
    duplicates: list[JobDuplicate] = Field(
        default_factory=list, description="a batch with dedup_threshold: items not stored"
    )
    result: JSONObject | None = Field(None, description="a finished duplicates job: its groups")
    waiting_for: str | None = Field(
        None, description="what a queued or running job waits for now, e.g. 'a model slot'"
    )


class SearchHit(BaseModel):
    id: str
    kind: Literal["image", "text"]
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
SearchMode = Literal["vector", "keyword", "hybrid"]
FusionName = Literal["relative", "rrf"]


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
    offset: int = Field(0, ge=0, le=10_000, description="skip this many results (paging)")
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
    offset: int = Field(0, ge=0, le=10_000, description="skip this many results (paging)")
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


class MultiSearchResponse(BaseModel):
    results: list[list[SearchHit]] = Field(..., description="one ranked list per query, in order")
    took_ms: float


class ItemResponse(BaseModel):
    id: str
    kind: Literal["image", "text"]
    metadata: JSONObject | None = None
    text: str | None = None
    content_type: str | None = None
    content_url: str
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


class IndexDescription(BaseModel):
    structure: str = Field(..., description="FAISS index structure, e.g. Flat or HNSW32")
    size: int
    building: str | None = Field(None, description="structure being built in the background")


class InfoResponse(BaseModel):
    model: str
    pretrained: str
    model_id: str
    dim: int
    device: str
    precision: str
    runtime: str = Field(description="what runs the model: torch, onnxruntime or openvino")
    images: int
    texts: int
    indexes: dict[Literal["image", "text"], IndexDescription]
    reindex_job: str | None = Field(
        None, description="the default collection's re-embedding to XMR_MODEL, while it runs"
    )
    collections: list[str] = Field(default_factory=list)


COLLECTION_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ModelRequest(BaseModel):
    model: str = Field(..., min_length=1, max_length=512, examples=["shapes-tiny"])
    pretrained: str | None = Field(
        None, max_length=4096, description="pretrained tag or checkpoint path; '' = random"
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"


class CreateCollectionRequest(ModelRequest):
    name: str = Field(..., pattern=COLLECTION_NAME_PATTERN)


class CollectionResponse(BaseModel):
    name: str
    model: str
    pretrained: str | None
    model_id: str
    dim: int
    precision: str
    images: int
    texts: int
    indexes: dict[Literal["image", "text"], IndexDescription]
    status: Literal["ready", "reindexing"]
    reindex_job: str | None = None
    reindex_to: ModelRequest | None = None
    created_at: float


class CollectionsResponse(BaseModel):
    collections: list[CollectionResponse]


class ErrorResponse(BaseModel):
    detail: str
