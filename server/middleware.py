"""ASGI middleware: body size limit, API key, request metrics, HEAD.

Plain ASGI rather than ``BaseHTTPMiddleware``: they see every request, including the ones no route matches.
"""

from __future__ import annotations

import asyncio
import hmac

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_response
from server.metrics import Metrics

PROBES = ("/livez", "/readyz")
# Public without a key: the probes, the viewer's static files and the schema (none of them holds data).
_PUBLIC_PATHS = (*PROBES, "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/favicon.ico")
_PUBLIC_PREFIXES = ("/static/", "/docs-assets/")


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body reading passes it on as a 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than {max_bytes} bytes")


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: from ``Content-Length`` at once, or while a chunked body streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "body_too_large",
            f"request body is larger than {self.max_bytes} bytes",
            [{"field": "body", "message": f"at most {self.max_bytes} bytes"}],
        )
        await response(scope, receive, send)


class ApiKeyMiddleware:
    """With an API key configured, 401 for any request without it, except the public paths."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.api_key or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in dict(scope["headers"]):
            await self.app(scope, receive, send)  # CORS preflights never carry credentials
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        authorization = headers.get(b"authorization", b"")
        if given is None and authorization[:7].lower() == b"bearer ":
            given = authorization[7:].strip()
        if given is None or not hmac.compare_digest(given, self.api_key):
            response = error_response(
                401,
                "unauthorized",
                "missing or wrong API key: send 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def is_public(path: str) -> bool:
    """Whether ``path`` is served without the API key."""
    return path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES)


class MetricsMiddleware:
    """Counts requests by route template, method and status, and times them."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            # Templates (not raw paths) keep the label set bounded whatever clients request.
            label = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static/") else ""
            )
            label = label or "unmatched"
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(loop.time() - started)


class HeadMiddleware:
    """``HEAD`` answered as ``GET`` without the body, for every GET route (uptime checkers probe with HEAD;
    FastAPI routes declare GET only). The headers, ``Content-Length`` included, are the GET's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        # A copy: the server reads the method from its own scope to send no body (uvicorn insists on the
        # Content-Length's worth of bytes for a GET). The metrics middleware reads the matched route back.
        get_scope = {**scope, "method": "GET"}
        try:
            await self.app(get_scope, receive, headers_only)
        finally:
            if "route" in get_scope:
                scope["route"] = get_scope["route"]
