"""ASGI middleware: body limits, API-key authentication, cross-site write refusal, headers.

All are pure ASGI (not BaseHTTPMiddleware), so bodies stream through them untouched.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.logs import loggable

logger = logging.getLogger(__name__)


async def _send_json(
    send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """Answer 413 once a request body passes its limit, whether or not it declared a length.

    The body is counted as it streams in, so an oversized upload is never buffered whole.
    Paths that a pattern in `limits_by_path` matches (from their start) get that limit instead.
    """

    def __init__(
        self,
        app: ASGIApp,
        default_limit: int,
        limits_by_path: dict[str, int] | None = None,
        idle_timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits_by_path = [
            (re.compile(pattern), limit) for pattern, limit in (limits_by_path or {}).items()
        ]
        self.idle_timeout_s = idle_timeout_s

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.limits_by_path:
            if pattern.match(path):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        detail = f"the request body is larger than the {limit / 2**20:.3g} MB allowed"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_json(send, 413, detail)
            return

        received = 0
        refusal: tuple[int, str] | None = None
        body_complete = False
        responded = False

        async def limited_receive() -> Message:
            nonlocal received, refusal, body_complete
            if body_complete:  # past the body only a disconnect can come: wait as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout_s)
            except TimeoutError:
                refusal = (408, f"the request body stalled for {self.idle_timeout_s:g} s")
                raise BodyRefusedError(refusal[1]) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
                if received > limit:
                    refusal = (413, detail)
                    raise BodyRefusedError(detail)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal responded
            if refusal is not None:  # whatever the app made of the cut-off body, this answers
                if not responded:
                    responded = True
                    await _send_json(send, *refusal, [(b"connection", b"close")])
                return
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyRefusedError:
            if not responded and refusal is not None:
                await _send_json(send, *refusal, [(b"connection", b"close")])


class BodyRefusedError(Exception):
    """Raised inside the app's body reading when the body passes its limit or stalls."""


def supplied_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key a request carries: `X-API-Key`, else `Authorization: Bearer`."""
    supplied = headers.get(b"x-api-key")
    if supplied is None:
        authorization = headers.get(b"authorization", b"")
        scheme, _, token = authorization.partition(b" ")
        supplied = token.strip() if scheme.lower() == b"bearer" else None
    return supplied


def key_matches(supplied: bytes | None, key: bytes) -> bool:
    return supplied is not None and hmac.compare_digest(supplied, key)


class ApiKeyMiddleware:
    """Require `X-API-Key: KEY` or `Authorization: Bearer KEY` on every path but the public ones.

    Any of `keys` will do (the user key, and the admin key where one is set); which routes need
    the admin key is said by those routes (app.deps.require_admin).
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: Iterable[str],
        public_paths: Iterable[str],
        public_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self._keys = tuple(key.encode() for key in keys)
        self._public = frozenset(public_paths)
        self._public_prefixes = public_prefixes

    def _is_public(self, path: str) -> bool:
        return path in self._public or path.startswith(self._public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_public(scope["path"]) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        await _send_json(
            send,
            401,
            "missing or wrong API key: send X-API-Key or Authorization: Bearer",
            [(b"www-authenticate", b'Bearer realm="xmr"')],
        )

    def _authorized(self, scope: Scope) -> bool:
        supplied = supplied_key(dict(scope["headers"]))
        # every key is compared, so the time taken does not say which one nearly matched
        return any([key_matches(supplied, key) for key in self._keys])


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CrossSiteWriteMiddleware:
    """Refuse writes sent by a browser page of a foreign origin (403).

    Browsers send `Origin` with every cross-site POST, including the "simple" multipart ones
    that are not preflighted; a page of any web site could otherwise write to a server on
    localhost. Allowed: no Origin (curl, the CLI, the client), the server's own origin (its Host,
    whatever the scheme a proxy terminated), and the configured CORS origins. `Origin: null`
    (sandboxed frames, file: pages) is foreign.
    """

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self._allowed = frozenset(origin.lower() for origin in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is not None and not self._same_or_allowed(origin, headers.get(b"host")):
                await _send_json(
                    send,
                    403,
                    "a web page of another origin may not change data here; "
                    "list its origin in XMR_CORS_ORIGINS to allow it",
                )
                return
        await self.app(scope, receive, send)

    def _same_or_allowed(self, origin: bytes, host: bytes | None) -> bool:
        text = origin.decode("latin-1").strip().lower()
        if text in self._allowed:
            return True
        if text == "null" or host is None:
            return False
        netloc = urlsplit(text).netloc
        return bool(netloc) and netloc == host.decode("latin-1").strip().lower()


PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class SecurityHeadersMiddleware:
    """Every response: no framing, no MIME sniffing, and a Content-Security-Policy.

    The page and the API docs are served with scripts and styles of this origin only, so the
    API key that the page keeps in localStorage is never in reach of another site's script.
    """

    HEADERS = (
        (b"content-security-policy", PAGE_POLICY.encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.HEADERS if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


class FetchMetadataMiddleware:
    """A resource isolation policy: requests a browser marks `Sec-Fetch-Site: cross-site` are
    refused (403), reads included, unless they are a plain navigation to the search page or
    come from an origin listed in XMR_CORS_ORIGINS.

    Without it a page of any site can make a visitor's browser run costly reads on a server it
    reaches (`<img src=http://127.0.0.1:8000/v1/duplicates?threshold=0.5>`); such requests carry
    no Origin, so the cross-site write check cannot see them. Clients that are not browsers
    send no Sec-Fetch-* headers and are not affected.
    """

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self._allowed = frozenset(origin.lower().encode() for origin in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed_request(scope):
            await _send_json(
                send, 403, "a page of another site may not call this server from a browser"
            )
            return
        await self.app(scope, receive, send)

    def _allowed_request(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        if headers.get(b"sec-fetch-site", b"").lower() != b"cross-site":
            return True
        if headers.get(b"origin", b"").lower().rstrip(b"/") in self._allowed:
            return True
        return (
            scope["method"] == "GET"
            and scope["path"] == "/"
            and headers.get(b"sec-fetch-mode") == b"navigate"
            and headers.get(b"sec-fetch-dest", b"document") == b"document"
        )


class UnhandledErrorMiddleware:
    """An error no handler knew becomes a JSON 500 (503 for too many open files) here, and goes
    no further: Starlette's own last handler answers, then re-raises to the server, which
    closes the connection the client was keeping alive."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            logger.exception(
                "unhandled error on %s %s", scope["method"], loggable(scope["path"]), exc_info=error
            )
            if started:
                return  # the answer is on its way; there is nothing better to send
            if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
                await _send_json(
                    send,
                    503,
                    "the server has too many open files right now; retry shortly",
                    [(b"retry-after", b"5")],
                )
                return
            await _send_json(send, 500, "internal server error")
