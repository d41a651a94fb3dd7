"""Bodies of batch jobs and of every job's status."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from app.jobs.ledger import JobKind, JobStatus
from app.schemas.fields import MAX_TEXT_CHARS, JSONObject, Metadata
from app.schemas.items import DEDUP_HELP


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


MAX_VECTORS = 100_000  # a request's rows; bigger imports are several requests


class VectorFields(BaseModel):
    """An item whose vector was made elsewhere: an image (no bytes kept) or a text."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=256)
    kind: Literal["image", "text"] = "image"
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="a text item's text")
    metadata: Metadata = None


class VectorItem(VectorFields):
    vector: list[float] = Field(..., min_length=1, max_length=8192)


class VectorItemsForm(RootModel[list[VectorFields]]):
    """The multipart form's `items`: one entry per row of its `vectors` array."""

    root: list[VectorFields] = Field(..., min_length=1, max_length=MAX_VECTORS)


class VectorsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"id": "2019/beach.jpg", "vector": [0.12, -0.03, 0.4]},
                        {"id": "note-1", "kind": "text", "text": "a beach", "vector": [0.1, 0, 1]},
                    ]
                }
            ]
        },
    )

    items: list[VectorItem] = Field(..., min_length=1, max_length=MAX_VECTORS)


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
    kind: JobKind = "batch"
    collection: str = "default"
    status: JobStatus
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
