"""The gateway's metrics on `/metrics`.

Gauges (queue depth, requests in flight, ready workers per endpoint) and the dispatchers' cold-start hand-off
totals (`dockyard_gateway_first_dispatch_seconds`) are read from the routing table at scrape time: that costs
the request path nothing and can never drift from the dispatcher's own counters. Counters and histograms of
requests are updated per request through `EndpointMetrics`, one endpoint's children looked up once rather than
through `labels()` on every request."""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from dockyard.gateway.routes import RouteTable
from dockyard.metrics_registry import per_registry


class RouteCollector(Collector):
    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily("dockyard_gateway_queue_depth", "Requests waiting for a worker", labels=["endpoint"])
        in_flight = GaugeMetricFamily(
            "dockyard_gateway_in_flight", "Requests being served by a worker", labels=["endpoint"]
        )
        oldest = GaugeMetricFamily(
            "dockyard_gateway_oldest_wait_seconds", "How long the oldest queued request has waited", labels=["endpoint"]
        )
        ready = GaugeMetricFamily("dockyard_gateway_ready_workers", "Workers taking requests", labels=["endpoint"])
        first_dispatch = SummaryMetricFamily(
            "dockyard_gateway_first_dispatch_seconds",
            "Seconds from a worker being pushed ready while requests waited to the first of them resuming with it",
            labels=["endpoint"],
        )
        for figures in self.routes.figures():
            label = [figures.endpoint_id]
            queued.add_metric(label, figures.queued)
            in_flight.add_metric(label, figures.in_flight)
            oldest.add_metric(label, figures.oldest_wait)
            ready.add_metric(label, sum(1 for worker in figures.workers if worker.ready))
            if route := self.routes.get(figures.endpoint_id):
                dispatcher = route.dispatcher
                first_dispatch.add_metric(label, dispatcher.first_dispatches, dispatcher.first_dispatch_seconds)
        yield from (queued, in_flight, oldest, ready, first_dispatch)


def register(registry: CollectorRegistry, routes: RouteTable) -> None:
    registry.register(RouteCollector(routes))


_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)


class EndpointMetrics:
    """One endpoint's request counters and histograms."""

    __slots__ = ("_codes", "_endpoint", "_requests", "latency", "queue_wait")

    def __init__(self, metrics: GatewayMetrics, endpoint: str) -> None:
        self._requests = metrics.requests
        self._endpoint = endpoint
        self._codes: dict[int, Counter] = {}
        self.latency = metrics.latency.labels(endpoint)
        self.queue_wait = metrics.queue_wait.labels(endpoint)

    def count(self, code: int) -> None:
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = self._requests.labels(self._endpoint, str(code))
        counter.inc()


class GatewayMetrics(dict[str, EndpointMetrics]):
    """The gateway's request metrics on one registry; indexing it by endpoint label gives that endpoint's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        histogram = partial(Histogram, labelnames=["endpoint"], registry=registry, buckets=_BUCKETS)
        self.requests = Counter(
            "dockyard_gateway_requests", "Sync gateway requests answered", ["endpoint", "code"], registry=registry
        )
        self.latency = histogram("dockyard_gateway_request_seconds", "Arrival to response headers sent")
        self.queue_wait = histogram("dockyard_gateway_queue_wait_seconds", "Arrival to worker assigned")

    def __missing__(self, endpoint: str) -> EndpointMetrics:
        children = self[endpoint] = EndpointMetrics(self, endpoint)
        return children


# One set of request metrics per registry, shared by every gateway app built on it.
request_metrics = per_registry(GatewayMetrics)
