"""GatewayApp over real sockets: a uvicorn-served gateway in front of uvicorn-served fake workers, driven with
httpx. Timing is never asserted; the order of events is, through the workers' flags and the dispatcher's
counters."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
from prometheus_client import CollectorRegistry

from dockyard.core.planes import EndpointConfig
from dockyard.core.status import EndpointStatus, EndpointType
from dockyard.gateway.dispatcher import EndpointDispatcher
from dockyard.gateway.proxy import GatewayApp
from dockyard.gateway.routes import RouteTable
from tests.gateway.upstream import Worker, eventually, free_port, serve

pytestmark = pytest.mark.timeout(60)

ORG, OTHER_ORG = "org-a", "org-b"
KEYS = {"key-a": ORG, "key-b": OTHER_ORG}
EP = str(uuid.uuid4())
KEY_A = {"Authorization": "Bearer key-a"}


async def authenticate(token: str) -> str | None:
    return KEYS.get(token)


class Gateway:
    """A served GatewayApp, its routing table, and the fake workers started for one test."""

    def __init__(
        self,
        stack: AsyncExitStack,
        url: str,
        routes: RouteTable,
        app: GatewayApp,
        registry: CollectorRegistry,
        errors: list[tuple[str, str, str]],
    ) -> None:
        self.stack = stack
        self.url = url
        self.routes = routes
        self.app = app
        self.registry = registry
        self.errors = errors
        self.on_demand: list[str] = []
        self.workers: list[Worker] = []
        self.client = httpx.AsyncClient(base_url=url, headers=KEY_A, timeout=30, trust_env=False)

    def configure(
        self,
        *,
        endpoint_id: str = EP,
        timeout: float = 30.0,
        cap: int = 4,
        queue_limit: int = 100,
        kind: EndpointType = EndpointType.SYNC,
        org: str = ORG,
        status: EndpointStatus = EndpointStatus.RUNNING,
        reason: str = "",
    ) -> None:
        self.routes.upsert(EndpointConfig(endpoint_id, org, kind, timeout, cap, queue_limit, status, reason))

    @property
    def dispatcher(self) -> EndpointDispatcher:
        route = self.routes.get(EP)
        assert route is not None
        return route.dispatcher

    async def start_worker(self) -> tuple[Worker, str]:
        worker = Worker()
        self.workers.append(worker)
        return worker, await self.stack.enter_async_context(serve(worker))

    async def worker(self, worker_id: str) -> Worker:
        """A fake worker, served and marked ready as `worker_id`."""
        worker, url = await self.start_worker()
        self.routes.worker_ready(EP, worker_id, url)
        return worker

    def count(self, code: int, endpoint: str = EP) -> float:
        value = self.registry.get_sample_value(
            "dockyard_gateway_requests_total", {"endpoint": endpoint, "code": str(code)}
        )
        return value or 0.0


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    routes = RouteTable()
    registry = CollectorRegistry()
    errors: list[tuple[str, str, str]] = []

    def on_worker_error(endpoint_id: str, worker_id: str, reason: str) -> None:
        errors.append((endpoint_id, worker_id, reason))

    app = GatewayApp(routes, authenticate, registry, on_worker_error=on_worker_error)
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(serve(app))
        gw = Gateway(stack, url, routes, app, registry, errors)
        routes.on_demand = gw.on_demand.append
        try:
            yield gw
        finally:
            for worker in gw.workers:
                worker.release.set()
            await gw.client.aclose()
            await app.aclose()


def echoed_headers(answer: httpx.Response) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in answer.json()["headers"]:
        headers.setdefault(name, []).append(value)
    return headers


async def test_path_query_and_body_pass_through(gateway: Gateway) -> None:
    gateway.configure()
    await gateway.worker("w1")
    body = json.dumps({"prompt": "hello"}).encode()
    answer = await gateway.client.post(f"/{EP}/v1/chat/completions?stream=false&x=a%2Fb", content=body)
    assert answer.status_code == 200, answer.text
    echo = answer.json()
    assert echo["method"] == "POST"
    assert echo["raw_path"] == "/v1/chat/completions"
    assert echo["query"] == "stream=false&x=a%2Fb"
    assert echo["body"] == body.decode()
    assert answer.headers["x-dockyard-worker"] == "w1"
    assert answer.headers["content-length"] == str(len(answer.content))
    assert "transfer-encoding" not in answer.headers

    for path in (f"/{EP}", f"/{EP}/"):
        root = await gateway.client.get(path)
        assert root.status_code == 200
        assert root.json()["path"] == "/"
        assert root.json()["method"] == "GET"
    encoded = await gateway.client.put(f"/{EP}/files/a%2Fb%20c")
    assert encoded.json()["raw_path"] == "/files/a%2Fb%20c"
    assert encoded.json()["method"] == "PUT"


async def test_authorization_stripped_and_forwarding_headers_set(gateway: Gateway) -> None:
    gateway.configure()
    await gateway.worker("w1")
    answer = await gateway.client.get(
        f"/{EP}/headers",
        headers={
            "X-Custom": "kept",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "10.0.0.1",
            "X-Forwarded-Proto": "spoofed",
        },
    )
    assert answer.status_code == 200
    seen = echoed_headers(answer)
    assert "authorization" not in seen
    assert "proxy-authorization" not in seen
    assert "keep-alive" not in seen
    assert seen["x-custom"] == ["kept"]
    assert seen["x-forwarded-for"] == ["10.0.0.1, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [gateway.url.removeprefix("http://")]
    route = gateway.routes.get(EP)
    assert route is not None
    worker_address = route.addresses["w1"]
    assert seen["host"] == [worker_address.removeprefix("http://")]
    # The worker's own Date and Server are dropped: the gateway's server sets one of each.
    assert len(answer.headers.get_list("date")) == 1
    assert len(answer.headers.get_list("server")) == 1


async def test_missing_or_wrong_key_is_401(gateway: Gateway) -> None:
    gateway.configure()
    worker = await gateway.worker("w1")
    for headers in (
        {},
        {"Authorization": "Basic a2V5LWE6"},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer"},
    ):
        async with httpx.AsyncClient(base_url=gateway.url, headers=headers, trust_env=False) as anonymous:
            answer = await anonymous.get(f"/{EP}/anything")
        assert answer.status_code == 401, headers
        assert answer.json()["code"] == 401
        assert answer.json()["reason"] == "UNAUTHENTICATED"
        assert "Bearer" in answer.json()["message"]
    assert worker.served == 0
    assert gateway.count(401, "unknown") == 4  # a refused request is nobody's endpoint's traffic
    assert gateway.count(401) == 0


async def test_a_bare_key_is_taken_as_the_rest_of_the_api_takes_it(gateway: Gateway) -> None:
    gateway.configure()
    worker = await gateway.worker("w1")
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": "key-a"}, trust_env=False) as bare:
        answer = await bare.get(f"/{EP}/anything")
    assert answer.status_code == 200, answer.text
    assert worker.served == 1


async def test_unknown_other_org_and_async_endpoints_are_404(gateway: Gateway) -> None:
    gateway.configure()
    async_id = str(uuid.uuid4())
    gateway.configure(endpoint_id=async_id, kind=EndpointType.ASYNC)
    worker = await gateway.worker("w1")

    unknown = str(uuid.uuid4())
    answer = await gateway.client.get(f"/{unknown}/x")
    assert answer.status_code == 404
    assert answer.json() == {
        "code": 404,
        "reason": "NOT_FOUND",
        "message": f"endpoint {unknown} not found",
        "details": [],
    }

    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"Authorization": "Bearer key-b"}, trust_env=False
    ) as other:
        foreign = await other.get(f"/{EP}/x")
    assert foreign.status_code == 404
    assert foreign.json()["message"] == f"endpoint {EP} not found"

    job = await gateway.client.post(f"/{async_id}/run", json={"input": {}})
    assert job.status_code == 404
    assert f"/v1/{async_id}/run" in job.json()["message"]
    assert worker.served == 0
    # Another organization's endpoint is counted as an unknown one: its owner's metrics say nothing of it either.
    assert gateway.count(404, "unknown") == 2
    assert gateway.count(404) == 0
    assert gateway.count(404, async_id) == 1


async def test_slow_worker_is_504_at_request_timeout(gateway: Gateway) -> None:
    gateway.configure(timeout=0.3)
    worker = await gateway.worker("w1")
    answer = await gateway.client.get(f"/{EP}/wait")
    assert answer.status_code == 504
    assert answer.json()["reason"] == "DEADLINE_EXCEEDED"
    assert "request_timeout of 0.3 s" in answer.json()["message"]
    assert answer.headers["x-dockyard-worker"] == "w1"
    # The worker is still holding its answer: the gateway gave up on its own deadline.
    assert worker.served == 0
    assert gateway.dispatcher.in_flight == 0
    assert gateway.count(504) == 1


async def test_queued_with_no_ready_worker_is_504(gateway: Gateway) -> None:
    gateway.configure(timeout=0.3, status=EndpointStatus.DEPLOYING, reason="waiting for its first worker")
    answer = await gateway.client.get(f"/{EP}/x")
    assert answer.status_code == 504
    assert "no worker" in answer.json()["message"]
    assert "request_timeout of 0.3 s" in answer.json()["message"]
    # Why it waited, from the table: what the endpoint was doing meanwhile.
    assert "the endpoint is deploying: waiting for its first worker" in answer.json()["message"]
    assert gateway.on_demand == [EP]
    assert gateway.dispatcher.queued == 0


async def test_a_failed_endpoint_is_503_at_once_with_its_reason_and_recovers(gateway: Gateway) -> None:
    reason = "3 workers in a row failed before becoming ready; the last: image not found"
    gateway.configure(timeout=30, status=EndpointStatus.FAILED, reason=reason)
    await gateway.worker("w1")  # even a worker in the table is not tried: the endpoint is failed
    loop = asyncio.get_running_loop()
    began = loop.time()
    answer = await gateway.client.post(f"/{EP}/x", content=b"{}")
    took = loop.time() - began
    print(f"a failed endpoint answered {answer.status_code} in {took * 1000:.0f} ms")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "10"
    body = answer.json()
    assert body["reason"] == "ENDPOINT_FAILED"
    assert reason in body["message"]
    assert f"dockyard endpoints update {EP}" in body["message"]
    assert body["details"] == [{"code": "ENDPOINT_FAILED", "message": reason}]
    assert gateway.workers[0].served == 0
    assert gateway.on_demand == [EP]  # still demand: an endpoint at zero keeps being retried
    assert gateway.count(503) == 1
    # The control plane pushes it un-failed (a PUT, a worker ready): calls go through again by themselves.
    gateway.configure(timeout=30, status=EndpointStatus.UPDATING, reason="rolling")
    answer = await gateway.client.post(f"/{EP}/x", content=b"{}")
    assert answer.status_code == 200, answer.text


async def test_requests_waiting_when_the_endpoint_fails_are_answered_then(gateway: Gateway) -> None:
    gateway.configure(timeout=30)
    waiting = [asyncio.create_task(gateway.client.get(f"/{EP}/x")) for _ in range(2)]
    await eventually(lambda: gateway.dispatcher.queued == 2)
    gateway.configure(timeout=30, status=EndpointStatus.FAILED, reason="image not found")
    for answer in await asyncio.wait_for(asyncio.gather(*waiting), 10):  # not their 30 s deadline
        assert answer.status_code == 503
        assert answer.json()["reason"] == "ENDPOINT_FAILED"
        assert "image not found" in answer.json()["message"]
        assert answer.headers["retry-after"] == "10"
    assert gateway.dispatcher.queued == 0
    assert gateway.count(503) == 2


async def test_full_queue_is_429_with_retry_after_while_others_wait(gateway: Gateway) -> None:
    gateway.configure(cap=1, queue_limit=1)
    worker = await gateway.worker("w1")
    first = asyncio.create_task(gateway.client.get(f"/{EP}/wait"))
    await eventually(lambda: worker.current == 1)
    second = asyncio.create_task(gateway.client.get(f"/{EP}/wait"))
    await eventually(lambda: gateway.dispatcher.queued == 1)

    refused = await gateway.client.get(f"/{EP}/wait")
    assert refused.status_code == 429
    assert refused.json()["reason"] == "RESOURCE_EXHAUSTED"
    assert int(refused.headers["retry-after"]) >= 1
    assert not first.done()
    assert not second.done()

    worker.release.set()
    assert (await first).status_code == 200
    assert (await second).status_code == 200
    assert worker.peak == 1
    assert gateway.count(429) == 1
    assert gateway.count(200) == 2


async def test_cap_per_worker_holds_under_30_concurrent_requests(gateway: Gateway) -> None:
    gateway.configure(cap=2)
    a = await gateway.worker("a")
    b = await gateway.worker("b")
    answers = await asyncio.gather(*(gateway.client.get(f"/{EP}/sleep?s=0.05") for _ in range(30)))
    assert [answer.status_code for answer in answers] == [200] * 30
    assert {answer.headers["x-dockyard-worker"] for answer in answers} == {"a", "b"}
    assert a.peak <= 2
    assert b.peak <= 2
    assert a.served + b.served == 30
    assert a.served > 0
    assert b.served > 0
    assert gateway.dispatcher.in_flight == 0


async def test_request_held_until_a_worker_is_ready(gateway: Gateway) -> None:
    gateway.configure()
    pending = asyncio.create_task(gateway.client.get(f"/{EP}/x"))
    await eventually(lambda: gateway.dispatcher.queued == 1)
    assert gateway.on_demand == [EP]
    _, url = await gateway.start_worker()
    assert not pending.done()
    gateway.routes.worker_ready(EP, "late", url)
    answer = await pending
    assert answer.status_code == 200
    assert answer.headers["x-dockyard-worker"] == "late"


async def test_streamed_response_arrives_before_the_worker_finishes(gateway: Gateway) -> None:
    gateway.configure()
    worker = await gateway.worker("w1")
    async with gateway.client.stream("GET", f"/{EP}/stream?n=3") as answer:
        assert answer.status_code == 200
        assert "content-length" not in answer.headers
        chunks = answer.aiter_raw()
        first = await anext(chunks)
        assert first == b"chunk-0\n"
        assert not worker.stream_done
        worker.release.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest == b"chunk-1\nchunk-2\n"
    assert worker.stream_done


async def test_a_stream_may_outlive_the_request_timeout(gateway: Gateway) -> None:
    timeout = 0.3
    gateway.configure(timeout=timeout)
    worker = await gateway.worker("w1")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with gateway.client.stream("GET", f"/{EP}/stream?n=2") as answer:
        chunks = answer.aiter_raw()
        assert await anext(chunks) == b"chunk-0\n"
        # The deadline only bounds the wait for the response headers; the body keeps flowing after it.
        await asyncio.sleep(max(0.0, started + timeout + 0.2 - loop.time()))
        worker.release.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest == b"chunk-1\n"
    assert loop.time() > started + timeout


async def test_request_body_streams_to_the_worker_as_it_arrives(gateway: Gateway) -> None:
    gateway.configure()
    worker = await gateway.worker("w1")
    part = b"x" * 100_000

    async def upload() -> AsyncIterator[bytes]:
        for index in range(1, 4):
            yield part
            # The next part goes only once the worker holds this one: a gateway that buffered the whole body
            # before forwarding it would never get here.
            await eventually(lambda sent=index * len(part): worker.received >= sent)

    answer = await gateway.client.post(f"/{EP}/upload", content=upload())
    assert answer.status_code == 200
    assert answer.json()["size"] == 3 * len(part)
    assert len(answer.json()["chunks"]) >= 3


async def test_server_sent_events_pass_through(gateway: Gateway) -> None:
    gateway.configure()
    worker = await gateway.worker("w1")
    async with gateway.client.stream("GET", f"/{EP}/sse?n=3", headers={"Accept": "text/event-stream"}) as answer:
        assert answer.headers["content-type"] == "text/event-stream"
        assert answer.headers["transfer-encoding"] == "chunked"
        lines = answer.aiter_lines()
        assert await anext(lines) == "data: event-0"
        assert not worker.stream_done
        worker.release.set()
        rest = [line async for line in lines]
    assert [line for line in rest if line] == ["data: event-1", "data: event-2"]


async def test_client_leaving_mid_stream_frees_its_slot(gateway: Gateway) -> None:
    gateway.configure()
    worker = await gateway.worker("w1")
    async with gateway.client.stream("GET", f"/{EP}/stream?n=3") as answer:
        assert await anext(answer.aiter_raw()) == b"chunk-0\n"
        assert gateway.dispatcher.in_flight == 1
    await eventually(lambda: gateway.dispatcher.in_flight == 0)
    await eventually(lambda: gateway.count(499) == 1)
    assert not worker.stream_done
    assert gateway.dispatcher.queued == 0


async def test_client_leaving_while_queued_frees_its_place(gateway: Gateway) -> None:
    gateway.configure()
    pending = asyncio.create_task(gateway.client.post(f"/{EP}/x", content=b"{}"))
    await eventually(lambda: gateway.dispatcher.queued == 1)
    pending.cancel()
    await eventually(lambda: gateway.dispatcher.queued == 0)
    await eventually(lambda: gateway.count(499) == 1)
    worker = await gateway.worker("w1")
    # Dispatch is synchronous in worker_ready: a request still queued would hold a slot now.
    assert gateway.dispatcher.in_flight == 0
    assert worker.served == 0


async def test_dead_worker_is_502_and_reported(gateway: Gateway) -> None:
    gateway.configure()
    gateway.routes.worker_ready(EP, "dead", f"http://127.0.0.1:{free_port()}")
    answer = await gateway.client.get(f"/{EP}/x")
    assert answer.status_code == 502
    assert answer.json()["reason"] == "UNAVAILABLE"
    assert "could not be reached" in answer.json()["message"]
    assert answer.headers["x-dockyard-worker"] == "dead"
    assert [(endpoint, worker) for endpoint, worker, _ in gateway.errors] == [(EP, "dead")]
    assert "cannot connect" in gateway.errors[0][2]
    assert "Connection refused" in gateway.errors[0][2]
    assert gateway.dispatcher.in_flight == 0


async def test_refused_connection_is_retried_on_another_worker(gateway: Gateway) -> None:
    gateway.configure()
    # Ready first, so it is the first choice while both are idle.
    gateway.routes.worker_ready(EP, "dead", f"http://127.0.0.1:{free_port()}")
    live = await gateway.worker("live")
    answer = await gateway.client.post(f"/{EP}/generate", content=b'{"n": 1}')
    assert answer.status_code == 200
    assert answer.headers["x-dockyard-worker"] == "live"
    assert answer.json()["body"] == '{"n": 1}'
    assert live.served == 1
    assert [(endpoint, worker) for endpoint, worker, _ in gateway.errors] == [(EP, "dead")]
    assert gateway.dispatcher.in_flight == 0


async def test_connection_dropped_after_sending_is_not_retried(gateway: Gateway) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Read the request first: a worker that hangs up at once may do so before the connection is made, which
        # is a refusal (nothing sent, so retried elsewhere), not what this test is about.
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    dropper = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = dropper.sockets[0].getsockname()[1]
    try:
        gateway.configure()
        gateway.routes.worker_ready(EP, "dropper", f"http://127.0.0.1:{port}")
        live = await gateway.worker("live")
        answer = await gateway.client.post(f"/{EP}/charge", content=b'{"amount": 5}')
    finally:
        dropper.close()
        await dropper.wait_closed()
    # The request may have reached the worker before it hung up, so it is not sent again.
    assert answer.status_code == 502
    assert answer.headers["x-dockyard-worker"] == "dropper"
    assert live.served == 0
    assert [worker for _, worker, _ in gateway.errors] == ["dropper"]


async def test_metrics_are_recorded_per_endpoint(gateway: Gateway) -> None:
    gateway.configure()
    await gateway.worker("w1")
    assert (await gateway.client.get(f"/{EP}/x")).status_code == 200
    registry = gateway.registry
    assert gateway.count(200) == 1
    assert registry.get_sample_value("dockyard_gateway_request_seconds_count", {"endpoint": EP}) == 1
    assert registry.get_sample_value("dockyard_gateway_queue_wait_seconds_count", {"endpoint": EP}) == 1
    # A second app on the same registry shares its metrics rather than registering them twice.
    second = GatewayApp(gateway.routes, authenticate, registry)
    async with serve(second) as url, httpx.AsyncClient(base_url=url, headers=KEY_A, trust_env=False) as c:
        assert (await c.get(f"/{EP}/x")).status_code == 200
    await second.aclose()
    assert gateway.count(200) == 2


async def test_connections_to_a_worker_that_left_are_closed(gateway: Gateway) -> None:
    open_connections = 0

    async def keepalive_worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A bare HTTP/1.1 worker that keeps its connection open between requests and counts it."""
        nonlocal open_connections
        open_connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            open_connections -= 1
            writer.close()

    bare = await asyncio.start_server(keepalive_worker, "127.0.0.1", 0)
    try:
        gateway.configure()
        gateway.routes.worker_ready(EP, "old", f"http://127.0.0.1:{bare.sockets[0].getsockname()[1]}")
        assert (await gateway.client.get(f"/{EP}/x")).headers["x-dockyard-worker"] == "old"
        assert open_connections == 1  # kept alive for the next request
        gateway.routes.worker_gone(EP, "old")
        await gateway.worker("new")
        assert (await gateway.client.get(f"/{EP}/x")).headers["x-dockyard-worker"] == "new"
        # The new worker's first request closed the pooled connection to the one that left.
        await eventually(lambda: open_connections == 0)
    finally:
        bare.close()
        await bare.wait_closed()
