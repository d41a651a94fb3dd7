"""Near-duplicate groups of a collection's items."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import JSONResponse

from app.deps import JobsDep, StoredSearchDep, collection_name
from app.jobs.duplicates import duplicates_now_or_queued
from app.parsing import filter_object
from app.routers.common import FILTER_HELP
from app.schemas import TARGET_KIND, DuplicatesResponse, JobAccepted, Target
from app.services.duplicates import (
    MAX_DUPLICATE_GROUPS_PAGE,
    MIN_DUPLICATE_THRESHOLD,
    DuplicatesQuery,
)

router = APIRouter(tags=["duplicates"])  # under /v1 and each collection


@router.get(
    "/duplicates",
    response_model=DuplicatesResponse,
    responses={202: {"model": JobAccepted, "description": "too many items: a job finds them"}},
    summary="Groups of near-duplicate items (cosine at least the threshold), largest first",
)
async def duplicates(
    request: Request,
    search: StoredSearchDep,
    jobs: JobsDep,
    target: Target = Query("images", description="which items: images or texts"),
    threshold: float = Query(
        0.95, le=1.0, description=f"the least cosine of a pair, {MIN_DUPLICATE_THRESHOLD} to 1"
    ),
    limit: int = Query(100, ge=1, le=MAX_DUPLICATE_GROUPS_PAGE, description="groups per page"),
    offset: int = Query(0, ge=0, description="skip this many groups"),
    filter: str | None = Query(None, description=FILTER_HELP),  # noqa: A002 - the API's name
) -> Any:
    query = DuplicatesQuery(TARGET_KIND[target], threshold, filter_object(filter), limit, offset)
    found = await duplicates_now_or_queued(search, jobs, collection_name(request), query)
    if not isinstance(found, str):
        return found.as_json()
    return JSONResponse(
        JobAccepted(job_id=found).model_dump(), status_code=status.HTTP_202_ACCEPTED
    )
