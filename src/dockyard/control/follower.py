"""What keeps a gateway's routing table and load reports where no endpoint reconciler runs beside it: in a
stand-alone gateway (`dockyard gateway`) always, and in a server while another holds the control lease (app.py
switches it on and off with the server's role).

`Follower` builds and runs the parts: a `RouteSync` that mirrors the database into the table (at once on the
bus's `ROUTES`, and every `gateway_sync_interval`), a `HealthProber` of its own that pushes a starting worker
ready in this table the moment its health check answers (the lease holder's reconciler records it), and a
`Reporter` that writes this gateway's load for the leader's autoscaler and reconciler and announces demand on the
bus. It writes no row but its reports. One is started once and stopped once; a server that becomes a follower
again makes a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dockyard.context import ServerContext
from dockyard.control.prober import HealthProber
from dockyard.control.reports import Reporter
from dockyard.control.route_sync import RouteSync
from dockyard.gateway.routes import RouteTable

log = logging.getLogger(__name__)


async def _recorded_elsewhere(*_: str) -> None:
    """The prober's callbacks: the lease holder's reconciler records worker status; a follower only routes."""


class Follower:
    """See the module docstring."""

    def __init__(self, context: ServerContext, routes: RouteTable, gateway_id: str) -> None:
        settings, db = context.settings, context.db
        self.context = context
        self.gateway_id = gateway_id
        self.prober = HealthProber(routes, settings, on_ready=_recorded_elsewhere, on_unhealthy=_recorded_elsewhere)
        self.reporter = Reporter(db, routes, gateway_id, settings.gateway_report_interval, context.bus)
        self.sync = RouteSync(db, settings, routes, self.prober, context.bus)
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        """Fill the table once (raises if the database cannot be read), then keep it and report in the background."""
        self._unsubscribe = self.context.planes.subscribe(
            demand=self.reporter.demand, worker_unreachable=self.prober.recheck
        )
        await self.sync.sync_once()
        self.sync.start()
        self.reporter.start()
        log.info("gateway %s follows the database (%d endpoint(s))", self.gateway_id, len(self.sync.routes))

    async def stop(self) -> None:
        """Stop syncing, reporting (its report withdrawn) and probing; the table keeps what it holds."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        await self.sync.stop()
        await self.reporter.stop()
        await self.prober.close()
