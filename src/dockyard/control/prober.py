"""The health prober: pushes endpoint workers' readiness into the gateway's routing table as it happens.

Readiness is pushed, never discovered by slow polling (docs/architecture.md). The endpoint reconciler owns
one prober and tells it which workers to watch; the prober holds no database session and writes nothing
itself: it calls back into the reconciler, which records what it saw with guarded writes.

Contract:
- `watch(endpoint_id, worker_id, address, health_url, ready=False)`: a starting worker is probed every
  `worker_probe_interval` until its health check answers 200 (a refused connection is normal while it
  starts). Then, at once and before any database write, `routes.worker_ready(...)`, and `on_ready` is called
  (in a task of its own) to record it. While it starts, a failing check is counted once per
  `health_check_interval`: after `health_startup_failures` such counts it is failed through `on_unhealthy`
  ("health check GET /health on port 8080 failed 12 times in 60 s after its container started: status 404;
  set ..."), so a wrong port or path answers in about a minute, not at the startup timeout.
- `on_probe(endpoint_id, worker_id, result)` is called (in a task of its own) with a probe's result when it
  differs from the last one reported and at each count while starting: "ok", "connection refused",
  "status 404", "timeout", "connection closed" (`probe_result`). The texts name no address: they are shown
  to the tenant.
- `watch(..., ready=True)`: a worker the database already says is ready (a restarted server rebuilding its
  table) is pushed ready at once, without waiting for a probe; if it is not really ready, the regular probes
  fail it like any other. Requests keep flowing to it meanwhile, which the proxy's own `check_now` on a
  connection error shortens.
- A ready worker is probed every `health_check_interval`; after `health_check_failures` failures in a row it
  is taken out of the table (`routes.worker_gone`) and `on_unhealthy` is called with the reason. Probing
  then stops; the worker stays known as failed (a second `watch` of it does nothing) until `unwatch`.
- `watch` of a worker already watched at the same address does nothing, so the reconciler may call it every
  pass; `unwatch(worker_id)` forgets it and stops its probes.
- `check_now(endpoint_id, worker_id)` probes at once and counts the result like a scheduled probe;
  `recheck(endpoint_id, worker_id, reason)` does the same in a task of its own, for callers that must not wait
  (the proxy after a connection error, announced on the planes' channel, core/planes.py).

Every probe goes through one shared `httpx.AsyncClient` with `health_check_timeout`. Tasks start lazily on the
running loop (the prober may be built before it); `close()` cancels them and closes the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from dockyard.config import Settings
from dockyard.gateway.routes import RouteTable

log = logging.getLogger(__name__)

OnReady = Callable[[str, str], Awaitable[None]]
OnUnhealthy = Callable[[str, str, str], Awaitable[None]]
OnProbe = Callable[[str, str, str], Awaitable[None]]
OK = "ok"


def probe_result(error: httpx.HTTPError | httpx.InvalidURL | None, status: int = 200) -> str:
    """A probe's result in the few words shown to the tenant: what the worker's port did, never an address."""
    if error is None:
        return OK if status == 200 else f"status {status}"
    if isinstance(error, httpx.TimeoutException):
        return "timeout"
    if isinstance(error, httpx.ConnectError):
        return "connection refused"
    if isinstance(error, httpx.RemoteProtocolError | httpx.ReadError):
        return "connection closed"
    return "connection failed"


@dataclass
class _Watched:
    endpoint_id: str
    worker_id: str
    address: str
    health_url: str
    check: str  # how the reason names the check: "GET /health on port 8080"
    ready: bool
    since: float = 0.0  # monotonic time it was first probed while starting
    failures: int = 0
    reported: str = ""  # the last result given to `on_probe`
    failed: bool = False
    rechecking: bool = False
    task: asyncio.Task[None] | None = None
    # The context of the latest `watch` call for the worker: the callbacks run in a copy of it, so that they write
    # under the fence (db/fence.py) of the control loop's latest pass, whoever asked for the probe (a recheck
    # comes from the proxy) and however long ago the probing began (the lease may have changed hands since).
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class HealthProber:
    """See the module docstring for the contract."""

    def __init__(
        self,
        routes: RouteTable,
        settings: Settings,
        *,
        on_ready: OnReady,
        on_unhealthy: OnUnhealthy,
        on_probe: OnProbe | None = None,
    ) -> None:
        self.routes = routes
        self.settings = settings
        self.on_ready = on_ready
        self.on_unhealthy = on_unhealthy
        self.on_probe = on_probe
        self._watched: dict[str, _Watched] = {}
        self._callbacks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def watching(self) -> set[str]:
        """The worker ids being watched (failed ones included, until `unwatch`)."""
        return set(self._watched)

    def is_ready(self, worker_id: str) -> bool:
        """Whether the prober has seen `worker_id` ready (or was told it is) and not failed it since."""
        watched = self._watched.get(worker_id)
        return watched is not None and watched.ready and not watched.failed

    def watch(
        self,
        endpoint_id: str,
        worker_id: str,
        address: str,
        health_url: str,
        *,
        ready: bool,
        check: str = "",
    ) -> None:
        """Start watching the worker (see the module docstring); call it on the running loop. Called again for a
        worker watched at the same address, it only makes the callbacks run in a copy of the caller's context."""
        current = self._watched.get(worker_id)
        if current is not None and current.address == address:
            current.context = contextvars.copy_context()
            return
        if current is not None:
            self.unwatch(worker_id)
        watched = _Watched(
            endpoint_id,
            worker_id,
            address,
            health_url,
            check or f"GET {urlsplit(health_url).path}",
            ready,
            since=asyncio.get_running_loop().time(),
        )
        self._watched[worker_id] = watched
        if ready:
            self.routes.worker_ready(endpoint_id, worker_id, address)
        watched.task = asyncio.get_running_loop().create_task(self._run(watched), name=f"probe:{worker_id}")

    def unwatch(self, worker_id: str) -> None:
        """Forget the worker and stop probing it; unknown ids are ignored. Its callbacks already running finish."""
        watched = self._watched.pop(worker_id, None)
        if watched is not None and watched.task is not None:
            watched.task.cancel()

    def recheck(self, endpoint_id: str, worker_id: str, reason: str) -> None:
        """The data plane could not reach the worker (`reason`): `check_now` in a task of its own, so the caller
        (the proxy, through the planes' channel) never waits. Errors arriving while a recheck of the
        worker is under way join it rather than adding probes."""
        watched = self._watched.get(worker_id)
        if watched is None or watched.failed or watched.rechecking or watched.endpoint_id != endpoint_id:
            return
        log.info("worker %s of endpoint %s could not be reached (%s); probing it now", worker_id, endpoint_id, reason)
        watched.rechecking = True

        async def recheck() -> None:
            try:
                await self.check_now(endpoint_id, worker_id)
            finally:
                watched.rechecking = False

        self._spawn(recheck(), watched)

    async def check_now(self, endpoint_id: str, worker_id: str) -> bool:
        """Probe the worker at once (the proxy calls it after a connection error to it); the result counts like
        a scheduled probe's. False for a worker not watched, or failed."""
        watched = self._watched.get(worker_id)
        if watched is None or watched.failed or watched.endpoint_id != endpoint_id:
            return False
        healthy, detail = await self._probe(watched.health_url)
        self._record(watched, healthy, detail)
        return healthy

    async def close(self) -> None:
        """Stop every probe and callback and close the HTTP client."""
        tasks = [w.task for w in self._watched.values() if w.task is not None] + list(self._callbacks)
        self._watched.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self, watched: _Watched) -> None:
        settings = self.settings
        while not watched.failed:
            if watched.ready:
                await asyncio.sleep(settings.health_check_interval)
            healthy, detail = await self._probe(watched.health_url)
            self._record(watched, healthy, detail)
            if not watched.ready:
                await asyncio.sleep(settings.worker_probe_interval)

    async def _probe(self, url: str) -> tuple[bool, str]:
        """(healthy, `probe_result`): healthy is a 200 answer."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.settings.health_check_timeout)
        try:
            answer = await self._client.get(url)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return False, probe_result(exc)
        return answer.status_code == 200, probe_result(None, answer.status_code)

    def _record(self, watched: _Watched, healthy: bool, detail: str) -> None:
        """Count one probe's result. Runs without awaiting, so the table changes before anyone else runs."""
        if watched.failed or self._watched.get(watched.worker_id) is not watched:
            return  # unwatched or replaced while the probe was in flight
        if not watched.ready and not healthy:
            self._starting_failed(watched, detail)
            return
        if detail != watched.reported and self.on_probe is not None:
            watched.reported = detail
            self._spawn(self.on_probe(watched.endpoint_id, watched.worker_id, detail), watched)
        if healthy:
            watched.failures = 0
            if not watched.ready:
                watched.ready = True
                self.routes.worker_ready(watched.endpoint_id, watched.worker_id, watched.address)
                self._spawn(self.on_ready(watched.endpoint_id, watched.worker_id), watched)
            return
        watched.failures += 1
        if watched.failures < self.settings.health_check_failures:
            return
        watched.failed = True
        self.routes.worker_gone(watched.endpoint_id, watched.worker_id)
        times = "once" if watched.failures == 1 else f"{watched.failures} times in a row"
        reason = f"health check {watched.check} failed {times}: {detail}"
        self._spawn(self.on_unhealthy(watched.endpoint_id, watched.worker_id, reason), watched)

    def _starting_failed(self, watched: _Watched, detail: str) -> None:
        """A failed probe of a starting worker: refusals are normal until it listens, so only one failure per
        `health_check_interval` counts, and `health_startup_failures` of them fail it."""
        interval, limit = self.settings.health_check_interval, self.settings.health_startup_failures
        counted = int((asyncio.get_running_loop().time() - watched.since) // interval)
        if detail == watched.reported and counted <= watched.failures:
            return
        watched.failures, watched.reported = counted, detail
        if self.on_probe is not None:
            self._spawn(self.on_probe(watched.endpoint_id, watched.worker_id, detail), watched)
        if counted < limit:
            return
        watched.failed = True
        reason = (
            f"health check {watched.check} failed {counted} times in {counted * interval:g} s after its container "
            f"started: {detail}; set the port and path it serves with `dockyard endpoints update "
            f"{watched.endpoint_id} --health-port PORT --health-path PATH`, or read its output with "
            f"`dockyard endpoints logs {watched.endpoint_id}`"
        )
        self._spawn(self.on_unhealthy(watched.endpoint_id, watched.worker_id, reason), watched)

    def _spawn(self, callback: Awaitable[None], watched: _Watched) -> None:
        async def run() -> None:
            try:
                await callback
            except Exception:
                log.exception("a health prober callback failed; the reconciler's next pass recovers")

        task = asyncio.get_running_loop().create_task(run(), context=watched.context.copy())
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)
