"""HTTP routes, one module per resource; added to the app by `add_routes`. Routers are thin:
they call the services (and app/jobs), never index/ or models/ directly (the layering test
checks it).

The data routes (items, search, batch, embed) are mounted twice: under `/v1`, acting on the
`default` collection, and under `/v1/collections/{collection}`. The app holds a copy of each
route per mounting, so that a route's path is its whole template (metrics label by it).
"""

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

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


@dataclass(frozen=True)
class Mounting:
    """Routers whose routes are served under `prefix`, each with `dependencies` first."""

    routers: Sequence[APIRouter]
    prefix: str = ""
    dependencies: Sequence[DependsParam] = ()
    id_suffix: str = ""  # for the OpenAPI operation ids of a second mounting


API = (
    Mounting((health.router,)),
    Mounting(COLLECTION_ROUTERS, "/v1"),
    Mounting((batch.jobs_router,)),
    Mounting((openai.router,)),
    Mounting((collections.router,)),
    Mounting(
        COLLECTION_ROUTERS,
        COLLECTION_PREFIX,
        dependencies=(Depends(collection_param),),
        id_suffix="_in_collection",
    ),
    Mounting((metrics.router,)),
    Mounting((page.router,)),
)

# what a copy keeps of its route: every option of add_api_route the route holds, as it holds it
_ROUTE_OPTIONS = tuple(
    name
    for name in inspect.signature(APIRouter.add_api_route).parameters
    if name not in ("self", "path", "endpoint", "dependencies", "operation_id")
)


def add_routes(target: APIRouter, mountings: Sequence[Mounting] = API) -> None:
    """Every route of the API added to `target` (the app's own router) as a copy with its whole
    path, in the order of `mountings`.

    Not with include_router: FastAPI (0.165) keeps an included router as a branch of its own and
    walks each level of branches twice for every request; a route behind 30 others took 0.31 ms
    two includes down, 0.12 ms held by the app (`bench.routing`, warm caches).
    """
    for mounting in mountings:
        for router in mounting.routers:
            for route in router.routes:
                add_copy(target, route, mounting)


def add_copy(target: APIRouter, route: BaseRoute, mounting: Mounting) -> None:
    if not isinstance(route, APIRoute):
        raise TypeError(f"{route!r} is not an API route: it cannot be mounted")
    options: dict[str, Any] = {
        name: getattr(route, name) for name in _ROUTE_OPTIONS if hasattr(route, name)
    }
    operation_id = route.operation_id
    if mounting.id_suffix:
        operation_id = f"{route.unique_id}{mounting.id_suffix}"
    target.add_api_route(
        mounting.prefix + route.path,
        route.endpoint,
        dependencies=[*mounting.dependencies, *route.dependencies],
        operation_id=operation_id,
        **options,
    )
