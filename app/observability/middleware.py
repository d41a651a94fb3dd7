"""Per-request bookkeeping: request id, Server-Timing, one access-log line, and the HTTP
metrics."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.logs import loggable, request_id_from, request_id_var
from app.observability.metrics import Metrics
from app.services.timing import RequestTimes, request_times_var

access_log = logging.getLogger("xmr.access")


class RequestObservabilityMiddleware:
    """Outermost middleware: it sees every answer, 401 and 413 included.

    Requests are labelled by route template (`/v1/items/{item_id}`), never by raw path, so that
    metrics stay bounded; unmatched paths share one label. Query strings are not logged.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(dict(scope["headers"]).get(b"x-request-id"))
        token = request_id_var.set(request_id)
        times = RequestTimes()
        times_token = request_times_var.set(times)
        started = time.perf_counter()
        status = 500

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                timing = server_timing(time.perf_counter() - started, times)
                headers.append((b"server-timing", timing.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, tagged_send)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(scope["method"], template, status, seconds)
            path = loggable(scope["path"])
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                path,
                status,
                seconds * 1000,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
            request_times_var.reset(times_token)
            request_id_var.reset(token)


def server_timing(app_seconds: float, times: RequestTimes) -> str:
    """A Server-Timing header (W3C): the time in the app until the response started, and the
    model's and the index's shares of it where the request used them (a query cache hit has
    no model time, an embedding no index time)."""
    shares = [("model", times.model), ("index", times.index)]
    timing = [f"{name};dur={seconds * 1000:.2f}" for name, seconds in shares if seconds > 0]
    return ", ".join([*timing, f"app;dur={app_seconds * 1000:.2f}"])
