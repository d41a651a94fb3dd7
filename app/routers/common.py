"""What routes share: the query parameters of a search, and reading an upload."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile as StarletteUploadFile

from app.parsing import parse_filter_param
from app.schemas import (
    ALPHA_HELP,
    FUSION_HELP,
    MIN_SCORE_HELP,
    MODE_HELP,
    SCORED_MIN_SCORE_HELP,
    TARGET_KIND,
    FusionName,
    SearchMode,
    Target,
)
from app.services.errors import InvalidInputError
from app.services.search import MAX_OFFSET, SearchScope

FILTER_HELP = (
    'JSON object of metadata conditions, all required: {"album": "2024"}, '
    '{"tag": {"in": ["cat", "dog"]}}, {"year": {"gte": 2000, "lt": 2010}}'
)
OFFSET_HELP = "skip this many results (paging)"
Body = TypeVar("Body", bound=BaseModel)


async def query_scope(
    k: int = Query(10, ge=1, description="how many results"),
    target: Target = Query("images", description="what to search: images or texts"),
    filter: str | None = Query(None, description=FILTER_HELP),  # noqa: A002 - the API's name
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description=OFFSET_HELP),
    min_score: float | None = Query(None, ge=-1.0, le=1.0, description=MIN_SCORE_HELP),
) -> SearchScope:
    """What a GET search asks for, from its query parameters."""
    return SearchScope(k, TARGET_KIND[target], parse_filter_param(filter), offset, min_score)


QueryScopeDep = Annotated[SearchScope, Depends(query_scope)]


async def text_query_scope(
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


async def read_upload(upload: StarletteUploadFile, position: int | None = None) -> bytes:
    data = await upload.read()
    if not data:
        where = f"files[{position}]" if position is not None else "file"
        raise InvalidInputError(f"{where} ({upload.filename or 'unnamed'}) is empty")
    return data


def body_format(request: Request, refusal: str) -> Literal["multipart", "json"]:
    """Whether a route that takes either got a multipart form or JSON; else `refusal` (422)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return "multipart"
    if content_type.startswith("application/json"):
        return "json"
    raise InvalidInputError(refusal)


def validated(model: type[Body], raw: str | bytes) -> Body:
    """`raw` JSON as `model`, or a 422 naming each bad field as FastAPI's own would."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from e
