"""A worker's drain and the scale-down choice across gateways: the stand-alone gateways' reports (written by their
real `Reporter` into the real database) count with the server's own routing table. A worker's image pulled with
another organization's credentials is refused it, on the in-memory runtime's shared image cache."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

from sqlalchemy import select

from dockyard.config import Settings
from dockyard.control.reports import Reporter
from dockyard.core.status import WorkerStatus
from dockyard.db.models import WorkerLogModel
from dockyard.gateway.routes import RouteTable
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.reconcilers.endpoints_workers import never_called_in
from dockyard.runtimes.base import RegistryAuth
from dockyard.services.worker_runspec import CONTAINER_HOST, worker_address
from tests.conftest import Harness
from tests.fakes import FAKE_LOG_TIME, FakeRuntime
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


def test_the_reason_of_an_async_worker_that_never_called_in_names_its_url_and_the_cause() -> None:
    loopback = Settings(port=8080, public_url="", host="127.0.0.1", worker_call_in_timeout=60)
    reason = never_called_in(loopback, "ep-1")
    assert reason == (
        "never called in: no job-take or ping webhook call within 60 s of its container starting; it was given "
        f"http://{CONTAINER_HOST}:8080/gpus/v2/workers/ep-1/job-take/; the server listens on 127.0.0.1 only, which "
        "no container reaches: start it with `dockyard server --host 0.0.0.0` (DOCKYARD_HOST), or set "
        "DOCKYARD_WORKER_WEBHOOK_URL to an address the workers reach"
    )
    reachable = Settings(host="0.0.0.0", worker_webhook_url="http://10.0.0.5:8080", worker_call_in_timeout=60)
    reason = never_called_in(reachable, "ep-1")
    assert "it was given http://10.0.0.5:8080/gpus/v2/workers/ep-1/job-take/;" in reason
    assert "`dockyard endpoints logs ep-1`" in reason
    assert "listens on" not in reason
    # The reason reaches the tenant: credentials in the operator's URL never do.
    secret = Settings(host="0.0.0.0", worker_webhook_url="http://op:hunter2@10.0.0.5:8080", worker_call_in_timeout=60)
    reason = never_called_in(secret, "ep-1")
    assert "hunter2" not in reason
    assert "it was given http://***@10.0.0.5:8080/gpus/v2/workers/ep-1/job-take/;" in reason


async def test_a_starting_worker_failing_its_probes_is_failed_by_the_prober_and_counts_towards_the_crash_loop(
    harness: Harness, endpoints: EndpointReconciler
) -> None:
    """Nothing listens at a fake worker's address: each probe is refused, recorded on the row, and the worker is
    failed after `health_startup_failures` checks, long before the startup timeout."""
    settings = harness.context.settings
    settings.worker_probe_interval, settings.health_check_interval, settings.health_startup_failures = 0.01, 0.05, 2
    endpoint_id = await make_endpoint(harness.client, min_replicas=1)
    await endpoints.reconcile_once()
    (starting,) = await workers_of(harness, endpoint_id)
    deadline = asyncio.get_running_loop().time() + 10
    while (worker := (await workers_of(harness, endpoint_id))[0]).status != WorkerStatus.FAILED:
        assert asyncio.get_running_loop().time() < deadline, "not failed within 10 s"
        await asyncio.sleep(0.02)
    assert worker.id == starting.id
    assert worker.reason.startswith(
        "health check GET /health on port 8080 failed 2 times in 0.1 s after its container started: "
        "connection refused; "
    )
    assert (worker.last_probe_result, worker.last_probe_at is not None) == ("connection refused", True)
    assert endpoints.crash_loops[endpoint_id].failures == 1


async def test_a_worker_scaled_away_leaves_its_output_kept(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    endpoint_id = await make_endpoint(harness.client)
    await set_desired(harness, endpoint_id, 1)
    await endpoints.reconcile_once()
    (worker,) = await all_ready(harness, endpoints, endpoint_id)
    runtime.output[worker.runtime_id] = [b"loaded the model\n", b"served a request\n"]
    await set_desired(harness, endpoint_id, 0)
    await endpoints.reconcile_once()
    await endpoints.reconcile_once()
    assert await workers_of(harness, endpoint_id) == []
    async with harness.context.db.read() as session:
        (kept,) = await session.scalars(select(WorkerLogModel))
    assert (kept.endpoint_id, kept.worker_id) == (endpoint_id, worker.id)
    assert kept.output == FAKE_LOG_TIME + b" loaded the model\n" + FAKE_LOG_TIME + b" served a request\n"
