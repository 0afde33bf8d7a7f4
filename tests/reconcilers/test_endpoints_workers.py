"""A worker's drain and the scale-down choice across gateways: the stand-alone gateways' reports (written by their
real `Reporter` into the real database) count with the server's own routing table. A worker's image pulled with
another organization's credentials is refused it, on the in-memory runtime's shared image cache."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

from dockyard.control.reports import Reporter
from dockyard.core.status import WorkerStatus
from dockyard.gateway.routes import RouteTable
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.runtimes.base import RegistryAuth
from dockyard.services.worker_runspec import worker_address
from tests.conftest import Harness
from tests.fakes import FakeRuntime
from tests.reconcilers.test_endpoints import all_ready, make_endpoint, set_desired, worker_objects, workers_of


def standalone_gateway(harness: Harness, endpoint_id: str, worker_ids: list[str]) -> tuple[RouteTable, Reporter]:
    """A stand-alone gateway's table, routing to the given workers as its sync would, and its reporter."""
    route = harness.routes.get(endpoint_id)
    assert route is not None
    table = RouteTable()
    table.configure([route.config])
    for worker_id in worker_ids:
        table.worker_ready(endpoint_id, worker_id, route.addresses[worker_id])
    return table, Reporter(harness.context.db, table, "gateway-1", harness.context.settings.gateway_report_interval)


async def drained_behind_a_gateway(
    harness: Harness, endpoints: EndpointReconciler
) -> tuple[str, str, RouteTable, Reporter]:
    """An endpoint's one ready worker, routed to by a stand-alone gateway that has reported it, then scaled to
    zero: (endpoint id, worker id, the gateway's table, its reporter)."""
    endpoint_id = await make_endpoint(harness.client)
    await set_desired(harness, endpoint_id, 1)
    await endpoints.reconcile_once()
    (worker,) = await all_ready(harness, endpoints, endpoint_id)
    table, reporter = standalone_gateway(harness, endpoint_id, [worker.id])
    await reporter.report_once()
    await set_desired(harness, endpoint_id, 0)
    return endpoint_id, worker.id, table, reporter


async def hold(table: RouteTable, endpoint_id: str) -> tuple[str, AbstractAsyncContextManager[str]]:
    """One request held by the table: the worker it went to, and its lease."""
    route = table.get(endpoint_id)
    assert route is not None
    lease = route.dispatcher.acquire(asyncio.get_running_loop().time() + 30)
    return await lease.__aenter__(), lease


async def test_a_draining_worker_stays_while_a_standalone_gateway_routes_to_it_or_holds_its_requests(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    endpoint_id, worker_id, table, reporter = await drained_behind_a_gateway(harness, endpoints)

    # The server's own table holds nothing, but the other gateway has not seen the drain: it still routes there.
    await endpoints.reconcile_once()
    await endpoints.reconcile_once()
    assert [w.status for w in await workers_of(harness, endpoint_id)] == [WorkerStatus.DRAINING]

    # It has seen the drain (its sync) but still holds a request there.
    held, lease = await hold(table, endpoint_id)
    assert held == worker_id
    table.worker_draining(endpoint_id, worker_id)
    await reporter.report_once()
    await endpoints.reconcile_once()
    assert [w.status for w in await workers_of(harness, endpoint_id)] == [WorkerStatus.DRAINING]
    assert len(worker_objects(runtime)) == 1

    # The request ends and the next report leaves the worker out: it goes.
    await lease.__aexit__(None, None, None)
    await reporter.report_once()
    await endpoints.reconcile_once()
    assert await workers_of(harness, endpoint_id) == []
    assert worker_objects(runtime) == []


async def test_a_worker_a_standalone_gateway_keeps_listing_is_removed_at_the_drain_timeout(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    harness.context.settings.worker_drain_timeout = 0.3
    endpoint_id, _, _, reporter = await drained_behind_a_gateway(harness, endpoints)
    await endpoints.reconcile_once()
    assert [w.status for w in await workers_of(harness, endpoint_id)] == [WorkerStatus.DRAINING]
    await asyncio.sleep(0.35)
    await reporter.report_once()  # still fresh, still listing it
    await endpoints.reconcile_once()
    assert await workers_of(harness, endpoint_id) == []
    assert worker_objects(runtime) == []


async def test_scale_down_keeps_the_worker_busy_in_a_standalone_gateway(
    harness: Harness, endpoints: EndpointReconciler
) -> None:
    endpoint_id = await make_endpoint(harness.client)
    await set_desired(harness, endpoint_id, 2)
    await endpoints.reconcile_once()
    workers = await all_ready(harness, endpoints, endpoint_id)
    route = harness.routes.get(endpoint_id)
    assert route is not None
    # In the server's own table one worker was busy a moment ago, so the other, idle longest, would go first.
    busy_here, lease = await hold(harness.routes, endpoint_id)
    await lease.__aexit__(None, None, None)
    (idle_longest,) = [w.id for w in workers if w.id != busy_here]
    assert route.dispatcher.idle_for(idle_longest) > route.dispatcher.idle_for(busy_here)
    # But a stand-alone gateway holds a request on it.
    table, reporter = standalone_gateway(harness, endpoint_id, [idle_longest])
    assert (await hold(table, endpoint_id))[0] == idle_longest
    await reporter.report_once()

    await set_desired(harness, endpoint_id, 1)
    await endpoints.reconcile_once()
    kept = [w for w in await workers_of(harness, endpoint_id) if not w.drain]
    assert [w.id for w in kept] == [idle_longest]
    assert worker_address(kept[0].published_ports) == route.addresses[idle_longest]


async def test_another_organizations_worker_cannot_run_an_image_pulled_with_credentials(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    image = "registry.example/team/app:1"
    runtime.private[image] = RegistryAuth("robot", "s3cret")
    auth = await harness.client.post(
        "/gpus/v2/registry-auths", json={"name": "robot", "username": "robot", "password": "s3cret"}
    )
    assert auth.status_code == 200, auth.text
    owned = await make_endpoint(harness.client, image=image, min_replicas=1, registry_auth_id=auth.json()["id"])
    runtime.images.add(image)  # what the owner's pull leaves in the cache
    await endpoints.reconcile_once()
    (worker,) = await workers_of(harness, owned)
    assert worker.status == WorkerStatus.STARTING, worker.reason

    other = await make_endpoint(await harness.new_client("umbrella"), image=image, min_replicas=1)
    await endpoints.reconcile_once()
    (refused,) = await workers_of(harness, other)
    assert (refused.status, refused.reason) == (
        WorkerStatus.FAILED,
        f"image {image} needs registry credentials that can pull it: unauthorized",
    )
