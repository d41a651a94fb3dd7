"""Index images and texts; read, fetch and delete items."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, File, Form, Request, Response, UploadFile, status
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

from app.deps import ChangingDep, IndexingDep, ItemsDep, StoredSearchDep, UrlBaseDep
from app.parsing import parse_ids, parse_metadata
from app.responses import duplicate_responses, item_response, search_response
from app.routers.common import QueryScopeDep, read_upload
from app.schemas import (
    DEDUP_HELP,
    HashLookupRequest,
    HashLookupResponse,
    IndexedResponse,
    IndexTextsRequest,
    ItemResponse,
    SearchResponse,
)
from app.services.items import ImageInput, TextInput

router = APIRouter(tags=["items"])  # mounted at /v1 and /v1/collections/{collection}


@router.post(
    "/images",
    status_code=status.HTTP_201_CREATED,
    response_model=IndexedResponse,
    summary="Index one or more images (an existing id is replaced)",
)
async def index_images(
    items: IndexingDep,
    files: list[UploadFile] = File(..., description="the images"),
    ids: str | None = Form(None, description='JSON list of ids, e.g. ["a", null]'),
    metadata: str | None = Form(None, description='JSON list of objects, e.g. [{"tag": "x"}]'),
    dedup_threshold: float | None = Form(None, ge=-1.0, le=1.0, description=DEDUP_HELP),
) -> IndexedResponse:
    id_list = parse_ids(ids, len(files))
    metadata_list = parse_metadata(metadata, len(files))
    inputs = [
        ImageInput(await read_upload(upload, position), item_id, meta)
        for position, (upload, item_id, meta) in enumerate(
            zip(files, id_list, metadata_list, strict=True)
        )
    ]
    stored, duplicates = await items.index_images(inputs, dedup_threshold)
    return IndexedResponse(ids=stored, duplicates=duplicate_responses(duplicates))


@router.post(
    "/texts",
    status_code=status.HTTP_201_CREATED,
    response_model=IndexedResponse,
    summary="Index texts (an existing id is replaced)",
)
async def index_texts(body: IndexTextsRequest, items: IndexingDep) -> IndexedResponse:
    inputs = [TextInput(item.text, item.id, item.metadata) for item in body.items]
    return IndexedResponse(ids=await items.index_texts(inputs))


@router.post(
    "/items/lookup",
    response_model=HashLookupResponse,
    summary="Which images (by SHA-256 of their bytes) are indexed already",
)
async def lookup_by_content_hash(body: HashLookupRequest, items: ItemsDep) -> HashLookupResponse:
    return HashLookupResponse(found=await items.find_by_content_hash(body.sha256))


@router.get(
    "/items/{item_id:path}/content",
    summary="The stored image bytes with their content type, or the text",
    response_class=Response,
)
async def get_item_content(
    item_id: str, request: Request, items: ItemsDep, base: UrlBaseDep
) -> Response:
    item_id, wants_content = item_path(request, CONTENT_SUFFIX)
    if not wants_content:  # /items/p%2Fcontent: the record of the item "p/content"
        record = item_response(await items.get(item_id), base)
        return JSONResponse(record.model_dump(mode="json"))
    content = await items.content(item_id)
    if content.url is not None:  # XMR_S3_PRESIGN: fetched from object storage directly
        return RedirectResponse(content.url, status_code=307, headers={"Cache-Control": "no-store"})
    return StreamingResponse(
        content.chunks,
        media_type=content.media_type,
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get(
    "/items/{item_id:path}/thumbnail",
    summary="An image's thumbnail (384 px on its longest side, JPEG), with an ETag",
    response_class=Response,
    responses={304: {"description": "the client's copy (If-None-Match) is current"}},
)
async def get_item_thumbnail(
    item_id: str, request: Request, items: ItemsDep, base: UrlBaseDep
) -> Response:
    item_id, wants_thumbnail = item_path(request, THUMBNAIL_SUFFIX)
    if not wants_thumbnail:  # /items/p%2Fthumbnail: the record of the item "p/thumbnail"
        return JSONResponse(item_response(await items.get(item_id), base).model_dump(mode="json"))
    thumbnail = await items.thumbnail(item_id, request.headers.get("if-none-match"))
    headers = {
        "ETag": thumbnail.etag,
        "Cache-Control": thumbnail_caching(request.query_params.get("v"), thumbnail.etag),
        "X-Content-Type-Options": "nosniff",
    }
    if thumbnail.chunks is None:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return StreamingResponse(thumbnail.chunks, media_type=thumbnail.media_type, headers=headers)


def thumbnail_caching(version: str | None, etag: str) -> str:
    """A versioned address (a hit's thumbnail_url) names these bytes for good; a bare one may
    show other bytes once the id is indexed again, so it is checked by its ETag each time."""
    if version and len(version) >= 8 and etag.strip('"').startswith(version):
        return "private, max-age=31536000, immutable"
    return "private, no-cache"


@router.get(
    "/items/{item_id:path}/similar",
    response_model=SearchResponse,
    summary="Items like this one, by its stored vector (itself left out)",
)
async def similar_items(
    item_id: str,
    request: Request,
    search: StoredSearchDep,
    items: ItemsDep,
    base: UrlBaseDep,
    scope: QueryScopeDep,
) -> Any:
    item_id, wants_similar = item_path(request, SIMILAR_SUFFIX)
    if not wants_similar:  # /items/p%2Fsimilar: the record of the item "p/similar"
        return JSONResponse(item_response(await items.get(item_id), base).model_dump(mode="json"))
    return search_response(await search.similar_to(item_id, scope), base)


@router.get("/items/{item_id:path}", response_model=ItemResponse, summary="An item's record")
async def get_item(
    item_id: str, request: Request, items: ItemsDep, base: UrlBaseDep
) -> ItemResponse:
    return item_response(await items.get(item_path(request, None)[0]), base)


@router.delete(
    "/items/{item_id:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete an item; it is gone from search at once",
)
async def delete_item(item_id: str, request: Request, items: ChangingDep) -> Response:
    await items.delete(item_path(request, None)[0])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


CONTENT_SUFFIX = "/content"
THUMBNAIL_SUFFIX = "/thumbnail"
SIMILAR_SUFFIX = "/similar"


def item_path(request: Request, suffix: str | None) -> tuple[str, bool]:
    """(item id, whether the path ends in `suffix`), read from the path as the client sent it.

    Routing sees the decoded path, where `p%2Fcontent` and `p/content` look alike; in the raw
    path an encoded slash is part of the id, and only a literal `/content` (or `/similar`)
    asks for content (or similar items).
    """
    raw: bytes | None = request.scope.get("raw_path")
    decode = unquote if raw else str  # without a raw path, the server decoded it already
    path = raw.decode("latin-1") if raw else request.scope["path"]
    tail = path.split("/items/", 1)[1]
    if suffix and tail.endswith(suffix) and len(tail) > len(suffix):
        return decode(tail[: -len(suffix)]), True
    return decode(tail), False
