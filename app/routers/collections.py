"""Collections: create, list, describe and delete them; re-embed one with another model."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.deps import AdminOnly, CollectionsDep, JobsDep
from app.schemas import (
    CollectionResponse,
    CollectionsResponse,
    CreateCollectionRequest,
    IndexDescription,
    JobAccepted,
    ModelRequest,
)
from app.services.collections import Collection
from index.layout import ModelSpec

router = APIRouter(prefix="/v1/collections", tags=["collections"])


def describe(collection: Collection) -> CollectionResponse:
    state = collection.state
    spec = state.current.spec
    counts = collection.store.counts()
    following = state.next
    return CollectionResponse(
        name=state.name,
        model=spec.model,
        pretrained=spec.pretrained,
        model_id=state.current.model_id,
        dim=state.current.dim,
        precision=spec.precision,
        images=counts["image"],
        texts=counts["text"],
        indexes={
            kind: IndexDescription(structure=i.spec, size=i.size, building=i.building)
            for kind, i in collection.store.index_info().items()
        },
        status="reindexing" if following is not None else "ready",
        reindex_job=state.reindex_job,
        reindex_to=None if following is None else _model(following.spec),
        created_at=state.created_at,
    )


def _model(spec: ModelSpec) -> ModelRequest:
    return ModelRequest.model_validate(vars(spec))


def _spec(body: ModelRequest) -> ModelSpec:
    return ModelSpec(body.model, body.pretrained, body.precision)


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
    return describe(await collections.create(body.name, _spec(body)))


@router.get("", response_model=CollectionsResponse, summary="Every collection")
async def list_collections(collections: CollectionsDep) -> CollectionsResponse:
    return CollectionsResponse(collections=[describe(c) for c in collections.all()])


@router.get("/{collection}", response_model=CollectionResponse, summary="One collection")
async def get_collection(collections: CollectionsDep, collection: str) -> CollectionResponse:
    return describe(collections.get(collection))


@router.delete(
    "/{collection}",
    dependencies=[AdminOnly],
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a collection: its items, vectors, images and snapshots",
)
async def delete_collection(
    collections: CollectionsDep, jobs: JobsDep, collection: str
) -> Response:
    collections.check_deletable(collection)  # 404 or 409 before anything is stopped
    await jobs.cancel_jobs_of(collection)
    await collections.delete(collection)
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
    return JobAccepted(job_id=await collections.reindex(collection, _spec(body)))
