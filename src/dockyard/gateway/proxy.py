"""The sync gateway: `{gateway}/{endpoint_id}/{path}` proxied to one ready worker, streaming both ways.

`GatewayApp` is a raw ASGI app, kept off FastAPI because it is the hot path (docs/architecture.md): a request
costs one header scan, one `await authenticate(token)`, a dictionary lookup in the `RouteTable`, a slot from
the endpoint's `EndpointDispatcher` and one exchange over a shared connection pool; no database, no pydantic.

1. Arrival. The path's first segment is the endpoint id; the rest, percent-encoding and query string as the
   client sent them, is the path on the worker (`/{id}` alone is `/`). A missing or wrong key (`Authorization:
   Bearer <key>` or the bare key, as the rest of the API takes it) is 401; an endpoint that is unknown or belongs
   to another organization is 404, never 403, and the two are answered alike in every respect (status, body,
   headers, the same work first, and the metrics' `unknown` label, as every refused request's is), so that
   existence does not leak; an async endpoint is 404 too, saying that its jobs go to `/v1/{id}/run`. An endpoint
   the control plane marked `failed` (its status and reason reach the table with its config) is answered at once:
   503 with `Retry-After` and the endpoint's reason, rather than a wait for a worker that is not coming (requests
   already waiting when it fails get the same answer then); the request still counts as demand, and calls go
   through again as soon as the table holds it un-failed.
2. Queueing. The deadline is the arrival time plus the endpoint's `request_timeout`. `dispatcher.acquire`
   hands out the least-loaded ready worker with a free slot, or queues the request: a full queue is 429 with
   `Retry-After`, the deadline passing in the queue is 504 (saying what the endpoint was doing meanwhile). The
   slot is held until the response body has been sent or the client has gone, and released by the dispatcher's
   context manager whatever ends it.
3. Forwarding. The deadline holds until the worker's response headers arrive: a worker that has not begun
   to answer by then gets 504. After the headers the body streams for as long as the worker and the client
   keep it going, so a server-sent-event or token stream is never cut at `request_timeout`; a client that
   wants a bound on the whole exchange sets its own timeout, and leaving ends the stream.
4. Streaming. The request body goes up as it arrives (chunked when the client sent no `Content-Length`); the
   response comes down chunk by chunk as the worker writes it, with its `Content-Length` when it gave one.
   Hop-by-hop headers are dropped both ways, and so is the client's `Authorization`: a user's Dockyard key
   never reaches a worker. The worker sees `X-Forwarded-For` (appended to), `-Proto` and `-Host`; the
   client sees `X-Dockyard-Worker`, the worker that answered.

Client disconnects. The request's body and the watch for its client leaving are gateway/exchange.py's: a
client that leaves before its answer is complete cancels the request's task, which leaves the queue or drops
the upstream exchange, and the slot is released at once (counted as status 499, the nginx convention).

Worker failures. The gateway does not judge health (the prober does); it reports what it saw through
`on_worker_error(endpoint_id, worker_id, reason)` so that the prober can re-check that worker at once. A
worker that cannot be reached before its response headers is 502. Only a failed connect is retried, once, on
another ready worker while the deadline allows: nothing was sent, so even a POST is safe to send again;
anything that failed after the connection was made is never retried (the worker may have acted on it). The
retry takes its second slot while still holding the first, which steers the least-loaded choice away from
the worker that refused; if the dispatcher can only offer that worker again, the answer is 502. A failure
after the response headers cuts the response short, as the worker's own failure would.

The upstream client is gateway/upstream.py's keep-alive pool, one per worker, made on the worker's first
request and closed once the worker has left the table (or by `aclose()`); that module says why it is not a
general-purpose client. Nothing is added to the request but `Host` and the forwarding headers, and nothing is
decoded on the way back: bodies pass through as the worker wrote them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote

from prometheus_client import CollectorRegistry
from starlette.types import Receive, Scope, Send

from dockyard.core.callers import presented_key
from dockyard.core.status import EndpointStatus, EndpointType
from dockyard.errors import error_body
from dockyard.gateway.dispatcher import DispatchTimeout, EndpointDispatcher, QueueFull, TurnedAway
from dockyard.gateway.exchange import Exchange
from dockyard.gateway.metrics import EndpointMetrics, request_metrics
from dockyard.gateway.routes import RouteTable
from dockyard.gateway.upstream import ConnectFailed, UpstreamError, UpstreamPool, UpstreamResponse

log = logging.getLogger(__name__)

Authenticate = Callable[[str], Awaitable[str | None]]
WorkerErrorHook = Callable[[str, str, str], None]
_Headers = Iterable[tuple[bytes, bytes]]

CLIENT_GONE = 499  # the status counted for a request whose client left before its answer was complete

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
_UNKNOWN = "unknown"  # the endpoint label of requests refused before reaching an endpoint of their caller
# A failed endpoint's answer: the error's reason (the blocking code services/waits.py gives it too), and the
# seconds a client is told to wait: a few reconcile passes, long enough for a retry or an update to show.
FAILED_REASON = "ENDPOINT_FAILED"
FAILED_RETRY_AFTER = 10


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
        self._metrics = request_metrics(registry)
        self._connect_timeout = connect_timeout
        self._keepalive_expiry = keepalive_expiry
        self._pools: dict[str, tuple[str, UpstreamPool]] = {}  # worker -> its endpoint, its pool

    async def aclose(self) -> None:
        """Close the upstream connections (idempotent)."""
        pools, self._pools = self._pools, {}
        for _, pool in pools.values():
            pool.aclose()

    def _pool(self, endpoint: str, worker: str, address: str) -> UpstreamPool:
        """`worker`'s own pool. Making one also closes the pools of workers the table no longer holds at their
        address, so pools come and go with workers and only a worker's first request pays for the pruning."""
        entry = self._pools.get(worker)
        if entry is not None and entry[1].address == address:
            return entry[1]
        pool = UpstreamPool(address, connect_timeout=self._connect_timeout, keepalive_expiry=self._keepalive_expiry)
        self._pools[worker] = (endpoint, pool)
        if entry is not None:
            entry[1].aclose()
        for other, (other_endpoint, other_pool) in list(self._pools.items()):
            route = self.routes.get(other_endpoint)
            if route is None or route.addresses.get(other) != other_pool.address:
                del self._pools[other]
                other_pool.aclose()
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
        refused = self._metrics[_UNKNOWN]

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
                has_body = value != b"0"
            headers.append((name, value))

        token = presented_key(authorization.decode("latin-1"))
        org = await self.authenticate(token) if token else None
        if org is None:
            message = "missing or invalid API key; send the header Authorization: Bearer <api key>"
            await _reply(send, refused, arrival, 401, message)
            return
        if route is None or route.config.org_id != org:
            await _reply(send, refused, arrival, 404, f"endpoint {endpoint} not found")
            return
        metrics = self._metrics[endpoint]
        if route.config.type is EndpointType.ASYNC:
            message = f"endpoint {endpoint} is an async endpoint; submit jobs with POST /v1/{endpoint}/run"
            await _reply(send, metrics, arrival, 404, message)
            return
        if route.config.status is EndpointStatus.FAILED:
            self.routes.demand(endpoint)  # still demand: an endpoint at zero workers keeps being retried
            message, extra, details = _failure(endpoint, route.config.reason)
            await _reply(send, metrics, arrival, 503, message, extra, reason=FAILED_REASON, details=details)
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
        method: str = scope["method"]
        call = Exchange(endpoint, route, method, target, headers, receive, task, send, metrics, arrival, deadline)
        status = CLIENT_GONE
        try:
            if await call.read_body(has_body):
                status = await self._serve(call)
        except asyncio.CancelledError:
            # Ours when the watcher saw the client leave; anyone else's (a server shutting down) goes on.
            if not (call.gone and task.uncancel() == 0):
                raise
        finally:
            call.close()
            metrics.count(status)

    async def _serve(self, call: Exchange) -> int:
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
        except TurnedAway:
            call.finished = True
            message, extra, details = _failure(call.endpoint, call.route.config.reason)
            await _reply(
                call.send,
                call.metrics,
                call.arrival,
                503,
                message,
                extra,
                counted=False,
                reason=FAILED_REASON,
                details=details,
            )
            return 503
        except DispatchTimeout:
            config = call.route.config
            message = (
                f"no worker of endpoint {call.endpoint} was free within its request_timeout of {call.timeout:g} s; "
                f"the endpoint is {config.status.value}: {config.reason or 'no reason recorded'}. "
                f"`dockyard endpoints get {call.endpoint}` says why it waits"
            )
            return await self._error(call, 504, message)

    async def _attempt(self, call: Exchange, worker: str) -> int:
        """Send the request to `worker` and relay its answer; raises `_Refused` when nothing could be sent."""
        address = call.route.addresses.get(worker)
        if address is None:
            # The worker was taken out of the table between being handed out and being reached.
            raise _Refused("the worker is gone")
        pool = self._pool(call.endpoint, worker, address)
        try:
            response = await pool.request(
                call.method, call.target, call.headers, call if call.streaming else call.body, call.deadline
            )
        except TimeoutError:
            message = (
                f"worker {worker} of endpoint {call.endpoint} did not answer within the endpoint's "
                f"request_timeout of {call.timeout:g} s"
            )
            return await self._error(call, 504, message, _worker_header(worker))
        except ConnectFailed as exc:
            self._worker_failed(call.endpoint, worker, str(exc))
            raise _Refused(str(exc)) from exc
        except UpstreamError as exc:
            self._worker_failed(call.endpoint, worker, str(exc))
            return await self._unreachable(call, worker, str(exc))
        return await self._relay(call, worker, response)

    async def _relay(self, call: Exchange, worker: str, response: UpstreamResponse) -> int:
        """Send the worker's answer on. Its last bytes go with the final body message, so an answer that came
        whole is one message to the client."""
        send = call.send
        try:
            headers = _response_headers(response.headers, worker)
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            call.metrics.latency.observe(asyncio.get_running_loop().time() - call.arrival)
            while True:
                try:
                    chunk, last = await response.next_chunk()
                except UpstreamError as exc:
                    self._worker_failed(call.endpoint, worker, str(exc))
                    log.warning("worker %s of endpoint %s broke off its response: %s", worker, call.endpoint, exc)
                    return response.status
                if last:
                    call.finished = True
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    return response.status
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            response.release()

    def _worker_failed(self, endpoint: str, worker: str, reason: str) -> None:
        try:
            self.on_worker_error(endpoint, worker, reason)
        except Exception:
            log.exception("on_worker_error hook failed for worker %s of endpoint %s", worker, endpoint)

    async def _unreachable(self, call: Exchange, worker: str, reason: str) -> int:
        message = f"worker {worker} of endpoint {call.endpoint} could not be reached ({reason}); try again"
        return await self._error(call, 502, message, _worker_header(worker))

    async def _error(self, call: Exchange, code: int, message: str, headers: _Headers = ()) -> int:
        call.finished = True
        await _reply(call.send, call.metrics, call.arrival, code, message, headers, counted=False)
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


def _failure(endpoint: str, reason: str) -> tuple[str, _Headers, list[dict[str, Any]]]:
    """A failed endpoint's 503: its message, its `Retry-After` and its details (the endpoint's reason)."""
    message = (
        f"endpoint {endpoint} failed: {reason or 'no reason recorded'}. Fix the cause and update it "
        f"(`dockyard endpoints update {endpoint}`); it also retries by itself. Retry after {FAILED_RETRY_AFTER} s"
    )
    return message, [(b"retry-after", str(FAILED_RETRY_AFTER).encode())], [{"code": FAILED_REASON, "message": reason}]


def _another_ready(dispatcher: EndpointDispatcher, worker: str) -> bool:
    return any(other != worker and dispatcher.is_ready(other) for other in dispatcher.in_flight_by_worker)


def _worker_header(worker: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-dockyard-worker", worker.encode("latin-1"))]


def _response_headers(headers: Iterable[tuple[bytes, bytes]], worker: str) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in headers if name not in _DROP_RESPONSE and not name.startswith(b"proxy-")]
    kept.append((b"x-dockyard-worker", worker.encode("latin-1")))
    return kept


async def _reply(
    send: Send,
    metrics: EndpointMetrics,
    arrival: float,
    code: int,
    message: str,
    extra: _Headers = (),
    *,
    counted: bool = True,
    reason: str = "",
    details: Sequence[dict[str, Any]] = (),
) -> None:
    """Answer with the error body every 4xx/5xx uses (errors.py; it names no reason for 502, so that one is given
    here, as is a failed endpoint's). `counted`: False when the caller counts the request itself."""
    body = json.dumps(error_body(code, message, details, reason or ("UNAVAILABLE" if code == 502 else ""))).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    metrics.latency.observe(asyncio.get_running_loop().time() - arrival)
    await send({"type": "http.response.body", "body": body})
    if counted:
        metrics.count(code)
