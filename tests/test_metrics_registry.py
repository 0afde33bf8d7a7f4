"""per_registry: a metric set is built once per registry, so building a loop or an app again on the same
registry reuses it instead of registering its names twice."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from dockyard.metrics_registry import per_registry


def test_one_build_per_registry() -> None:
    built: list[CollectorRegistry] = []

    @per_registry
    def counter(registry: CollectorRegistry) -> Counter:
        built.append(registry)
        return Counter("dockyard_test_things", "Things", registry=registry)

    first, second = CollectorRegistry(), CollectorRegistry()
    assert counter(first) is counter(first)  # a second Counter of that name on `first` would raise
    assert counter(second) is not counter(first)
    assert built == [first, second]
