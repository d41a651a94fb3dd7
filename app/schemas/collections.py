"""Bodies of collections and of /v1/info."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from index import Kind
from index.layout import COLLECTION_NAME, ModelSpec
from models.tower_run import Tower


class IndexDescription(BaseModel):
    structure: str = Field(..., description="FAISS index structure, e.g. Flat or HNSW32")
    size: int
    building: str | None = Field(None, description="structure being built in the background")


class TowerRunDescription(BaseModel):
    runtime: str = Field(examples=["openvino"])
    precision: str = Field(examples=["bf16"])


class InfoResponse(BaseModel):
    model: str
    pretrained: str
    model_id: str
    dim: int
    device: str
    precision: str
    runtime: str = Field(
        description="what runs the model: torch, onnxruntime or openvino; where each tower runs "
        "in its own, both, text first: openvino+torch"
    )
    towers: dict[Tower, TowerRunDescription] = Field(
        default_factory=dict, description="per tower, what runs it (empty: not loaded)"
    )
    images: int
    texts: int
    indexes: dict[Kind, IndexDescription]
    reindex_job: str | None = Field(
        None, description="the default collection's re-embedding to XMR_MODEL, while it runs"
    )
    collections: list[str] = Field(default_factory=list)


COLLECTION_NAME_PATTERN = f"^{COLLECTION_NAME.pattern}$"


class ModelRequest(BaseModel):
    model: str = Field(..., min_length=1, max_length=512, examples=["shapes-tiny"])
    pretrained: str | None = Field(
        None, max_length=4096, description="pretrained tag or checkpoint path; '' = random"
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelRequest:
        return cls.model_validate(vars(spec))

    def spec(self) -> ModelSpec:
        return ModelSpec(self.model, self.pretrained, self.precision)


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
    indexes: dict[Kind, IndexDescription]
    status: Literal["ready", "reindexing"]
    reindex_job: str | None = None
    reindex_to: ModelRequest | None = None
    created_at: float


class CollectionsResponse(BaseModel):
    collections: list[CollectionResponse]
