"""The gateway's `/metrics` figures read from the routing table at scrape time."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from dockyard.core.planes import EndpointConfig
from dockyard.core.status import EndpointType
from dockyard.gateway import metrics
from dockyard.gateway.routes import RouteTable


async def test_a_cold_start_hand_off_is_exported_per_endpoint() -> None:
    routes = RouteTable()
    registry = CollectorRegistry()
    metrics.register(registry, routes)
    routes.configure([EndpointConfig("e1", "org", EndpointType.SYNC, 10.0, 1, 10)])
    route = routes.get("e1")
    assert route is not None
    labels = {"endpoint": "e1"}
    assert registry.get_sample_value("dockyard_gateway_first_dispatch_seconds_count", labels) == 0
    waiter = asyncio.create_task(route.dispatcher.acquire(1e9).__aenter__())
    await asyncio.sleep(0)
    routes.worker_ready("e1", "w1", "http://127.0.0.1:1")
    assert await waiter == "w1"
    assert registry.get_sample_value("dockyard_gateway_first_dispatch_seconds_count", labels) == 1
    seconds = registry.get_sample_value("dockyard_gateway_first_dispatch_seconds_sum", labels)
    assert seconds is not None
    assert 0 <= seconds < 1
