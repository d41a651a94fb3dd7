"""ASGI middleware: request-body size limits and API-key authentication.

Both are pure ASGI (not BaseHTTPMiddleware), so bodies stream through them untouched.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
    Paths starting with a prefix in `limits_by_prefix` get that limit instead of the default.
    """

    def __init__(
        self, app: ASGIApp, default_limit: int, limits_by_prefix: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits_by_prefix = limits_by_prefix or {}

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits_by_prefix.items():
            if path.startswith(prefix):
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
        exceeded = False
        responded = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLargeError(detail)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal responded
            if exceeded:  # whatever the app made of the cut-off body, the answer is 413
                if not responded:
                    responded = True
                    await _send_json(send, 413, detail, [(b"connection", b"close")])
                return
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLargeError:
            if not responded:
                await _send_json(send, 413, detail, [(b"connection", b"close")])


class BodyTooLargeError(Exception):
    """Raised inside the app's body reading when the limit is passed."""


class ApiKeyMiddleware:
    """Require `X-API-Key: KEY` or `Authorization: Bearer KEY` on every path but the public ones."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: str,
        public_paths: Iterable[str],
        public_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self._key = api_key.encode()
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
        headers = dict(scope["headers"])
        supplied = headers.get(b"x-api-key")
        if supplied is None:
            authorization = headers.get(b"authorization", b"")
            scheme, _, token = authorization.partition(b" ")
            supplied = token.strip() if scheme.lower() == b"bearer" else None
        return supplied is not None and hmac.compare_digest(supplied, self._key)
