"""Domain values as the API shows them: records, hits, duplicates and collections mapped to the
response schemas (the routers call these; only this module and the schemas know both sides)."""

from __future__ import annotations

from urllib.parse import quote

from app.jobs.ledger import JobView
from app.schemas import (
    CollectionResponse,
    DuplicateResponse,
    IndexDescription,
    ItemResponse,
    JobDuplicate,
    JobItemError,
    JobResponse,
    ModelRequest,
    SearchHit,
    SearchResponse,
)
from app.services.collections import CollectionView
from app.services.search import SearchResult
from index import Hit, IndexInfo, Kind, Record
from index.duplicates import Duplicate


def search_response(result: SearchResult, base: str) -> SearchResponse:
    return SearchResponse(
        results=[search_hit(h, base) for h in result.hits], took_ms=result.took_ms
    )


def duplicate_responses(duplicates: list[Duplicate]) -> list[DuplicateResponse]:
    return [
        DuplicateResponse(position=d.position, duplicate_of=d.existing_id, score=d.score)
        for d in duplicates
    ]


def content_url(item_id: str, base: str = "/v1") -> str:
    """Where an item's bytes are served; `base` is its collection's route prefix."""
    return f"{base}/items/{quote(item_id, safe='')}/content"


def thumbnail_url(record: Record, base: str = "/v1") -> str | None:
    """Where an image's thumbnail is served; the version (its bytes' hash) makes the address
    change with them, so a browser may keep it for good. None for a text."""
    if record.kind != "image" or record.content_sha256 is None:
        return None
    return (
        f"{base}/items/{quote(record.id, safe='')}/thumbnail"
        f"?v={record.content_sha256[:THUMBNAIL_VERSION_CHARS]}"
    )


THUMBNAIL_VERSION_CHARS = 16


def item_response(record: Record, base: str = "/v1") -> ItemResponse:
    return ItemResponse(
        id=record.id,
        kind=record.kind,
        metadata=record.metadata,
        text=record.text,
        content_type=record.content_type if record.kind == "image" else "text/plain",
        content_url=content_url(record.id, base),
        thumbnail_url=thumbnail_url(record, base),
        model=record.model,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def search_hit(hit: Hit, base: str = "/v1") -> SearchHit:
    record = hit.record
    return SearchHit(
        id=record.id,
        kind=record.kind,
        score=hit.score,
        vector_score=hit.vector_score,
        keyword_score=hit.keyword_score,
        metadata=record.metadata,
        text=record.text,
        content_url=content_url(record.id, base),
        thumbnail_url=thumbnail_url(record, base),
    )


def index_descriptions(indexes: dict[Kind, IndexInfo]) -> dict[str, IndexDescription]:
    return {
        kind: IndexDescription(structure=i.spec, size=i.size, building=i.building)
        for kind, i in indexes.items()
    }


def collection_response(view: CollectionView) -> CollectionResponse:
    state = view.state
    spec = state.current.spec
    following = state.next
    return CollectionResponse(
        name=state.name,
        model=spec.model,
        pretrained=spec.pretrained,
        model_id=state.current.model_id,
        dim=state.current.dim,
        precision=spec.precision,
        images=view.counts["image"],
        texts=view.counts["text"],
        indexes=index_descriptions(view.indexes),
        status="reindexing" if following is not None else "ready",
        reindex_job=state.reindex_job,
        reindex_to=None if following is None else ModelRequest.of(following.spec),
        created_at=state.created_at,
    )


def job_response(view: JobView) -> JobResponse:
    return JobResponse(
        job_id=view.id,
        kind=view.kind,
        collection=view.collection,
        status=view.status,
        total=view.total,
        done=view.done,
        failed=view.failed,
        errors=[JobItemError(position=e.position, id=e.id, error=e.error) for e in view.errors],
        error=view.error,
        created_at=view.created_at,
        updated_at=view.updated_at,
        items_per_s=view.items_per_s,
        eta_s=view.eta_s,
        model=view.params if view.kind == "reindex" else None,
        params=view.params,
        duplicates=[
            JobDuplicate(position=d.position, id=d.id, duplicate_of=d.duplicate_of, score=d.score)
            for d in view.duplicates
        ],
        result=view.result,
        waiting_for=view.waiting_for,
    )
