"""forget_others: a stand-alone gateway drops every worker whose row is gone, from its table and its prober."""

from __future__ import annotations

from dockyard.config import Settings
from dockyard.control.prober import HealthProber
from dockyard.control.route_sync import forget_others
from dockyard.core.planes import EndpointConfig
from dockyard.core.status import EndpointType
from dockyard.db.models import WorkerModel
from dockyard.gateway.routes import RouteTable


async def test_workers_without_a_row_leave_the_table() -> None:
    routes = RouteTable()
    routes.configure([EndpointConfig(e, "org", EndpointType.SYNC, 10.0, 1, 10) for e in ("e1", "e2")])
    prober = HealthProber(routes, Settings(), on_ready=lambda *_: None, on_unhealthy=lambda *_: None)
    prober.watch("e1", "kept", "http://127.0.0.1:1", "http://127.0.0.1:1/health", ready=True)
    prober.watch("e2", "gone-ready", "http://127.0.0.1:3", "http://127.0.0.1:3/health", ready=True)
    routes.worker_starting("e1", "gone-starting", "http://127.0.0.1:2")
    assert sorted(routes.workers()) == [("e1", "gone-starting"), ("e1", "kept"), ("e2", "gone-ready")]

    forget_others(routes, prober, [WorkerModel(id="kept")])

    assert routes.workers() == [("e1", "kept")]
    assert prober.watching() == {"kept"}
    prober.unwatch("kept")
