"""The health prober against a real HTTP server on loopback: a starting worker is pushed ready into the routing
table before the reconciler's callback runs, a ready one that keeps failing is taken out with the reason, and
`check_now` probes at once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dockyard.config import Settings
from dockyard.control.prober import HealthProber
from dockyard.core.planes import EndpointConfig
from dockyard.core.status import EndpointType
from dockyard.db.fence import CURRENT_FENCE, Fence
from dockyard.gateway.routes import RouteTable

ENDPOINT = "ep-1"
WORKER = "wk-1"
DEADLINE = 10.0


class HealthServer:
    """Answers every request with `status`; counts the requests it saw."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0
        self.server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.hits += 1
        writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    health = HealthServer()
    yield health
    await health.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def table() -> RouteTable:
    routes = RouteTable()
    routes.configure(
        [
            EndpointConfig(
                ENDPOINT, "org", EndpointType.SYNC, request_timeout=5, max_concurrent_per_worker=1, queue_limit=10
            )
        ]
    )
    return routes


def ready_in(routes: RouteTable) -> bool:
    route = routes.get(ENDPOINT)
    assert route is not None
    return route.dispatcher.is_ready(WORKER)


async def until(condition: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


class Recorder:
    """The reconciler's side of the prober: what each callback saw when it ran."""

    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes
        self.ready = asyncio.Event()
        self.ready_was_routed: bool | None = None
        self.unhealthy: list[str] = []
        self.unhealthy_seen = asyncio.Event()
        self.probes: list[str] = []

    async def on_ready(self, endpoint_id: str, worker_id: str) -> None:
        assert (endpoint_id, worker_id) == (ENDPOINT, WORKER)
        self.ready_was_routed = ready_in(self.routes)
        self.ready.set()

    async def on_unhealthy(self, endpoint_id: str, worker_id: str, reason: str) -> None:
        assert (endpoint_id, worker_id) == (ENDPOINT, WORKER)
        self.unhealthy.append(reason)
        self.unhealthy_seen.set()

    async def on_probe(self, endpoint_id: str, worker_id: str, result: str) -> None:
        assert (endpoint_id, worker_id) == (ENDPOINT, WORKER)
        self.probes.append(result)


def prober_for(tmp_path: Path, routes: RouteTable, recorder: Recorder, **overrides: float) -> HealthProber:
    settings = Settings(data_dir=tmp_path, **overrides)
    return HealthProber(
        routes, settings, on_ready=recorder.on_ready, on_unhealthy=recorder.on_unhealthy, on_probe=recorder.on_probe
    )


async def test_a_starting_worker_is_routed_ready_before_on_ready_runs(tmp_path: Path, server: HealthServer) -> None:
    routes, port = table(), free_port()
    recorder = Recorder(routes)
    prober = prober_for(tmp_path, routes, recorder, worker_probe_interval=0.02)
    address = f"http://127.0.0.1:{port}"
    try:
        prober.watch(ENDPOINT, WORKER, address, f"{address}/health", ready=False)
        await asyncio.sleep(0.2)  # nothing listens yet: refusals are normal while a worker starts
        assert not recorder.ready.is_set()
        assert not ready_in(routes)
        await server.start(port)
        await asyncio.wait_for(recorder.ready.wait(), DEADLINE)
        assert recorder.ready_was_routed is True
        route = routes.get(ENDPOINT)
        assert route is not None
        assert route.addresses[WORKER] == address
        assert prober.is_ready(WORKER)
    finally:
        await prober.close()


async def test_a_ready_worker_failing_its_checks_is_taken_out_with_the_reason(
    tmp_path: Path, server: HealthServer
) -> None:
    routes = table()
    recorder = Recorder(routes)
    prober = prober_for(tmp_path, routes, recorder, health_check_interval=0.05, health_check_failures=3)
    port = await server.start()
    address = f"http://127.0.0.1:{port}"
    try:
        prober.watch(ENDPOINT, WORKER, address, f"{address}/health", ready=True, check="GET /health on port 8080")
        assert ready_in(routes)  # a worker the database says is ready is routed at once
        await asyncio.sleep(0.3)
        assert ready_in(routes)
        assert not recorder.unhealthy
        assert server.hits >= 2
        server.status = 503
        await asyncio.wait_for(recorder.unhealthy_seen.wait(), DEADLINE)
        assert recorder.unhealthy == ["health check GET /health on port 8080 failed 3 times in a row: status 503"]
        assert not ready_in(routes)
        route = routes.get(ENDPOINT)
        assert route is not None
        assert WORKER not in route.addresses
        # A failed worker stays failed: watching it again (a pass that loaded it before the failure) does nothing.
        prober.watch(ENDPOINT, WORKER, address, f"{address}/health", ready=True)
        assert not ready_in(routes)
        prober.unwatch(WORKER)
        assert WORKER not in prober.watching()
    finally:
        await prober.close()


async def test_check_now_probes_at_once(tmp_path: Path, server: HealthServer) -> None:
    routes = table()
    recorder = Recorder(routes)
    # Scheduled probes are far apart, so only check_now can explain what happens here.
    prober = prober_for(
        tmp_path, routes, recorder, health_check_interval=600, worker_probe_interval=600, health_check_failures=2
    )
    port = await server.start()
    address = f"http://127.0.0.1:{port}"
    try:
        server.status = 503
        prober.watch(ENDPOINT, WORKER, address, f"{address}/health", ready=False)
        await asyncio.sleep(0.1)
        assert await prober.check_now(ENDPOINT, WORKER) is False
        assert not ready_in(routes)
        server.status = 200
        assert await prober.check_now(ENDPOINT, WORKER) is True
        assert ready_in(routes)
        await asyncio.wait_for(recorder.ready.wait(), DEADLINE)

        server.status = 500
        assert await prober.check_now(ENDPOINT, WORKER) is False
        assert ready_in(routes)
        assert not recorder.unhealthy
        assert await prober.check_now(ENDPOINT, WORKER) is False
        await asyncio.wait_for(recorder.unhealthy_seen.wait(), DEADLINE)
        assert recorder.unhealthy[0].endswith("failed 2 times in a row: status 500")
        assert not ready_in(routes)
        assert await prober.check_now(ENDPOINT, "unknown-worker") is False
    finally:
        await prober.close()


async def test_recheck_probes_in_the_background_without_waiting(tmp_path: Path, server: HealthServer) -> None:
    routes = table()
    recorder = Recorder(routes)
    prober = prober_for(tmp_path, routes, recorder, health_check_interval=600, health_check_failures=1)
    port = await server.start()
    address = f"http://127.0.0.1:{port}"
    try:
        prober.watch(ENDPOINT, WORKER, address, f"{address}/health", ready=True)
        server.status = 502
        prober.recheck(ENDPOINT, WORKER, "connection reset")  # what the proxy's announcement calls; returns at once
        assert ready_in(routes)
        assert server.hits == 0
        await asyncio.wait_for(recorder.unhealthy_seen.wait(), DEADLINE)
        assert server.hits == 1
        assert recorder.unhealthy[0].endswith("failed once: status 502")
        assert not ready_in(routes)
    finally:
        await prober.close()


async def test_a_starting_worker_that_never_answers_200_is_failed_after_its_probe_bound(
    tmp_path: Path, server: HealthServer
) -> None:
    """A refused port, then a 404: each new result is reported at once, and the worker is failed after
    `health_startup_failures` checks `health_check_interval` apart, naming the check and the last result."""
    routes, port = table(), free_port()
    recorder = Recorder(routes)
    prober = prober_for(
        tmp_path, routes, recorder, worker_probe_interval=0.02, health_check_interval=0.1, health_startup_failures=4
    )
    address = f"http://127.0.0.1:{port}"
    try:
        prober.watch(ENDPOINT, WORKER, address, f"{address}/health", ready=False, check="GET /health on port 8080")
        await until(lambda: bool(recorder.probes))
        assert recorder.probes == ["connection refused"]
        server.status = 404
        await server.start(port)
        await asyncio.wait_for(recorder.unhealthy_seen.wait(), DEADLINE)
        assert recorder.probes[-1] == "status 404"
        assert recorder.unhealthy == [
            "health check GET /health on port 8080 failed 4 times in 0.4 s after its container started: status 404; "
            f"set the port and path it serves with `dockyard endpoints update {ENDPOINT} --health-port PORT "
            f"--health-path PATH`, or read its output with `dockyard endpoints logs {ENDPOINT}`"
        ]
        assert not ready_in(routes)
        hits = server.hits
        await asyncio.sleep(0.1)
        assert server.hits == hits  # a failed worker is probed no more
    finally:
        await prober.close()


async def test_a_starting_worker_answering_in_time_is_not_failed(tmp_path: Path, server: HealthServer) -> None:
    routes, port = table(), free_port()
    recorder = Recorder(routes)
    prober = prober_for(
        tmp_path, routes, recorder, worker_probe_interval=0.02, health_check_interval=0.1, health_startup_failures=3
    )
    address = f"http://127.0.0.1:{port}"
    try:
        prober.watch(ENDPOINT, WORKER, address, f"{address}/health", ready=False)
        await asyncio.sleep(0.15)  # one check counted of the three
        await server.start(port)
        await asyncio.wait_for(recorder.ready.wait(), DEADLINE)
        assert recorder.unhealthy == []
        assert recorder.probes[0] == "connection refused"
        assert recorder.probes[-1] == "ok"
    finally:
        await prober.close()


async def test_callbacks_run_under_the_fence_of_the_latest_watch_whoever_asked_for_the_probe(
    tmp_path: Path, server: HealthServer
) -> None:
    """The reconciler's callbacks write under the fence its pass ran with (db/fence.py): a recheck asked for by
    the proxy, outside any pass, and probes begun under a lease since lost both use the latest pass's fence."""
    routes = table()
    fences: list[Fence | None] = []

    async def on_probe(endpoint_id: str, worker_id: str, result: str) -> None:
        fences.append(CURRENT_FENCE.get())

    async def ignored(*_: str) -> None:
        return None

    settings = Settings(data_dir=tmp_path, health_check_interval=3600.0)
    prober = HealthProber(routes, settings, on_ready=ignored, on_unhealthy=ignored, on_probe=on_probe)
    address = f"http://127.0.0.1:{await server.start()}"
    old, new = Fence("reconcilers", "a", 1), Fence("reconcilers", "a", 2)

    async def watch_under(fence: Fence) -> None:
        CURRENT_FENCE.set(fence)  # this task's own context, as a pass's
        prober.watch(ENDPOINT, WORKER, address, f"{address}/health", ready=True)

    try:
        await asyncio.create_task(watch_under(old))
        server.status = 500  # a changed result is reported through on_probe
        prober.recheck(ENDPOINT, WORKER, "connection refused")
        await until(lambda: len(fences) == 1)
        await asyncio.create_task(watch_under(new))
        server.status = 200
        prober.recheck(ENDPOINT, WORKER, "connection refused")
        await until(lambda: len(fences) == 2)
        assert CURRENT_FENCE.get() is None
        assert fences == [old, new]
    finally:
        await prober.close()
