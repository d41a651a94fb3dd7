"""Typed dependencies: routes ask for what they need of the running app's services.

Routes under `/v1/collections/{collection}/...` act on that collection; the same routes under
`/v1/...` act on `default`. A route gets one generation of the collection for its whole run
(app.services.collections), with its model where it encodes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Path, Request

from app.assembly import Services
from app.config import Settings
from app.jobs.runner import JobRunner
from app.middleware import key_matches, supplied_key
from app.services.classify import ClassifyService
from app.services.collections import Collection
from app.services.encoding import EncodingService
from app.services.errors import AdminKeyRequiredError, NotReadyError
from app.services.items import ItemService
from app.services.registry import CollectionRegistry
from app.services.search import SearchService
from index.layout import COLLECTION_NAME, DEFAULT_COLLECTION


async def require_admin(request: Request) -> None:
    """Routes that change what every client shares need XMR_ADMIN_KEY, when one is set."""
    settings: Settings = request.app.state.settings
    if settings.admin_key is None:
        return
    supplied = supplied_key(dict(request.scope["headers"]))
    if not key_matches(supplied, settings.admin_key.get_secret_value().encode()):
        raise AdminKeyRequiredError(
            "creating, deleting and re-embedding collections and tagging need the admin key "
            "(XMR_ADMIN_KEY)"
        )


AdminOnly = Depends(require_admin)


async def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None or not getattr(request.app.state, "ready", False):
        raise NotReadyError("the service is starting or stopping; retry shortly")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def collection_param(
    collection: str = Path(pattern=COLLECTION_NAME.pattern, description="the collection's name"),
) -> str:
    """Declares (and checks) `{collection}` for the routes mounted under a collection."""
    return collection


def collection_name(request: Request) -> str:
    return str(request.path_params.get("collection", DEFAULT_COLLECTION))


async def get_collection(request: Request, services: ServicesDep) -> Collection:
    """The collection a route names, as the catalog describes it now: with several replicas,
    what another one changed is taken up before this request uses it."""
    await services.collections.refresh()
    return services.collections.get(collection_name(request))


CollectionDep = Annotated[Collection, Depends(get_collection)]


async def get_url_base(request: Request) -> str:
    """Where this collection's routes live: item content URLs are built on it."""
    name = collection_name(request)
    return (
        "/v1"
        if "collection" not in request.path_params
        else (f"/v1/collections/{quote(name, safe='')}")
    )


UrlBaseDep = Annotated[str, Depends(get_url_base)]


async def indexing_items(collection: CollectionDep) -> AsyncIterator[ItemService]:
    """Writes that encode: the generation and its model, held until the write is stored."""
    async with collection.use(write=True, model=True) as pin:
        yield pin.items


async def changing_items(collection: CollectionDep) -> AsyncIterator[ItemService]:
    """Writes without the model (deletes)."""
    async with collection.use(write=True) as pin:
        yield pin.items


async def reading_items(collection: CollectionDep) -> AsyncIterator[ItemService]:
    async with collection.use() as pin:
        yield pin.items


async def searching(collection: CollectionDep) -> AsyncIterator[SearchService]:
    async with collection.use(model=True) as pin:
        yield pin.search


async def searching_stored(collection: CollectionDep) -> AsyncIterator[SearchService]:
    """Searches by stored vectors: no model needed."""
    async with collection.use() as pin:
        yield pin.search


async def classifying(collection: CollectionDep) -> AsyncIterator[ClassifyService]:
    async with collection.use(model=True) as pin:
        yield pin.classify


async def encoding(collection: CollectionDep) -> AsyncIterator[EncodingService]:
    async with collection.use(model=True) as pin:
        yield pin.require_encoding()


async def get_jobs(services: ServicesDep) -> JobRunner:
    return services.jobs


async def get_collections(services: ServicesDep) -> CollectionRegistry:
    await services.collections.refresh()
    return services.collections


IndexingDep = Annotated[ItemService, Depends(indexing_items)]
ChangingDep = Annotated[ItemService, Depends(changing_items)]
ItemsDep = Annotated[ItemService, Depends(reading_items)]
SearchDep = Annotated[SearchService, Depends(searching)]
StoredSearchDep = Annotated[SearchService, Depends(searching_stored)]
ClassifyDep = Annotated[ClassifyService, Depends(classifying)]
EncodingDep = Annotated[EncodingService, Depends(encoding)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
CollectionsDep = Annotated[CollectionRegistry, Depends(get_collections)]
