"""Mirroring worker rows into a gateway's routing table and prober.

`publish_worker` is the one rule, used by the endpoint reconciler in the server (every pass) and by a
stand-alone gateway's `RouteSync`: a starting or ready worker is located in the table and watched by the
prober (which pushes it ready the moment its health check answers); a draining one takes no new requests but
keeps its address for the ones it holds; any other is gone. Every call is idempotent, so callers simply
repeat it for every row they see.

`RouteSync` is how a gateway with no endpoint reconciler in its process (`dockyard gateway`, and a server that
does not hold the control lease: control/follower.py) learns what to serve without a database round trip on any
request: it reads the endpoints and their workers and mirrors them at once when the bus says an endpoint or a
worker's readiness changed (`Topic.ROUTES`, published after the commit), and every `gateway_sync_interval` in
case a signal was lost. Signals that come while a sync runs cost one more sync after it, however many came.
Its prober pushes readiness into its own table as soon as it sees it, so a cold start is served here as fast
as in the server; it writes nothing, since the server's reconciler owns every row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from sqlalchemy import select

from dockyard.config import Settings
from dockyard.control.prober import HealthProber
from dockyard.core.bus import Bus, Topic
from dockyard.core.status import WorkerStatus
from dockyard.db.models import EndpointModel, WorkerModel
from dockyard.db.session import Database
from dockyard.gateway.routes import RouteTable
from dockyard.services.endpoints import route_config
from dockyard.services.worker_runspec import worker_address, worker_health

log = logging.getLogger(__name__)

_SERVING = (WorkerStatus.STARTING, WorkerStatus.READY)


def publish_worker(routes: RouteTable, prober: HealthProber, worker: WorkerModel) -> None:
    """Make the table and the prober agree with one worker row (see the module docstring)."""
    endpoint_id = worker.endpoint_id
    if worker.status in _SERVING and not worker.drain:
        address = worker_address(worker.published_ports)
        probe = worker_health(worker.published_ports)
        if address is not None and probe is not None:
            routes.worker_starting(endpoint_id, worker.id, address)
            url, check = probe
            prober.watch(endpoint_id, worker.id, address, url, ready=worker.status == WorkerStatus.READY, check=check)
        return
    prober.unwatch(worker.id)
    if worker.status == WorkerStatus.DRAINING or worker.drain:
        routes.worker_draining(endpoint_id, worker.id)
    else:
        routes.worker_gone(endpoint_id, worker.id)


def forget_others(routes: RouteTable, prober: HealthProber, workers: Iterable[WorkerModel]) -> None:
    """Take out of the table and the prober every worker that no longer has a row."""
    present = {worker.id for worker in workers}
    for worker_id in prober.watching() - present:
        prober.unwatch(worker_id)
    for endpoint_id, worker_id in routes.workers():
        if worker_id not in present:
            routes.worker_gone(endpoint_id, worker_id)


class RouteSync:
    """A gateway's loop; see the module docstring."""

    def __init__(self, db: Database, settings: Settings, routes: RouteTable, prober: HealthProber, bus: Bus) -> None:
        self.db = db
        self.settings = settings
        self.routes = routes
        self.prober = prober
        self.bus = bus
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def wake(self, _key: str = "") -> None:
        """Sync now (after the one running, if one is)."""
        self._wanted.set()

    async def sync_once(self) -> None:
        stamp = self.routes.stamp()
        async with self.db.read() as session:
            endpoints = list(await session.scalars(select(EndpointModel)))
            workers = list(await session.scalars(select(WorkerModel).order_by(WorkerModel.created_at)))
        self.routes.configure((route_config(row, self.settings) for row in endpoints), since=stamp)
        for worker in workers:
            publish_worker(self.routes, self.prober, worker)
        forget_others(self.routes, self.prober, workers)

    async def _run(self) -> None:
        while True:
            self._wanted.clear()
            try:
                await self.sync_once()
            except Exception:
                log.exception("gateway sync failed; serving the last table seen until the next try")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), self.settings.gateway_sync_interval)

    def start(self) -> None:
        self._unsubscribe = self.bus.subscribe(Topic.ROUTES, self.wake)
        self._task = asyncio.create_task(self._run(), name="gateway-sync")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
