"""ASGI middleware: the request-body bounds (413 for size, 400 for JSON nesting) and per-route request metrics.

Pure ASGI rather than `BaseHTTPMiddleware`, which buffers streaming bodies and costs a task per request.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dockyard.errors import error_body
from dockyard.json_depth import too_deep, too_deep_message
from dockyard.metrics_registry import per_registry


async def _send_error(send: Send, code: int, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answers 413 when a request body is over `limit` bytes, by Content-Length or as it streams in.

    Paths starting with one of `exempt_prefixes` (the data plane, which streams large bodies to workers)
    are not bounded here.
    """

    def __init__(self, app: ASGIApp, limit: int, exempt_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt_prefixes = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt_prefixes):
            await self.app(scope, receive, send)
            return
        too_large = f"request body over the limit of {self.limit} bytes; send less"
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await _send_error(send, 413, too_large)
                    return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge(too_large)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, too_large)


class _TooLarge(HTTPException):
    """Raised from `receive` when the streamed body passes the limit.

    An `HTTPException` because FastAPI turns any other exception raised while it reads a body into a 400
    ("There was an error parsing the body"); this one it re-raises, and the error handlers answer 413.
    """

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


def _is_json(scope: Scope) -> bool:
    """Whether the request says its body is JSON (`application/json` or `application/...+json`), as FastAPI reads
    it: a body FastAPI will parse."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind: bytes = value.partition(b";")[0].strip().lower()
            return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))
    return False


class JsonDepthMiddleware:
    """Answers 400 when a JSON request body nests deeper than `json_depth.MAX_JSON_DEPTH`: the check runs on the
    body's bytes as the app reads its last chunk, before anything parses it (Python's parser recurses per level,
    and a body a few thousand deep was a RecursionError: a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def checking_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    chunks.clear()
                    if too_deep(body):
                        raise _TooDeep(too_deep_message())
            return message

        await self.app(scope, checking_receive, send)


class _TooDeep(HTTPException):
    """Raised from `receive`: an `HTTPException` for the reason `_TooLarge` is (FastAPI re-raises it as it is)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class HttpMetrics:
    """The API's request metrics, counted and timed by route template (never by raw path: ids would explode
    cardinality). One set per registry (`http_metrics`), shared by `MetricsMiddleware` and the job routes that
    bypass FastAPI (api/jobs_lean.py), so a route's figures do not depend on which path served it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "dockyard_http_requests", "HTTP requests answered", ["method", "route", "code"], registry=registry
        )
        self.latency = Histogram(
            "dockyard_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry
        )

    def record(self, method: str, template: str, status: int, seconds: float) -> None:
        self.requests.labels(method, template, str(status)).inc()
        self.latency.labels(method, template).observe(seconds)


http_metrics = per_registry(HttpMetrics)


class MetricsMiddleware:
    """Records each request in the registry's `HttpMetrics` under the template of the route that served it."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.metrics = http_metrics(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.record(scope["method"], template, status, time.perf_counter() - start)
