"""Cross-modal search: text to images (or texts), image to texts (or images)."""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Query, UploadFile

from app.deps import SearchDep
from app.routers.common import read_upload, search_hit
from app.schemas import TARGET_KIND, SearchResponse, Target
from app.services.search import SearchResult

router = APIRouter(prefix="/v1/search", tags=["search"])


def _response(result: SearchResult) -> SearchResponse:
    return SearchResponse(results=[search_hit(h) for h in result.hits], took_ms=result.took_ms)


@router.get("/text", response_model=SearchResponse, summary="Search with a text query")
async def search_by_text(
    search: SearchDep,
    q: str = Query(..., min_length=1, max_length=10_000, examples=["a red circle"]),
    k: int = Query(10, ge=1, description="how many results"),
    target: Target = Query("images", description="what to search: images or texts"),
) -> SearchResponse:
    return _response(await search.by_text(q, k, TARGET_KIND[target]))


@router.post("/image", response_model=SearchResponse, summary="Search with an image query")
async def search_by_image(
    search: SearchDep,
    file: UploadFile = File(..., description="the query image"),
    k: int = Form(10, ge=1),
    target: Target = Form("texts", description="what to search: texts or images"),
) -> SearchResponse:
    data = await read_upload(file)
    return _response(await search.by_image(data, k, TARGET_KIND[target]))
