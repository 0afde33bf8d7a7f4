"""Load figures across gateway processes.

The gateway inside the server process is read directly (`RouteTable.figures()`), as fresh as its last
request. A stand-alone gateway (`dockyard gateway`, run beside the server to spread the request load) cannot
be read that way, so it writes its figures to `gateway_reports` every `gateway_report_interval` seconds, and
at once when a request reaches an endpoint with no ready worker there; that report committed, it publishes
`Topic.DEMAND` for the endpoint on the bus, which wakes the autoscaler of whichever server leads.
`remote_figures()` reads every report fresher than `REPORT_MAX_AGE_INTERVALS` intervals; control/load.py sums
them with the rest. A gateway that stopped stops reporting and its last figures age out; nothing has to clean up
after it.

A report lists the workers its gateway routes to (ready there) or holds requests on, which is what the endpoint
reconciler needs before it removes a draining worker (`held_elsewhere()`): a gateway learns of a drain at its
next sync, so until its report leaves the worker out it may still send it requests.

The database carries figures, never requests: a request still never waits on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.bus import Bus, LocalBus, Topic
from dockyard.db.base import utcnow
from dockyard.db.models import GatewayReportModel
from dockyard.db.session import Database
from dockyard.gateway.routes import EndpointFigures, RouteTable, WorkerFigures

log = logging.getLogger(__name__)

REPORT_MAX_AGE_INTERVALS = 4


def merge(parts: Iterable[EndpointFigures]) -> dict[str, EndpointFigures]:
    """Figures of the same endpoint from several gateways, summed: queued and in-flight requests add up, the
    oldest wait is the longest, a worker is ready if any gateway sends it requests, and it is idle only as
    long as it has been idle everywhere."""
    grouped: dict[str, list[EndpointFigures]] = defaultdict(list)
    for figures in parts:
        grouped[figures.endpoint_id].append(figures)
    merged = {}
    for endpoint_id, group in grouped.items():
        if len(group) == 1:
            merged[endpoint_id] = group[0]
            continue
        workers: dict[str, WorkerFigures] = {}
        for figures in group:
            for worker in figures.workers:
                seen = workers.get(worker.worker_id)
                workers[worker.worker_id] = (
                    worker
                    if seen is None
                    else WorkerFigures(
                        worker.worker_id,
                        seen.ready or worker.ready,
                        seen.in_flight + worker.in_flight,
                        min(seen.idle_for, worker.idle_for),
                    )
                )
        merged[endpoint_id] = EndpointFigures(
            endpoint_id=endpoint_id,
            queued=sum(f.queued for f in group),
            in_flight=sum(f.in_flight for f in group),
            oldest_wait=max(f.oldest_wait for f in group),
            workers=tuple(workers.values()),
        )
    return merged


async def remote_figures(session: AsyncSession, interval: float) -> list[EndpointFigures]:
    """The stand-alone gateways' reports that are still fresh."""
    since = utcnow() - timedelta(seconds=interval * REPORT_MAX_AGE_INTERVALS)
    rows = await session.scalars(select(GatewayReportModel).where(GatewayReportModel.reported_at >= since))
    return [
        EndpointFigures(
            endpoint_id=row.endpoint_id,
            queued=row.queued,
            in_flight=row.in_flight,
            oldest_wait=row.oldest_wait,
            # A reported worker is one that gateway sends requests to; a draining one reports no idleness.
            workers=tuple(
                WorkerFigures(worker_id, True, int(load), float(idle))
                for worker_id, (load, idle) in row.workers.items()
            ),
        )
        for row in rows
    ]


def held_elsewhere(parts: Iterable[EndpointFigures]) -> dict[str, int]:
    """Worker id -> the requests stand-alone gateways hold on it, for every worker their reports list: one a
    gateway still routes to (0 when it holds none there) or holds requests on."""
    held: dict[str, int] = defaultdict(int)
    for figures in parts:
        for worker in figures.workers:
            held[worker.worker_id] += worker.in_flight
    return dict(held)


class Reporter:
    """A stand-alone gateway's side: writes its figures every `interval` seconds, and soon after `demand()`, when
    it also announces the demand on `bus` (nowhere beyond this process when none is given)."""

    def __init__(
        self, db: Database, routes: RouteTable, gateway_id: str, interval: float, bus: Bus | None = None
    ) -> None:
        self.db = db
        self.routes = routes
        self.gateway_id = gateway_id
        self.interval = interval
        self.bus: Bus = bus if bus is not None else LocalBus()
        self._demanded: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def demand(self, endpoint_id: str) -> None:
        """A request reached an endpoint with no ready worker here: report now, not at the next interval."""
        self._demanded.add(endpoint_id)
        self._wake.set()

    async def report_once(self) -> None:
        rows = [
            GatewayReportModel(
                gateway_id=self.gateway_id,
                endpoint_id=figures.endpoint_id,
                queued=figures.queued,
                in_flight=figures.in_flight,
                oldest_wait=figures.oldest_wait,
                workers={w.worker_id: [w.in_flight, w.idle_for] for w in figures.workers if w.ready or w.in_flight},
                reported_at=utcnow(),
            )
            for figures in self.routes.figures()
        ]
        async with self.db.write() as session:
            await session.execute(delete(GatewayReportModel).where(GatewayReportModel.gateway_id == self.gateway_id))
            session.add_all(rows)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            demanded, self._demanded = self._demanded, set()
            try:
                await self.report_once()
                for endpoint_id in demanded:
                    self.bus.publish(Topic.DEMAND, endpoint_id)
            except Exception:
                log.exception("gateway report failed; retrying at the next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-reporter")

    async def stop(self) -> None:
        """Stop reporting and withdraw this gateway's figures, so they do not linger until they age out."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            async with self.db.write() as session:
                await session.execute(
                    delete(GatewayReportModel).where(GatewayReportModel.gateway_id == self.gateway_id)
                )
