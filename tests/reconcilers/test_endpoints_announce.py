"""The endpoint reconciler announces on the bus (`Topic.ROUTES`, keyed by endpoint) each committed change of a
worker row that gateways route by, and of the endpoint's status, so that every other gateway reads it at once;
a pass that changes nothing announces nothing."""

from __future__ import annotations

from dockyard.core.bus import Topic
from dockyard.core.status import WorkerStatus
from dockyard.reconcilers.endpoints import EndpointReconciler
from tests.conftest import Harness
from tests.reconcilers.test_endpoints import make_endpoint, make_ready, set_desired, workers_of


async def test_routed_worker_changes_are_announced_once_committed(
    harness: Harness, endpoints: EndpointReconciler
) -> None:
    endpoint_id = await make_endpoint(harness.client, min_replicas=0)
    await set_desired(harness, endpoint_id, 1)
    announced: list[str] = []
    harness.context.bus.subscribe(Topic.ROUTES, announced.append)

    await endpoints.reconcile_once()  # the worker is created and starts: routable, at its address
    [worker] = await workers_of(harness, endpoint_id)
    assert worker.status == WorkerStatus.STARTING
    # Two announcements: the worker's start, and the endpoint's status that says it is starting a worker.
    assert announced == [endpoint_id, endpoint_id]

    announced.clear()
    await make_ready(harness, endpoints, worker)
    assert announced == [endpoint_id]

    await endpoints.reconcile_once()  # the endpoint's status follows: it is part of its route
    announced.clear()
    await endpoints.reconcile_once()  # nothing to do: nothing announced
    assert announced == []

    await set_desired(harness, endpoint_id, 0)
    await endpoints.reconcile_once()  # scaled in: the worker takes no more requests
    assert WorkerStatus.READY not in [w.status for w in await workers_of(harness, endpoint_id)]
    assert announced == [endpoint_id] * len(announced) != []
