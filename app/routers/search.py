"""Cross-modal search: text to images (or texts), image to texts (or images)."""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Query, UploadFile

from app.deps import SearchDep, UrlBaseDep
from app.routers.common import (
    FILTER_HELP,
    OFFSET_HELP,
    parse_filter_param,
    read_upload,
    search_hit,
)
from app.schemas import (
    MAX_QUERIES,
    MIN_SCORE_HELP,
    TARGET_KIND,
    MultiSearchResponse,
    SearchResponse,
    Target,
    TextQueriesRequest,
)
from app.services.errors import InvalidInputError
from app.services.search import MAX_OFFSET, MultiSearchResult, SearchResult, SearchScope
from index import parse_filter

router = APIRouter(prefix="/search", tags=["search"])  # under /v1 and each collection


def _response(result: SearchResult, base: str) -> SearchResponse:
    return SearchResponse(
        results=[search_hit(h, base) for h in result.hits], took_ms=result.took_ms
    )


def _multi_response(result: MultiSearchResult, base: str) -> MultiSearchResponse:
    return MultiSearchResponse(
        results=[[search_hit(h, base) for h in hits] for hits in result.hits],
        took_ms=result.took_ms,
    )


def _scope(
    k: int, target: Target, raw_filter: str | None, offset: int, min_score: float | None
) -> SearchScope:
    where = parse_filter_param(raw_filter)
    return SearchScope(k, TARGET_KIND[target], where, offset, min_score)


@router.get("/text", response_model=SearchResponse, summary="Search with a text query")
async def search_by_text(
    search: SearchDep,
    base: UrlBaseDep,
    q: str = Query(..., min_length=1, max_length=10_000, examples=["a red circle"]),
    k: int = Query(10, ge=1, description="how many results"),
    target: Target = Query("images", description="what to search: images or texts"),
    filter: str | None = Query(None, description=FILTER_HELP),  # noqa: A002 - the API's name
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description=OFFSET_HELP),
    min_score: float | None = Query(None, ge=-1.0, le=1.0, description=MIN_SCORE_HELP),
) -> SearchResponse:
    scope = _scope(k, target, filter, offset, min_score)
    return _response(await search.by_text(q, scope), base)


@router.post("/image", response_model=SearchResponse, summary="Search with an image query")
async def search_by_image(
    search: SearchDep,
    base: UrlBaseDep,
    file: UploadFile = File(..., description="the query image"),
    k: int = Form(10, ge=1),
    target: Target = Form("texts", description="what to search: texts or images"),
    filter: str | None = Form(None, description=FILTER_HELP),  # noqa: A002
    offset: int = Form(0, ge=0, le=MAX_OFFSET, description=OFFSET_HELP),
    min_score: float | None = Form(None, ge=-1.0, le=1.0, description=MIN_SCORE_HELP),
) -> SearchResponse:
    data = await read_upload(file)
    scope = _scope(k, target, filter, offset, min_score)
    return _response(await search.by_image(data, scope), base)


@router.post(
    "/text/batch", response_model=MultiSearchResponse, summary="Search with several text queries"
)
async def search_by_texts(
    search: SearchDep, base: UrlBaseDep, body: TextQueriesRequest
) -> MultiSearchResponse:
    where = None if body.filter is None else parse_filter(body.filter)
    scope = SearchScope(body.k, TARGET_KIND[body.target], where, body.offset, body.min_score)
    return _multi_response(await search.by_texts(body.queries, scope), base)


@router.post(
    "/image/batch",
    response_model=MultiSearchResponse,
    summary="Search with several image queries",
)
async def search_by_images(
    search: SearchDep,
    base: UrlBaseDep,
    files: list[UploadFile] = File(..., description="the query images"),
    k: int = Form(10, ge=1),
    target: Target = Form("texts", description="what to search: texts or images"),
    filter: str | None = Form(None, description=FILTER_HELP),  # noqa: A002
    offset: int = Form(0, ge=0, le=MAX_OFFSET, description=OFFSET_HELP),
    min_score: float | None = Form(None, ge=-1.0, le=1.0, description=MIN_SCORE_HELP),
) -> MultiSearchResponse:
    if len(files) > MAX_QUERIES:
        raise InvalidInputError(f"at most {MAX_QUERIES} query images per request")
    blobs = [await read_upload(f, i) for i, f in enumerate(files)]
    scope = _scope(k, target, filter, offset, min_score)
    return _multi_response(await search.by_images(blobs, scope), base)
