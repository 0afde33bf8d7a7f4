"""`/metrics` gauges read from the gateway's routing table at scrape time: queue depth, requests in flight
and ready workers per endpoint. Reading at scrape time costs the request path nothing (no gauge is updated
per request) and can never drift from the dispatcher's own counters."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dockyard.gateway.routes import RouteTable


class RouteCollector(Collector):
    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued = GaugeMetricFamily("dockyard_gateway_queue_depth", "Requests waiting for a worker", labels=["endpoint"])
        in_flight = GaugeMetricFamily(
            "dockyard_gateway_in_flight", "Requests being served by a worker", labels=["endpoint"]
        )
        oldest = GaugeMetricFamily(
            "dockyard_gateway_oldest_wait_seconds", "How long the oldest queued request has waited", labels=["endpoint"]
        )
        ready = GaugeMetricFamily("dockyard_gateway_ready_workers", "Workers taking requests", labels=["endpoint"])
        for figures in self.routes.figures():
            label = [figures.endpoint_id]
            queued.add_metric(label, figures.queued)
            in_flight.add_metric(label, figures.in_flight)
            oldest.add_metric(label, figures.oldest_wait)
            ready.add_metric(label, sum(1 for worker in figures.workers if worker.ready))
        yield from (queued, in_flight, oldest, ready)


def register(registry: CollectorRegistry, routes: RouteTable) -> None:
    registry.register(RouteCollector(routes))
