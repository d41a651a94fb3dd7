"""Typed dependencies: routes ask for a service and get the running app's instance."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.services.errors import NotReadyError
from app.services.items import ItemService
from app.services.jobs import JobRunner
from app.services.search import SearchService
from app.state import Services


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None or not getattr(request.app.state, "ready", False):
        raise NotReadyError("the service is starting or stopping; retry shortly")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_items(services: ServicesDep) -> ItemService:
    return services.items


def get_search(services: ServicesDep) -> SearchService:
    return services.search


def get_jobs(services: ServicesDep) -> JobRunner:
    return services.jobs


ItemsDep = Annotated[ItemService, Depends(get_items)]
SearchDep = Annotated[SearchService, Depends(get_search)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
