"""The sync gateway: `{gateway}/{endpoint_id}/{path}` proxied to one ready worker, streaming both ways.

`GatewayApp` is a raw ASGI app, kept off FastAPI because it is the hot path (DESIGN.md principle 6): a request
costs one header scan, one `await authenticate(token)`, a dictionary lookup in the `RouteTable`, a slot from
the endpoint's `EndpointDispatcher` and one exchange over a shared connection pool; no database, no pydantic.

1. Arrival. The path's first segment is the endpoint id; the rest, percent-encoding and query string as the
   client sent them, is the path on the worker (`/{id}` alone is `/`). A missing or wrong `Authorization:
   Bearer` key is 401; an endpoint that is unknown or belongs to another organization is 404, never 403, so
   that existence does not leak; an async endpoint is 404 too, saying that its jobs go to `/v1/{id}/run`.
2. Queueing. The deadline is the arrival time plus the endpoint's `request_timeout`. `dispatcher.acquire`
   hands out the least-loaded ready worker with a free slot, or queues the request: a full queue is 429 with
   `Retry-After`, the deadline passing in the queue is 504. The slot is held until the response body has
   been sent or the client has gone, and released by the dispatcher's context manager whatever ends it.
3. Forwarding. The deadline holds until the worker's response headers arrive: a worker that has not begun
   to answer by then gets 504. After the headers the body streams for as long as the worker and the client
   keep it going, so a server-sent-event or token stream is never cut at `request_timeout`; a client that
   wants a bound on the whole exchange sets its own timeout, and leaving ends the stream.
4. Streaming. The request body goes up as it arrives (chunked when the client sent no `Content-Length`); the
   response comes down chunk by chunk as the worker writes it, with its `Content-Length` when it gave one.
   Hop-by-hop headers are dropped both ways, and so is the client's `Authorization`: a user's Dockyard key
   never reaches a worker. The worker sees `X-Forwarded-For` (appended to), `-Proto` and `-Host`; the
   client sees `X-Dockyard-Worker`, the worker that answered.

Client disconnects. One small task per request is the only reader of ASGI `receive`: it buffers the request
body for the upstream send and, once the body is in, waits for `http.disconnect`. When that comes before the
answer is complete it cancels the request's task, which leaves the queue or drops the upstream exchange, and
the slot is released at once (counted as status 499, the nginx convention). The buffer holds at most
`_HIGH_WATER` bytes ahead of the upstream send; a queued request whose body is larger stops being read there,
so its departure is only seen when a worker takes it or its deadline passes.

Worker failures. The gateway does not judge health (the prober does); it reports what it saw through
`on_worker_error(endpoint_id, worker_id, reason)` so that the prober can re-check that worker at once. A
worker that cannot be reached before its response headers is 502. Only a failed connect is retried, once, on
another ready worker while the deadline allows: nothing was sent, so even a POST is safe to send again;
anything that failed after the connection was made is never retried (the worker may have acted on it). The
retry takes its second slot while still holding the first, which steers the least-loaded choice away from
the worker that refused; if the dispatcher can only offer that worker again, the answer is 502. A failure
after the response headers cuts the response short, as the worker's own failure would.

The upstream client is aiohttp's, chosen by measurement: against one no-op worker, 64 concurrent requests
through an `httpx.AsyncHTTPTransport` made 239 requests/s, because httpcore's pool scans every connection it
holds on each request; aiohttp's connector, which keeps a queue of idle connections per host, made 19,185
(8,236 vs 2,591 at one request at a time). Connections are pooled per worker, one session each, made on the
worker's first request and closed once it has left the table (or by `aclose()`). Each session has no cookie
jar (tenants' responses must never share one), no redirects, no decompression (bodies pass through as the
worker wrote them), no headers of its own, no connection cap (the dispatcher bounds requests per worker), and
it ignores proxy settings from the environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import Receive, Scope, Send
from yarl import URL

from dockyard.core.status import EndpointType
from dockyard.errors import error_body
from dockyard.gateway.dispatcher import DispatchTimeout, EndpointDispatcher, QueueFull
from dockyard.gateway.routes import EndpointRoute, RouteTable

log = logging.getLogger(__name__)

Authenticate = Callable[[str], Awaitable[str | None]]
WorkerErrorHook = Callable[[str, str, str], None]
_Headers = Iterable[tuple[bytes, bytes]]

CLIENT_GONE = 499  # the status counted for a request whose client left before its answer was complete

# Request body bytes read ahead of the upstream send. Enough for a whole ordinary JSON request, so that a
# queued request's client is still watched; small enough that a full queue of uploads stays cheap.
_HIGH_WATER = 256 * 1024

# Hop-by-hop headers (RFC 9110 section 7.6.1), plus what the gateway replaces or must not forward: the user's
# key, the Host the client addressed (the worker gets its own), `Expect` (the ASGI server already answered
# it), and the forwarding headers, which are rebuilt. Names starting with `proxy-` are dropped as well.
_HOP_BY_HOP = b"connection keep-alive te trailer transfer-encoding upgrade".split()
_DROP_REQUEST = frozenset(
    [*_HOP_BY_HOP, *b"authorization host expect x-forwarded-for x-forwarded-proto x-forwarded-host".split()]
)
# `Date` and `Server` are dropped as nginx drops them: the ASGI server adds its own, and a second `Date` is
# invalid. `X-Dockyard-Worker` is ours to set.
_DROP_RESPONSE = frozenset([*_HOP_BY_HOP, b"date", b"server", b"x-dockyard-worker"])
# Failures before anything was sent: the connection was refused or never made.
_RETRYABLE = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# What aiohttp would add to a request on its own; a proxy forwards the client's headers and nothing else.
_NO_AUTO_HEADERS = frozenset(["User-Agent", "Accept", "Accept-Encoding", "Content-Type"])
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)
_UNKNOWN = "unknown"  # the endpoint label of requests that named no endpoint in the table


class _EndpointMetrics:
    """One endpoint's metric children, looked up once rather than through `labels()` on every request."""

    __slots__ = ("_codes", "_endpoint", "_requests", "latency", "queue_wait")

    def __init__(self, metrics: _Metrics, endpoint: str) -> None:
        self._requests = metrics.requests
        self._endpoint = endpoint
        self._codes: dict[int, Counter] = {}
        self.latency = metrics.latency.labels(endpoint)
        self.queue_wait = metrics.queue_wait.labels(endpoint)

    def count(self, code: int) -> None:
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = self._requests.labels(self._endpoint, str(code))
        counter.inc()


class _Metrics(dict[str, _EndpointMetrics]):
    """The gateway's metrics on one registry; indexing it by endpoint label gives that endpoint's children."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        histogram = partial(Histogram, labelnames=["endpoint"], registry=registry, buckets=_BUCKETS)
        self.requests = Counter(
            "dockyard_gateway_requests", "Sync gateway requests answered", ["endpoint", "code"], registry=registry
        )
        self.latency = histogram("dockyard_gateway_request_seconds", "Arrival to response headers sent")
        self.queue_wait = histogram("dockyard_gateway_queue_wait_seconds", "Arrival to worker assigned")

    def __missing__(self, endpoint: str) -> _EndpointMetrics:
        children = self[endpoint] = _EndpointMetrics(self, endpoint)
        return children


_metrics: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    """One set of metrics per registry, shared by every gateway app built on it."""
    if registry not in _metrics:
        _metrics[registry] = _Metrics(registry)
    return _metrics[registry]


@dataclass(slots=True, eq=False)
class _Exchange:
    """One request on its way through the gateway, and the only reader of its ASGI `receive`.

    `watch()` runs in a task of its own. It buffers body chunks (at most `_HIGH_WATER` bytes ahead of the
    upstream send) and, when `http.disconnect` comes before `finished` is set, marks the client `gone` and
    cancels the request's task. Iterating the exchange yields the body to the upstream send.
    """

    endpoint: str
    route: EndpointRoute
    method: str
    target: str  # the path and query string on the worker
    headers: list[tuple[bytes, bytes]]
    has_body: bool
    receive: Receive
    task: asyncio.Task[Any]
    send: Send
    metrics: _EndpointMetrics
    arrival: float
    deadline: float
    gone: bool = False
    # Set just before the last message of the answer is sent: the ASGI server reports `http.disconnect` once
    # a response is complete, and that must not cancel the request's own clean-up.
    finished: bool = False
    _chunks: deque[bytes] = field(default_factory=deque)
    _buffered: int = 0
    _complete: bool = False
    _readable: asyncio.Event = field(default_factory=asyncio.Event)
    _drained: asyncio.Event = field(default_factory=asyncio.Event)

    async def watch(self) -> None:
        try:
            while True:
                while self._buffered >= _HIGH_WATER:
                    self._drained.clear()
                    await self._drained.wait()
                message = await self.receive()
                if message["type"] != "http.request":
                    break
                body = message.get("body", b"")
                if body:
                    self._chunks.append(body)
                    self._buffered += len(body)
                if not message.get("more_body", False):
                    self._complete = True
                self._readable.set()
        except Exception:
            log.debug("reading the request failed; the client is taken as gone", exc_info=True)
        if not self.finished:
            self.gone = True
            self.task.cancel()

    def __aiter__(self) -> _Exchange:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._complete:
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        self._drained.set()
        return chunk

    @property
    def timeout(self) -> float:
        return self.route.config.request_timeout


class _Refused(Exception):
    """A worker refused the connection: nothing was sent to it and nothing to the client yet."""


class GatewayApp:
    """The sync gateway as a raw ASGI app; see the module docstring for what it does to a request.

    `authenticate(token)` returns the key's organization id, or None for a key that is not valid; it is
    awaited on every request, so it must answer from memory. `on_worker_error(endpoint_id, worker_id,
    reason)` is called synchronously when a worker could not be reached or broke a response off; it must be
    cheap and must not block (schedule the re-check, do not await it). The app lives on one event loop at a
    time; `aclose()` closes its upstream connections, and a later request opens new ones.
    """

    def __init__(
        self,
        routes: RouteTable,
        authenticate: Authenticate,
        registry: CollectorRegistry,
        *,
        on_worker_error: WorkerErrorHook | None = None,
        connect_timeout: float = 10.0,
        keepalive_expiry: float = 4.0,
    ) -> None:
        """`keepalive_expiry` stays below common worker servers' idle timeouts (uvicorn's is 5 s): the gateway
        retires an idle connection before the worker can close it under a new request."""
        self.routes = routes
        self.authenticate = authenticate
        self.on_worker_error = on_worker_error or (lambda endpoint, worker, reason: None)
        self._metrics = _metrics_for(registry)
        # No read timeout: the request's deadline bounds the wait for headers; a stream may then idle.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self._keepalive_expiry = keepalive_expiry
        self._pools: dict[str, tuple[str, str, aiohttp.ClientSession]] = {}  # worker -> endpoint, address, pool

    async def aclose(self) -> None:
        """Close the upstream connections (idempotent)."""
        pools, self._pools = self._pools, {}
        for _, _, pool in pools.values():
            await pool.close()

    async def _pool(self, endpoint: str, worker: str, address: str) -> aiohttp.ClientSession:
        """`worker`'s own pool. Making one also closes the pools of workers the table no longer holds at their
        address, so pools come and go with workers and only a worker's first request pays for the pruning."""
        entry = self._pools.get(worker)
        if entry is not None and entry[1] == address:
            return entry[2]
        # Registered before any await, so that a request arriving meanwhile uses this pool, not a second one.
        pool = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=self._keepalive_expiry),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            timeout=self._timeout,
            trust_env=False,
        )
        self._pools[worker] = (endpoint, address, pool)
        stale = [entry[2]] if entry is not None else []
        for other, (other_endpoint, other_address, other_pool) in list(self._pools.items()):
            route = self.routes.get(other_endpoint)
            if route is None or route.addresses.get(other) != other_address:
                del self._pools[other]
                stale.append(other_pool)
        for old in stale:
            await old.close()
        return pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        raw_path: bytes = scope.get("raw_path") or quote(scope["path"]).encode()
        endpoint_bytes, _, rest = raw_path[1:].partition(b"/")
        endpoint = endpoint_bytes.decode("latin-1")
        route = self.routes.get(endpoint)
        metrics = self._metrics[endpoint if route is not None else _UNKNOWN]

        headers: list[tuple[bytes, bytes]] = []
        authorization = host = forwarded_for = b""
        has_body = False
        for name, value in scope["headers"]:
            if name in _DROP_REQUEST or name.startswith(b"proxy-"):
                if name == b"authorization":
                    authorization = value
                elif name == b"host":
                    host = value
                elif name == b"x-forwarded-for":
                    forwarded_for = forwarded_for + b", " + value if forwarded_for else value
                elif name == b"transfer-encoding":
                    has_body = True
                continue
            if name == b"content-length":
                has_body = True
            headers.append((name, value))

        token = authorization[7:].strip() if authorization[:7].lower() == b"bearer " else b""
        org = await self.authenticate(token.decode("latin-1")) if token else None
        if org is None:
            message = "missing or invalid API key; send the header Authorization: Bearer <api key>"
            metrics.count(401)
            await _reply(send, metrics, arrival, 401, message)
            return
        if route is None or route.config.org_id != org:
            metrics.count(404)
            await _reply(send, metrics, arrival, 404, f"endpoint {endpoint} not found")
            return
        if route.config.type is EndpointType.ASYNC:
            message = f"endpoint {endpoint} is an async endpoint; submit jobs with POST /v1/{endpoint}/run"
            metrics.count(404)
            await _reply(send, metrics, arrival, 404, message)
            return

        client_address = scope.get("client")
        if client_address:
            peer = client_address[0].encode("latin-1")
            forwarded_for = forwarded_for + b", " + peer if forwarded_for else peer
        if forwarded_for:
            headers.append((b"x-forwarded-for", forwarded_for))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1")))
        if host:
            headers.append((b"x-forwarded-host", host))
        query: bytes = scope.get("query_string", b"")
        target = "/" + rest.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")

        task = asyncio.current_task()
        assert task is not None, "an ASGI app always runs in a task"
        deadline = arrival + route.config.request_timeout
        call = _Exchange(
            endpoint, route, scope["method"], target, headers, has_body, receive, task, send, metrics, arrival, deadline
        )
        watcher = loop.create_task(call.watch())
        status = CLIENT_GONE
        try:
            status = await self._serve(call)
        except asyncio.CancelledError:
            # Ours when the watcher saw the client leave; anyone else's (a server shutting down) goes on.
            if not (call.gone and task.uncancel() == 0):
                raise
        finally:
            watcher.cancel()
            metrics.count(status)

    async def _serve(self, call: _Exchange) -> int:
        """Queue, forward, relay; returns the status the client was answered with."""
        dispatcher = call.route.dispatcher
        loop = asyncio.get_running_loop()
        try:
            async with dispatcher.acquire(call.deadline) as worker:
                call.metrics.queue_wait.observe(loop.time() - call.arrival)
                try:
                    return await self._attempt(call, worker)
                except _Refused as refused:
                    if loop.time() >= call.deadline or not _another_ready(dispatcher, worker):
                        return await self._unreachable(call, worker, str(refused))
                    # Holding the first slot while taking the second steers the choice away from this worker.
                    async with dispatcher.acquire(call.deadline) as second:
                        if second == worker:
                            return await self._unreachable(call, worker, str(refused))
                        try:
                            return await self._attempt(call, second)
                        except _Refused as again:
                            return await self._unreachable(call, second, str(again))
        except QueueFull as full:
            retry_after = max(1, math.ceil(full.retry_after))
            message = (
                f"endpoint {call.endpoint} has {dispatcher.queued} requests queued, its limit; "
                f"retry after {retry_after} s"
            )
            return await self._error(call, 429, message, [(b"retry-after", str(retry_after).encode())])
        except DispatchTimeout:
            message = f"no worker of endpoint {call.endpoint} was free within its request_timeout of {call.timeout:g} s"
            return await self._error(call, 504, message)

    async def _attempt(self, call: _Exchange, worker: str) -> int:
        """Send the request to `worker` and relay its answer; raises `_Refused` when nothing could be sent."""
        address = call.route.addresses.get(worker)
        if address is None:
            # The worker was taken out of the table between being handed out and being reached.
            raise _Refused("the worker is gone")
        session = await self._pool(call.endpoint, worker, address)
        try:
            async with asyncio.timeout_at(call.deadline):
                response = await session.request(
                    call.method,
                    # encoded=True: the path and query go to the worker exactly as the client wrote them.
                    URL(address + call.target, encoded=True),
                    headers=CIMultiDict(
                        (name.decode("latin-1"), value.decode("latin-1")) for name, value in call.headers
                    ),
                    data=call if call.has_body else None,
                    allow_redirects=False,
                    compress=None,
                )
        except TimeoutError:
            message = (
                f"worker {worker} of endpoint {call.endpoint} did not answer within the endpoint's "
                f"request_timeout of {call.timeout:g} s"
            )
            return await self._error(call, 504, message, _worker_header(worker))
        except _RETRYABLE as exc:
            reason = _describe(exc)
            self._worker_failed(call.endpoint, worker, reason)
            raise _Refused(reason) from exc
        except aiohttp.ClientError as exc:
            reason = _describe(exc)
            self._worker_failed(call.endpoint, worker, reason)
            return await self._unreachable(call, worker, reason)
        return await self._relay(call, worker, response)

    async def _relay(self, call: _Exchange, worker: str, response: aiohttp.ClientResponse) -> int:
        send = call.send
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": _response_headers(response.raw_headers, worker),
                }
            )
            call.metrics.latency.observe(asyncio.get_running_loop().time() - call.arrival)
            try:
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except aiohttp.ClientError as exc:
                reason = _describe(exc)
                self._worker_failed(call.endpoint, worker, reason)
                log.warning("worker %s of endpoint %s broke off its response: %s", worker, call.endpoint, reason)
                return response.status
            call.finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return response.status
        finally:
            response.release()

    def _worker_failed(self, endpoint: str, worker: str, reason: str) -> None:
        try:
            self.on_worker_error(endpoint, worker, reason)
        except Exception:
            log.exception("on_worker_error hook failed for worker %s of endpoint %s", worker, endpoint)

    async def _unreachable(self, call: _Exchange, worker: str, reason: str) -> int:
        message = f"worker {worker} of endpoint {call.endpoint} could not be reached ({reason}); try again"
        return await self._error(call, 502, message, _worker_header(worker))

    async def _error(self, call: _Exchange, code: int, message: str, headers: _Headers = ()) -> int:
        call.finished = True
        await _reply(call.send, call.metrics, call.arrival, code, message, headers)
        return code

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan, so that the app can be served on its own; websockets are refused (HTTP 403)."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await self.aclose()
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1008})


def _another_ready(dispatcher: EndpointDispatcher, worker: str) -> bool:
    return any(other != worker and dispatcher.is_ready(other) for other in dispatcher.in_flight_by_worker)


def _worker_header(worker: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-dockyard-worker", worker.encode("latin-1"))]


def _response_headers(raw: Iterable[tuple[bytes, bytes]], worker: str) -> list[tuple[bytes, bytes]]:
    # aiohttp keeps header names as the worker wrote them; ASGI wants them lowercased.
    headers = [
        (lower, value)
        for name, value in raw
        if (lower := name.lower()) not in _DROP_RESPONSE and not lower.startswith(b"proxy-")
    ]
    headers.append((b"x-dockyard-worker", worker.encode("latin-1")))
    return headers


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _reply(
    send: Send, metrics: _EndpointMetrics, arrival: float, code: int, message: str, extra: _Headers = ()
) -> None:
    """Answer with the error body every 4xx/5xx uses (errors.py; it names no reason for 502)."""
    body = json.dumps(error_body(code, message, reason="UNAVAILABLE" if code == 502 else "")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    metrics.latency.observe(asyncio.get_running_loop().time() - arrival)
    await send({"type": "http.response.body", "body": body})
