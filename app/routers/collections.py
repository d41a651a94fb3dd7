"""Collections: create, list, describe and delete them; re-embed one with another model."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.deps import AdminOnly, CollectionsDep, JobsDep
from app.responses import collection_response
from app.schemas import (
    CollectionResponse,
    CollectionsResponse,
    CreateCollectionRequest,
    JobAccepted,
    ModelRequest,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"])


@router.post(
    "",
    dependencies=[AdminOnly],
    status_code=status.HTTP_201_CREATED,
    response_model=CollectionResponse,
    summary="Create a collection with its own model (loaded now, to check it)",
)
async def create_collection(
    body: CreateCollectionRequest, collections: CollectionsDep
) -> CollectionResponse:
    return collection_response((await collections.create(body.name, body.spec())).view())


@router.get("", response_model=CollectionsResponse, summary="Every collection")
async def list_collections(collections: CollectionsDep) -> CollectionsResponse:
    return CollectionsResponse(
        collections=[collection_response(c.view()) for c in collections.all()]
    )


@router.get("/{collection}", response_model=CollectionResponse, summary="One collection")
async def get_collection(collections: CollectionsDep, collection: str) -> CollectionResponse:
    return collection_response(collections.get(collection).view())


@router.delete(
    "/{collection}",
    dependencies=[AdminOnly],
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a collection: its items, vectors, images and snapshots",
)
async def delete_collection(jobs: JobsDep, collection: str) -> Response:
    await jobs.delete_collection(collection)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{collection}/reindex",
    dependencies=[AdminOnly],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    summary="Re-embed every item with another model; searches go on, the switch is atomic",
)
async def reindex_collection(
    collections: CollectionsDep, collection: str, body: ModelRequest
) -> JobAccepted:
    return JobAccepted(job_id=await collections.reindex(collection, body.spec()))
