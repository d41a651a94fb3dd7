"""Cross-modal search: text to images (or texts), image to texts (or images)."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from app.deps import SearchDep, UrlBaseDep
from app.parsing import parse_filter_param, where_of
from app.responses import search_hit, search_response
from app.routers.common import (
    FILTER_HELP,
    OFFSET_HELP,
    TextQueryScopeDep,
    body_format,
    read_upload,
    validated,
)
from app.schemas import (
    MAX_QUERIES,
    MAX_QUERY_PARTS,
    MAX_TEXT_CHARS,
    MIN_SCORE_HELP,
    TARGET_KIND,
    CompositeSearchRequest,
    MultiSearchResponse,
    QueryPart,
    SearchResponse,
    Target,
    TextQueriesRequest,
)
from app.services.errors import InvalidInputError
from app.services.search import (
    MAX_OFFSET,
    MultiSearchResult,
    SearchScope,
    WeightedPart,
)

router = APIRouter(prefix="/search", tags=["search"])  # under /v1 and each collection


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
    scope: TextQueryScopeDep,
    q: str = Query(..., min_length=1, max_length=MAX_TEXT_CHARS, examples=["a red circle"]),
) -> SearchResponse:
    return search_response(await search.by_text(q, scope), base)


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
    return search_response(await search.by_image(data, scope), base)


@router.post(
    "/text/batch", response_model=MultiSearchResponse, summary="Search with several text queries"
)
async def search_by_texts(
    search: SearchDep, base: UrlBaseDep, body: TextQueriesRequest
) -> MultiSearchResponse:
    where = where_of(body.filter)
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


_COMPOSITE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": CompositeSearchRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["request"],
                    "properties": {
                        "request": {
                            "type": "string",
                            "description": 'the JSON body; parts may name {"image_file": n}',
                        },
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                }
            },
        },
    }
}


@router.post(
    "",
    response_model=SearchResponse,
    openapi_extra=_COMPOSITE_BODY,
    summary="One general search: weighted texts, images and stored items (negative weights too)",
)
async def composite_search(request: Request, search: SearchDep, base: UrlBaseDep) -> SearchResponse:
    body, uploads = await _composite_request(request)
    parts = [_weighted_part(part, position, uploads) for position, part in enumerate(body.query)]
    where = where_of(body.filter)
    scope = SearchScope(
        body.k,
        TARGET_KIND[body.target],
        where,
        body.offset,
        body.min_score,
        body.mode,
        body.alpha,
        body.fusion,
    )
    return search_response(await search.composite(parts, scope, body.exclude_query_items), base)


async def _composite_request(request: Request) -> tuple[CompositeSearchRequest, list[bytes]]:
    """The body from JSON, or from a multipart form's `request` field with its `files`."""
    refusal = "send a JSON body, or multipart/form-data with 'request'"
    if body_format(request, refusal) == "multipart":
        async with request.form(max_files=MAX_QUERY_PARTS, max_fields=10) as form:
            raw = form.get("request")
            if not isinstance(raw, str):
                raise InvalidInputError("a multipart search needs a 'request' field (JSON)")
            files = [f for f in form.getlist("files") if not isinstance(f, str)]
            uploads = [await read_upload(f, i) for i, f in enumerate(files)]
    else:
        raw, uploads = (await request.body()).decode("utf-8", "replace"), []
    return validated(CompositeSearchRequest, raw), uploads


def _weighted_part(part: QueryPart, position: int, uploads: list[bytes]) -> WeightedPart:
    image = None
    if part.image_base64 is not None:
        try:
            image = base64.b64decode(part.image_base64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidInputError(f"query[{position}].image_base64 is not valid base64") from e
    elif part.image_file is not None:
        if part.image_file >= len(uploads):
            raise InvalidInputError(
                f"query[{position}].image_file is {part.image_file}, "
                f"but {len(uploads)} files were sent"
            )
        image = uploads[part.image_file]
    return WeightedPart(part.weight, text=part.text, image=image, item=part.item)
