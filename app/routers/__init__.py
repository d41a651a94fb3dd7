"""HTTP routes, one module per resource; aggregated in `api_router`. Routers are thin: they call
the services (and app/jobs), never index/ or models/ directly (the layering test checks it).

The data routes (items, search, batch, embed) are mounted twice: under `/v1`, acting on the
`default` collection, and under `/v1/collections/{collection}`. Each mounting holds its own
copies of the routes, so that a route's path is its whole template (metrics label by it).
"""

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute

from app.deps import collection_param
from app.routers import (
    batch,
    classify,
    collections,
    duplicates,
    embed,
    health,
    items,
    metrics,
    openai,
    page,
    search,
)

# FastAPI tries a request's path against each route in turn (twice over): the routes queries
# take come first (a text search tried 33 patterns behind the item routes, now 9)
COLLECTION_ROUTERS = (
    search.router,
    embed.router,
    items.router,
    batch.router,
    classify.router,
    duplicates.router,
)
COLLECTION_PREFIX = "/v1/collections/{collection}"


def mounted(
    routers: Sequence[APIRouter],
    prefix: str,
    dependencies: Sequence[DependsParam] = (),
    id_suffix: str = "",
) -> APIRouter:
    """Copies of the routers' routes under `prefix`, with their full paths."""
    copy = APIRouter(prefix=prefix, dependencies=list(dependencies))
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                raise TypeError(f"{route!r} is not an API route: it cannot be mounted")
            options: dict[str, Any] = {
                "methods": route.methods,
                "response_model": route.response_model,
                "status_code": route.status_code,
                "tags": route.tags,
                "summary": route.summary,
                "description": route.description,
                "response_class": route.response_class,
                "name": route.name,
                "openapi_extra": route.openapi_extra,
                "dependencies": route.dependencies,
            }
            if id_suffix:
                options["operation_id"] = f"{route.unique_id}{id_suffix}"
            copy.add_api_route(route.path, route.endpoint, **options)
    return copy


api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(mounted(COLLECTION_ROUTERS, "/v1"))
api_router.include_router(batch.jobs_router)
api_router.include_router(openai.router)
api_router.include_router(collections.router)
api_router.include_router(
    mounted(
        COLLECTION_ROUTERS,
        COLLECTION_PREFIX,
        dependencies=[Depends(collection_param)],
        id_suffix="_in_collection",
    )
)
api_router.include_router(metrics.router)
api_router.include_router(page.router)
