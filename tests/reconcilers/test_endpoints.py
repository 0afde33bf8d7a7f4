"""The endpoint reconciler's logic over a real database and the in-memory runtime: scaling, draining, the
rolling order, deletion, crash-loop backoff, replacement of an exited worker, orphans, rebuilding the
routing table after a restart, and the GPU pool shared with containers.

The in-memory runtime's objects answer no HTTP, so readiness is driven the way the prober drives it: the
worker is pushed ready into the routing table, then the reconciler's `on_worker_ready` callback runs.
Scheduled probes are set far apart so that nothing else decides readiness here."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from sqlalchemy import select, update

from dockyard.core.status import ContainerStatus, EndpointStatus, WorkerStatus
from dockyard.db.models import EndpointModel, EventModel, WorkerModel
from dockyard.gateway.routes import RouteTable
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.runtimes.base import (
    LABEL_ID,
    LABEL_INSTALLATION,
    LABEL_KIND,
    ObjectState,
    RunSpec,
    RuntimeObject,
)
from dockyard.services.worker_runspec import LABEL_ENDPOINT, worker_address
from tests.conftest import Harness
from tests.fakes import FakeRuntime
from tests.reconcilers.conftest import BUSYBOX, H100, make_containers, make_template, must_row, simulate_gpus

URL = "/gpus/v2/endpoints"


async def make_endpoint(
    client: httpx.AsyncClient, *, image: str = BUSYBOX, min_replicas: int = 0, max_replicas: int = 4, **fields: Any
) -> str:
    body: dict[str, Any] = {
        "type": "sync",
        "name": "chat",
        "product_id": "serverless.cpu",
        "image": image,
        "ports": [8080],
        "worker_config": {"min_replicas": min_replicas, "max_replicas": max_replicas},
    }
    body.update(fields)
    answer = await client.post(URL, json=body)
    assert answer.status_code == 200, answer.text
    endpoint_id: str = answer.json()["id"]
    return endpoint_id


async def set_desired(harness: Harness, endpoint_id: str, replicas: int) -> None:
    """What the autoscaler does: a new desired count."""
    async with harness.context.db.write() as session:
        await session.execute(
            update(EndpointModel).where(EndpointModel.id == endpoint_id).values(desired_replicas=replicas)
        )


async def endpoint_row(harness: Harness, endpoint_id: str) -> EndpointModel | None:
    async with harness.context.db.read() as session:
        return await session.get(EndpointModel, endpoint_id)


async def workers_of(harness: Harness, endpoint_id: str) -> list[WorkerModel]:
    async with harness.context.db.read() as session:
        rows = await session.scalars(
            select(WorkerModel).where(WorkerModel.endpoint_id == endpoint_id).order_by(WorkerModel.created_at)
        )
        return list(rows)


async def events_of(harness: Harness, endpoint_id: str) -> list[tuple[str, str]]:
    async with harness.context.db.read() as session:
        rows = await session.scalars(
            select(EventModel).where(EventModel.object_id == endpoint_id).order_by(EventModel.id)
        )
        return [(row.type, row.message) for row in rows]


async def make_ready(harness: Harness, reconciler: EndpointReconciler, worker: WorkerModel) -> None:
    """What the prober does when a worker answers: route it ready, then call back."""
    address = worker_address(worker.published_ports)
    assert address is not None, f"worker {worker.id} has no address"
    harness.routes.worker_ready(worker.endpoint_id, worker.id, address)
    await reconciler.on_worker_ready(worker.endpoint_id, worker.id)


async def all_ready(harness: Harness, reconciler: EndpointReconciler, endpoint_id: str) -> list[WorkerModel]:
    for worker in await workers_of(harness, endpoint_id):
        if worker.status == WorkerStatus.STARTING:
            await make_ready(harness, reconciler, worker)
    return await workers_of(harness, endpoint_id)


def ready_ids(harness: Harness, endpoint_id: str) -> set[str]:
    route = harness.routes.get(endpoint_id)
    assert route is not None
    return {worker for worker in route.addresses if route.dispatcher.is_ready(worker)}


def statuses(workers: list[WorkerModel]) -> list[str]:
    return sorted(worker.status.value for worker in workers)


def worker_objects(runtime: FakeRuntime) -> list[RuntimeObject]:
    return [obj for obj in runtime.objects.values() if obj.labels.get(LABEL_KIND) == "worker"]


async def test_scale_up_creates_labelled_workers_and_routes_them(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    endpoint_id = await make_endpoint(harness.client, min_replicas=2, envs=[{"key": "MODEL", "value": "tiny"}])
    await endpoints.reconcile_once()
    workers = await workers_of(harness, endpoint_id)
    assert statuses(workers) == ["starting", "starting"]
    objects = worker_objects(runtime)
    assert len(objects) == 2
    for worker in workers:
        obj = next(o for o in objects if o.resource_id == worker.id)
        assert obj.name == f"dy-w-{worker.id[:12]}"
        assert obj.labels[LABEL_ENDPOINT] == endpoint_id
        assert obj.generation == 1
        spec = runtime.specs[obj.id]
        assert spec.env["MODEL"] == "tiny"
        assert spec.env["DOCKYARD_WORKER_ID"] == worker.id
        assert spec.env["DOCKYARD_ENDPOINT_ID"] == endpoint_id
        assert [(p.container_port, p.host_port) for p in spec.ports] == [(8080, None)]
        assert worker.runtime_id == obj.id
        assert worker_address(worker.published_ports) == f"http://127.0.0.1:{obj.ports[0].host_port}"
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert row.status == EndpointStatus.DEPLOYING
    assert ready_ids(harness, endpoint_id) == set()

    workers = await all_ready(harness, endpoints, endpoint_id)
    assert statuses(workers) == ["ready", "ready"]
    assert all(w.health for w in workers)
    assert ready_ids(harness, endpoint_id) == {w.id for w in workers}
    await endpoints.reconcile_once()
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert (row.status, row.reason) == (EndpointStatus.RUNNING, "2 of 2 workers ready")
    types = [t for t, _ in await events_of(harness, endpoint_id)]
    assert types.count("WorkerCreated") == 2
    assert types.count("WorkerReady") == 2
    gauge = harness.context.registry.get_sample_value(
        "dockyard_endpoint_workers", {"endpoint": endpoint_id, "status": "ready"}
    )
    assert gauge == 2
    cold = harness.context.registry.get_sample_value(
        "dockyard_worker_cold_start_seconds_count", {"endpoint": endpoint_id}
    )
    assert cold == 2
    started = harness.context.registry.get_sample_value(
        "dockyard_worker_container_start_seconds_count", {"endpoint": endpoint_id}
    )
    assert started == 2

    # Passes that find nothing to do change nothing.
    await endpoints.reconcile_once()
    assert len(worker_objects(runtime)) == 2
    assert len(await workers_of(harness, endpoint_id)) == 2


async def test_scale_to_zero_is_running(harness: Harness, endpoints: EndpointReconciler) -> None:
    endpoint_id = await make_endpoint(harness.client)
    await endpoints.reconcile_once()
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert row.status == EndpointStatus.RUNNING
    assert "scaled to zero" in row.reason
    assert await workers_of(harness, endpoint_id) == []
    assert endpoint_id in harness.routes


async def test_scale_down_drains_the_idle_first_and_removes_at_zero_in_flight(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    endpoint_id = await make_endpoint(harness.client, min_replicas=0)
    await set_desired(harness, endpoint_id, 3)
    await endpoints.reconcile_once()
    await all_ready(harness, endpoints, endpoint_id)
    route = harness.routes.get(endpoint_id)
    assert route is not None
    lease = route.dispatcher.acquire(asyncio.get_running_loop().time() + 30)
    busy = await lease.__aenter__()

    await set_desired(harness, endpoint_id, 1)
    await endpoints.reconcile_once()
    workers = await workers_of(harness, endpoint_id)
    assert [w.id for w in workers] == [busy]  # the two idle ones were drained and, holding nothing, removed
    assert {obj.resource_id for obj in worker_objects(runtime)} == {busy}
    assert ready_ids(harness, endpoint_id) == {busy}

    await set_desired(harness, endpoint_id, 0)
    await endpoints.reconcile_once()
    (draining,) = await workers_of(harness, endpoint_id)
    assert (draining.status, draining.drain) == (WorkerStatus.DRAINING, True)
    assert ready_ids(harness, endpoint_id) == set()
    await endpoints.reconcile_once()
    assert [w.status for w in await workers_of(harness, endpoint_id)] == [WorkerStatus.DRAINING]  # still busy

    await lease.__aexit__(None, None, None)
    await endpoints.reconcile_once()
    assert await workers_of(harness, endpoint_id) == []
    assert worker_objects(runtime) == []
    types = [t for t, _ in await events_of(harness, endpoint_id)]
    assert types.count("WorkerDraining") == 3
    assert types.count("WorkerRemoved") == 3


async def test_rolling_update_drains_old_only_as_new_become_ready(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    runtime.images.add("localhost/busybox:2")
    endpoint_id = await make_endpoint(harness.client, min_replicas=2)
    await endpoints.reconcile_once()
    old = {w.id for w in await all_ready(harness, endpoints, endpoint_id)}
    answer = await harness.client.put(f"{URL}/{endpoint_id}", json={"image": "localhost/busybox:2"})
    assert answer.status_code == 200, answer.text

    await endpoints.reconcile_once()
    workers = await workers_of(harness, endpoint_id)
    new = [w for w in workers if w.id not in old]
    assert sorted((w.generation, w.status.value) for w in new) == [(2, "starting"), (2, "starting")]
    assert ready_ids(harness, endpoint_id) == old  # nothing old drained while no new worker is ready
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert row.status == EndpointStatus.UPDATING

    await make_ready(harness, endpoints, new[0])
    await endpoints.reconcile_once()
    assert len(ready_ids(harness, endpoint_id)) == 2
    assert len(ready_ids(harness, endpoint_id) & old) == 1  # one old worker made way for the new one
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert row.status == EndpointStatus.UPDATING

    await make_ready(harness, endpoints, new[1])
    await endpoints.reconcile_once()
    assert ready_ids(harness, endpoint_id) == {w.id for w in new}
    assert {w.id for w in await workers_of(harness, endpoint_id)} == {w.id for w in new}
    assert {obj.resource_id for obj in worker_objects(runtime)} == {w.id for w in new}
    assert {runtime.specs[obj.id].image for obj in worker_objects(runtime)} == {"localhost/busybox:2"}
    await endpoints.reconcile_once()
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert row.status == EndpointStatus.RUNNING
    assert "Rolled" in [t for t, _ in await events_of(harness, endpoint_id)]


async def test_delete_drains_then_removes_then_deletes_the_row(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    endpoint_id = await make_endpoint(harness.client, min_replicas=2)
    await endpoints.reconcile_once()
    await all_ready(harness, endpoints, endpoint_id)
    route = harness.routes.get(endpoint_id)
    assert route is not None
    lease = route.dispatcher.acquire(asyncio.get_running_loop().time() + 30)
    busy = await lease.__aenter__()

    assert (await harness.client.delete(f"{URL}/{endpoint_id}")).status_code == 200
    await endpoints.reconcile_once()
    workers = await workers_of(harness, endpoint_id)
    assert [(w.id, w.status) for w in workers] == [(busy, WorkerStatus.DRAINING)]
    assert ready_ids(harness, endpoint_id) == set()
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert row.status == EndpointStatus.DELETING

    await lease.__aexit__(None, None, None)
    await endpoints.reconcile_once()
    assert await endpoint_row(harness, endpoint_id) is None
    assert worker_objects(runtime) == []
    assert endpoint_id not in harness.routes
    assert "endpoint deleted" in " ".join(m for _, m in await events_of(harness, endpoint_id))


async def test_missing_image_fails_the_worker_backs_off_then_fails_the_endpoint(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    endpoint_id = await make_endpoint(harness.client, image="localhost/missing:1", min_replicas=1)
    await endpoints.reconcile_once()
    (failed,) = await workers_of(harness, endpoint_id)
    assert (failed.status, failed.reason) == (WorkerStatus.FAILED, "image localhost/missing:1 not found")
    assert worker_objects(runtime) == []  # the half-made object is removed

    creates = len([c for c in runtime.calls if c[0] == "create"])
    await endpoints.reconcile_once()  # the replacement waits out the backoff: no create yet
    assert len([c for c in runtime.calls if c[0] == "create"]) == creates
    waiting = [w for w in await workers_of(harness, endpoint_id) if w.status == WorkerStatus.PENDING]
    assert len(waiting) == 1
    assert waiting[0].reason.startswith("waiting 2 s before starting")
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert row.status == EndpointStatus.DEPLOYING

    for _ in range(3):
        endpoints.crash_loops[endpoint_id].retry_at = time.monotonic()  # the backoff has passed
        await endpoints.reconcile_once()
    workers = await workers_of(harness, endpoint_id)
    failed_rows = [w for w in workers if w.status == WorkerStatus.FAILED]
    assert len(failed_rows) == 3  # only the newest failed workers are kept
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert row.status == EndpointStatus.FAILED
    assert row.reason.endswith("the last: image localhost/missing:1 not found")
    wire = (await harness.client.get(f"{URL}/{endpoint_id}")).json()["status"]
    assert wire["status"] == "failed"
    assert "image localhost/missing:1 not found" in wire["error"]
    assert "EndpointFailed" in [t for t, _ in await events_of(harness, endpoint_id)]

    # A PUT with an image that exists bumps the generation: the endpoint leaves `failed` as it rolls.
    answer = await harness.client.put(f"{URL}/{endpoint_id}", json={"image": BUSYBOX})
    assert answer.status_code == 200, answer.text
    await endpoints.reconcile_once()
    await all_ready(harness, endpoints, endpoint_id)
    await endpoints.reconcile_once()
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert row.status == EndpointStatus.RUNNING


async def test_an_exited_worker_is_failed_and_replaced(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    endpoint_id = await make_endpoint(harness.client, min_replicas=1)
    await endpoints.reconcile_once()
    (first,) = await all_ready(harness, endpoints, endpoint_id)
    runtime.exit(first.runtime_id, 3)
    await endpoints.reconcile_once()
    workers = {w.id: w for w in await workers_of(harness, endpoint_id)}
    assert (workers[first.id].status, workers[first.id].reason) == (WorkerStatus.FAILED, "exited with code 3")
    assert first.id not in ready_ids(harness, endpoint_id)
    (replacement,) = [w for w in workers.values() if w.id != first.id]
    assert replacement.status == WorkerStatus.STARTING  # it was ready once: no backoff
    assert runtime.objects[first.runtime_id].state == ObjectState.EXITED  # kept for its logs
    await make_ready(harness, endpoints, replacement)
    assert ready_ids(harness, endpoint_id) == {replacement.id}


async def test_an_unhealthy_worker_is_failed_stopped_and_replaced(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    endpoint_id = await make_endpoint(harness.client, min_replicas=1)
    await endpoints.reconcile_once()
    (first,) = await all_ready(harness, endpoints, endpoint_id)
    reason = "health check GET /health on port 8080 failed 3 times in a row: status 503"
    harness.routes.worker_gone(endpoint_id, first.id)
    await endpoints.on_worker_unhealthy(endpoint_id, first.id, reason)
    await endpoints.reconcile_once()
    workers = {w.id: w for w in await workers_of(harness, endpoint_id)}
    assert (workers[first.id].status, workers[first.id].reason, workers[first.id].health) == (
        WorkerStatus.FAILED,
        reason,
        False,
    )
    assert runtime.objects[first.runtime_id].state == ObjectState.EXITED  # stopped, kept for its logs
    assert [w.status for w in workers.values() if w.id != first.id] == [WorkerStatus.STARTING]


async def test_orphan_worker_objects_are_removed_after_the_grace(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    ghost = await runtime.create(
        RunSpec(name="dy-w-ghost", image=BUSYBOX, labels={LABEL_KIND: "worker", LABEL_ID: "ghost"})
    )
    stranger = RuntimeObject(id="stranger", name="not-ours", labels={LABEL_KIND: "worker"}, state=ObjectState.RUNNING)
    runtime.objects[stranger.id] = stranger  # no installation label: never listed, never touched
    assert LABEL_INSTALLATION not in stranger.labels
    await endpoints.reconcile_once()
    assert ghost.id in runtime.objects  # within the grace
    await asyncio.sleep(0.35)
    await endpoints.reconcile_once()
    assert ghost.id not in runtime.objects
    assert stranger.id in runtime.objects


async def test_a_restarted_server_rebuilds_the_routing_table_from_rows(
    harness: Harness, endpoints: EndpointReconciler
) -> None:
    endpoint_id = await make_endpoint(harness.client, min_replicas=2)
    await endpoints.reconcile_once()
    ready = await all_ready(harness, endpoints, endpoint_id)
    await endpoints.close()

    routes = RouteTable()
    restarted = EndpointReconciler(harness.context, routes)
    try:
        await restarted.reconcile_once()
        route = routes.get(endpoint_id)
        assert route is not None
        assert ready_ids(harness, endpoint_id) == {w.id for w in ready}
        assert route.addresses == {w.id: worker_address(w.published_ports) for w in ready}
        assert restarted.prober.watching() == {w.id for w in ready}
        assert statuses(await workers_of(harness, endpoint_id)) == ["ready", "ready"]
    finally:
        await restarted.close()


async def test_containers_and_workers_share_one_gpu_pool(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    uuids = await simulate_gpus(harness, f"{H100}:2")
    template_id = await make_template(harness.client)
    (container_id,) = await make_containers(harness.client, template_id, product="gpu.h100.1x")
    await ContainerReconciler(harness.context).reconcile_once()
    container = await must_row(harness, container_id)
    assert container.status == ContainerStatus.RUNNING
    assert len(container.gpu_uuids) == 1

    endpoint_id = await make_endpoint(harness.client, min_replicas=2, product_id="serverless.h100")
    await endpoints.reconcile_once()
    workers = await workers_of(harness, endpoint_id)
    placed = [w for w in workers if w.status == WorkerStatus.STARTING]
    waiting = [w for w in workers if w.status == WorkerStatus.PENDING]
    assert len(placed) == 1
    assert len(waiting) == 1
    assert placed[0].gpu_uuids == sorted(set(uuids) - set(container.gpu_uuids))
    (obj,) = worker_objects(runtime)
    assert [gpu.uuid for gpu in runtime.specs[obj.id].gpus] == placed[0].gpu_uuids
    assert "no free GPU" in waiting[0].reason

    # And the other way round: a new container finds every GPU taken.
    (second,) = await make_containers(harness.client, template_id, product="gpu.h100.1x")
    await ContainerReconciler(harness.context).reconcile_once()
    row = await must_row(harness, second)
    assert row.status == ContainerStatus.CREATING
    assert row.reason.startswith("waiting for capacity: no free GPU")


async def test_a_worker_never_ready_within_the_startup_timeout_is_failed(
    harness: Harness, endpoints: EndpointReconciler
) -> None:
    harness.context.settings.worker_startup_timeout = 0.2
    endpoint_id = await make_endpoint(harness.client, min_replicas=1)
    await endpoints.reconcile_once()
    (starting,) = await workers_of(harness, endpoint_id)
    await endpoints.reconcile_once()
    assert (await workers_of(harness, endpoint_id))[0].status == WorkerStatus.STARTING  # not yet
    await asyncio.sleep(0.25)
    await endpoints.reconcile_once()
    workers = {w.id: w for w in await workers_of(harness, endpoint_id)}
    assert workers[starting.id].status == WorkerStatus.FAILED
    assert workers[starting.id].reason == (
        "health check GET /health on port 8080 did not answer 200 within 0.2 s of the container starting"
    )
    assert endpoints.crash_loops[endpoint_id].failures == 1  # it never became ready: the next start backs off


async def test_a_vanished_worker_is_failed_after_the_debounce(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    harness.context.settings.missing_debounce_seconds = 0.2
    endpoint_id = await make_endpoint(harness.client, min_replicas=1)
    await endpoints.reconcile_once()
    (worker,) = await all_ready(harness, endpoints, endpoint_id)
    runtime.vanish(worker.runtime_id)
    await endpoints.reconcile_once()
    assert (await workers_of(harness, endpoint_id))[0].status == WorkerStatus.READY  # one pass is not a loss
    await asyncio.sleep(0.25)
    await endpoints.reconcile_once()
    workers = {w.id: w for w in await workers_of(harness, endpoint_id)}
    assert workers[worker.id].status == WorkerStatus.FAILED
    assert workers[worker.id].reason.startswith("its container disappeared")
    assert len(workers) == 2  # and it is replaced


async def test_an_unreachable_runtime_changes_nothing(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    harness.context.settings.missing_debounce_seconds = 0
    endpoint_id = await make_endpoint(harness.client, min_replicas=1)
    await endpoints.reconcile_once()
    (worker,) = await all_ready(harness, endpoints, endpoint_id)
    await set_desired(harness, endpoint_id, 3)
    runtime.available = False
    await endpoints.reconcile_once()
    await endpoints.reconcile_once()
    workers = await workers_of(harness, endpoint_id)
    assert [(w.id, w.status) for w in workers] == [(worker.id, WorkerStatus.READY)]
    assert ready_ids(harness, endpoint_id) == {worker.id}
    runtime.available = True
    await endpoints.reconcile_once()
    assert statuses(await workers_of(harness, endpoint_id)) == ["ready", "starting", "starting"]


async def test_a_busy_draining_worker_is_removed_at_the_drain_timeout(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    harness.context.settings.worker_drain_timeout = 0.3
    endpoint_id = await make_endpoint(harness.client, min_replicas=0)
    await set_desired(harness, endpoint_id, 1)
    await endpoints.reconcile_once()
    (worker,) = await all_ready(harness, endpoints, endpoint_id)
    route = harness.routes.get(endpoint_id)
    assert route is not None
    lease = route.dispatcher.acquire(asyncio.get_running_loop().time() + 30)
    assert await lease.__aenter__() == worker.id
    await asyncio.sleep(0.35)  # ready for longer than the drain timeout: the timeout counts from the drain
    await set_desired(harness, endpoint_id, 0)
    await endpoints.reconcile_once()
    (draining,) = await workers_of(harness, endpoint_id)
    assert draining.status == WorkerStatus.DRAINING
    await asyncio.sleep(0.35)
    await endpoints.reconcile_once()
    assert await workers_of(harness, endpoint_id) == []
    assert worker_objects(runtime) == []
    await lease.__aexit__(None, None, None)
