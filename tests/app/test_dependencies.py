"""Every route runs on the event loop: FastAPI hands a plain `def` endpoint or dependency to a
thread pool, one thread hop per call and request (about 0.5 ms of a text query's time on the
2-core machine, BENCHMARKS.md); blocking work leaves the loop through app.services.threads."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import fastapi.applications
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.testclient import TestClient


def dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from dependants(sub)


def route_calls(routes: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    """(path, callable) for each endpoint and each dependency FastAPI calls for it, routers
    included under a prefix (FastAPI builds those routes lazily) walked too."""
    for route in routes:
        if hasattr(route, "effective_candidates"):  # an included router
            yield from route_calls(route.effective_candidates())
            continue
        original = getattr(route, "original_route", route)
        dependant = getattr(route, "dependant", None) or getattr(original, "dependant", None)
        if dependant is None:
            continue  # Starlette's own routes: the OpenAPI document, static files
        for found in dependants(dependant):
            if found.call is not None:
                yield route.path, found.call
        for depends in getattr(route, "dependencies", []):  # given where a router is included
            yield route.path, depends.dependency


def runs_on_the_loop(call: Any) -> bool:
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


def test_no_endpoint_or_dependency_is_run_in_a_thread(client: TestClient) -> None:
    calls = list(route_calls(client.app.router.routes))  # type: ignore[attr-defined]
    paths = {path for path, _ in calls}
    assert "/v1/search/text" in paths and "/v1/collections/{collection}/search/text" in paths
    in_threads = {
        f"{path}: {call.__qualname__}" for path, call in calls if not runs_on_the_loop(call)
    }
    assert not in_threads, sorted(in_threads)


def test_no_route_is_analysed_while_requests_wait(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lifespan builds every route before the app is ready: FastAPI otherwise reads each
    endpoint's and dependency's signature on the first request that walks past it, on the
    event loop (a first /metrics took over a second on a busy 2-core machine)."""
    analysed: list[str] = []
    signature = inspect.signature

    def recording(call: Any, *args: Any, **kwargs: Any) -> inspect.Signature:
        if getattr(call, "__module__", "").startswith("app."):
            analysed.append(call.__qualname__)
        return signature(call, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", recording)
    for path in ("/metrics", "/v1/info", "/v1/collections", "/v1/search/text?q=a", "/v1/nothing"):
        assert client.get(path).status_code in (200, 404)
    assert not analysed, analysed


def test_the_openapi_schema_is_made_before_requests_wait(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI makes it on the first /openapi.json otherwise, on the event loop (50-60 ms of
    every request's time on a 2-core machine); the lifespan makes it before the app is ready."""

    def made_now(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the OpenAPI schema was made while requests were served")

    monkeypatch.setattr(fastapi.applications, "get_openapi", made_now)
    response = client.get("/openapi.json")
    assert response.status_code == 200 and "/v1/search/text" in response.json()["paths"]
