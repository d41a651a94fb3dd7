"""What FastAPI's routing costs a request: a route held by the app, or included one or two
routers down, behind other routes.

    .venv/bin/python -m bench.routing --json-out bench/routing-cpu.json

FastAPI (0.165) keeps an included router as a branch and, for every request, walks each level
of branches twice (to find the match, then to handle it). One GET route with one query
parameter is placed behind `--routes-before` others (path templates that do not match) in
three apps: held by the app itself, behind one include_router, behind two nested ones (as
xmr's routes were until app.routers.add_routes); and, as the floor, an app of that one route.
Each request is an ASGI call in this process (no HTTP, no middleware); the apps take turns,
`--rounds` rounds, p50 per app.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time

import fastapi
from fastapi import APIRouter, FastAPI, Query
from starlette.types import Message

from bench.report import benchmark_parser, emit
from bench.runtimes import cpu_flags


def make_app(routes_before: int, levels: int) -> FastAPI:
    """The target route `/v1/search/text` behind `routes_before` others, `levels` includes
    down (0: the app holds every route)."""
    router = APIRouter()
    for n in range(routes_before):

        async def other(x: str) -> dict[str, str]:
            return {"x": x}

        router.add_api_route(f"/other{n}/{{x}}", other, methods=["GET"])

    async def search(q: str = Query(...)) -> dict[str, str]:
        return {"q": q}

    router.add_api_route("/search/text", search, methods=["GET"])
    app = FastAPI()
    if levels == 0:
        for route in router.routes:
            assert isinstance(route, fastapi.routing.APIRoute)
            app.router.add_api_route(
                "/v1" + route.path, route.endpoint, methods=list(route.methods or ())
            )
        return app
    branch = router
    for level in range(levels):
        outer = APIRouter(prefix="/v1" if level == 0 else "")
        outer.include_router(branch)
        branch = outer
    app.include_router(branch)
    return app


async def call(app: FastAPI) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/search/text",
        "raw_path": b"/v1/search/text",
        "query_string": b"q=a+red+circle",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "root_path": "",
        "state": {},
    }
    answers: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        answers.append(message)

    await app(scope, receive, send)
    assert answers[0]["status"] == 200, answers


async def p50s_us(apps: dict[str, FastAPI], requests: int, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in apps}
    for app in apps.values():  # warm-up: FastAPI builds its branches on first use
        for _ in range(200):
            await call(app)
    for _ in range(rounds):
        for name, app in apps.items():
            for _ in range(requests // rounds):
                started = time.perf_counter()
                await call(app)
                times[name].append((time.perf_counter() - started) * 1e6)
    return {name: round(statistics.median(values), 1) for name, values in times.items()}


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--routes-before", type=int, default=30)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    apps = {
        "the_only_route": make_app(0, 0),
        "held_by_the_app": make_app(args.routes_before, 0),
        "one_include_down": make_app(args.routes_before, 1),
        "two_includes_down": make_app(args.routes_before, 2),
    }
    figures = asyncio.run(p50s_us(apps, args.requests, args.rounds))
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, fastapi {fastapi.__version__}",
        "cpu_flags": cpu_flags(),
        "routes_before": args.routes_before,
        "p50_us": figures,
    }
    return emit(report, args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())
