"""Helpers shared by routes: reading multipart fields and shaping records for responses."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Query
from starlette.datastructures import UploadFile as StarletteUploadFile

from app.schemas import (
    ALPHA_HELP,
    FUSION_HELP,
    MIN_SCORE_HELP,
    MODE_HELP,
    SCORED_MIN_SCORE_HELP,
    TARGET_KIND,
    DuplicateResponse,
    FusionName,
    ItemResponse,
    SearchHit,
    SearchMode,
    SearchResponse,
    Target,
)
from app.services.errors import InvalidInputError
from app.services.search import MAX_OFFSET, SearchResult, SearchScope
from index import Hit, InvalidFilterError, MetadataFilter, Record, parse_filter
from index.duplicates import Duplicate

FILTER_HELP = (
    'JSON object of metadata conditions, all required: {"album": "2024"}, '
    '{"tag": {"in": ["cat", "dog"]}}, {"year": {"gte": 2000, "lt": 2010}}'
)
OFFSET_HELP = "skip this many results (paging)"


def query_scope(
    k: int = Query(10, ge=1, description="how many results"),
    target: Target = Query("images", description="what to search: images or texts"),
    filter: str | None = Query(None, description=FILTER_HELP),  # noqa: A002 - the API's name
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description=OFFSET_HELP),
    min_score: float | None = Query(None, ge=-1.0, le=1.0, description=MIN_SCORE_HELP),
) -> SearchScope:
    """What a GET search asks for, from its query parameters."""
    return SearchScope(k, TARGET_KIND[target], parse_filter_param(filter), offset, min_score)


QueryScopeDep = Annotated[SearchScope, Depends(query_scope)]


def text_query_scope(
    k: int = Query(10, ge=1, description="how many results"),
    target: Target = Query("images", description="what to search: images or texts"),
    filter: str | None = Query(None, description=FILTER_HELP),  # noqa: A002 - the API's name
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description=OFFSET_HELP),
    min_score: float | None = Query(None, ge=-1.0, description=SCORED_MIN_SCORE_HELP),
    mode: SearchMode = Query("vector", description=MODE_HELP),
    alpha: float = Query(0.5, ge=0.0, le=1.0, description=ALPHA_HELP),
    fusion: FusionName = Query("relative", description=FUSION_HELP),
) -> SearchScope:
    """What a GET text search asks for: a query scope, and how to rank (mode, alpha, fusion)."""
    where = parse_filter_param(filter)
    return SearchScope(k, TARGET_KIND[target], where, offset, min_score, mode, alpha, fusion)


TextQueryScopeDep = Annotated[SearchScope, Depends(text_query_scope)]


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


def item_response(record: Record, base: str = "/v1") -> ItemResponse:
    return ItemResponse(
        id=record.id,
        kind=record.kind,
        metadata=record.metadata,
        text=record.text,
        content_type=record.content_type if record.kind == "image" else "text/plain",
        content_url=content_url(record.id, base),
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
    )


def parse_json_list(raw: str | None, field: str, expected: int) -> list[Any] | None:
    """A form field holding a JSON list with one entry per uploaded file."""
    if raw is None or raw == "":
        return None
    try:
        value = strict_json(raw)
    except ValueError as e:
        raise InvalidInputError(f"{field} must be a JSON list: {e}") from e
    if not isinstance(value, list):
        raise InvalidInputError(f"{field} must be a JSON list, one entry per file")
    if len(value) != expected:
        raise InvalidInputError(f"{field} has {len(value)} entries for {expected} files")
    return value


def parse_filter_param(raw: str | None) -> MetadataFilter | None:
    """A `filter` query or form field: a JSON object of metadata conditions."""
    value = filter_object(raw)
    return None if value is None else parse_filter(value)


def filter_object(raw: str | None) -> dict[str, Any] | None:
    """A `filter` field as its JSON object, checked (for work that keeps it, as a job does)."""
    if raw is None or not raw.strip():
        return None
    try:
        value = strict_json(raw)
    except ValueError as e:
        raise InvalidFilterError(f"filter: not valid JSON ({e})") from e
    parse_filter(value)
    return value  # type: ignore[no-any-return]


def strict_json(raw: str) -> Any:
    """Decode JSON, refusing NaN and infinities; ValueError carries a short reason."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise ValueError(e.msg) from e
    except RecursionError as e:
        raise ValueError("nested too deeply") from e


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed; numbers must be finite")


def parse_ids(raw: str | None, expected: int) -> list[str | None]:
    ids = parse_json_list(raw, "ids", expected)
    if ids is None:
        return [None] * expected
    for position, item_id in enumerate(ids):
        if item_id is not None and not isinstance(item_id, str):
            raise InvalidInputError(f"ids[{position}] must be a string or null")
    return ids


def parse_metadata(raw: str | None, expected: int) -> list[dict[str, Any] | None]:
    metadata = parse_json_list(raw, "metadata", expected)
    if metadata is None:
        return [None] * expected
    for position, entry in enumerate(metadata):
        if entry is not None and not isinstance(entry, dict):
            raise InvalidInputError(f"metadata[{position}] must be a JSON object or null")
    return metadata


async def read_upload(upload: StarletteUploadFile, position: int | None = None) -> bytes:
    data = await upload.read()
    if not data:
        where = f"files[{position}]" if position is not None else "file"
        raise InvalidInputError(f"{where} ({upload.filename or 'unnamed'}) is empty")
    return data
