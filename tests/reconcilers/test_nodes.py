"""Placement counts a node's CPUs and memory as it counts GPUs (over the in-memory runtime; the real-engine twin is
in test_containers_engine.py): the node's figures come from its engine (or the operator), times the overcommit
ratios; what does not fit now waits with the reason, a container `creating` and a worker `pending`, until room
frees; what could never fit (more than the node has) ends a container in `error`; containers and workers share
one node."""

from __future__ import annotations

from sqlalchemy import select

from dockyard.core.status import ContainerStatus, WorkerStatus
from dockyard.db.models import NodeModel
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.runtimes.base import HostCapacity
from dockyard.services.bootstrap import local_node_id
from tests.conftest import Harness
from tests.fakes import FakeRuntime
from tests.reconcilers.conftest import event_types, make_containers, make_template, must_row
from tests.reconcilers.test_endpoints import make_endpoint, workers_of

# A 2-core host with 4 GiB: at the default overcommit (4 vCPUs per core, memory 1:1) it offers 8 vCPUs and 4096 MB,
# room for four cpu.small (1 vCPU, 1024 MB each).
SMALL_HOST = HostCapacity(cpus=2.0, memory_mb=4096)
NO_ROOM_NOW = "no node of IDC local has 1 vCPUs and 1024 MB free (the most free on one: 4 of 8 vCPUs and 0 of 4096 MB)"
NO_ROOM = f"{NO_ROOM_NOW}; stop or delete a container, or try again later"


async def test_the_node_offers_what_its_engine_reports_or_the_operator_declares(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    runtime.host = SMALL_HOST
    await reconciler.reconcile_once()
    async with harness.context.db.read() as session:
        node = await session.get(NodeModel, local_node_id())
        assert node is not None
        assert (node.cpus, node.memory_mb) == (2.0, 4096)
    nodes = (await harness.admin.get("/admin/v1/nodes")).json()
    assert (nodes[0]["cpus"], nodes[0]["memory_mb"]) == (2.0, 4096)

    harness.context.settings.node_memory_mb = 8192  # declared by the operator; the CPUs still come from the engine
    await ContainerReconciler(harness.context).reconcile_once()
    async with harness.context.db.read() as session:
        figures = (await session.execute(select(NodeModel.cpus, NodeModel.memory_mb))).one()
    assert tuple(figures) == (2.0, 8192)


async def test_a_container_that_does_not_fit_waits_with_the_reason_until_room_frees(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    runtime.host = SMALL_HOST
    ids = await make_containers(harness.client, await make_template(harness.client), count=5)
    await reconciler.reconcile_once()

    rows = [await must_row(harness, container_id) for container_id in ids]
    running = [row for row in rows if row.status == ContainerStatus.RUNNING]
    waiting = [row for row in rows if row.status == ContainerStatus.CREATING]
    assert (len(running), len(waiting)) == (4, 1)
    assert {row.node_id for row in running} == {local_node_id()}
    assert waiting[0].reason == (
        f"waiting for capacity: {NO_ROOM_NOW}; it starts by itself once another container or endpoint worker on "
        "IDC local is deleted and frees enough"
    )
    assert waiting[0].node_id == ""
    assert "Waiting" in await event_types(harness, waiting[0].id)
    assert len(runtime.objects) == 4

    # A stopped container keeps its share (as it keeps its GPUs); a deleted one frees it, and the waiting one
    # starts by itself, without a restart.
    assert (await harness.client.post(f"/api/v1/containers/{running[0].id}/stop")).status_code == 200
    await reconciler.reconcile_once()
    assert (await must_row(harness, waiting[0].id)).status == ContainerStatus.CREATING
    assert (await harness.client.delete(f"/api/v1/containers/{running[0].id}")).status_code == 200
    await reconciler.reconcile_once()
    started = await must_row(harness, waiting[0].id)
    assert (started.status, started.reason, started.node_id) == (ContainerStatus.RUNNING, "", local_node_id())


async def test_a_container_larger_than_any_node_is_refused_with_the_reason(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    """Waiting would never end: cpu.large asks 4096 MB of a node that has 2048 in all."""
    runtime.host = HostCapacity(cpus=2.0, memory_mb=2048)
    (container_id,) = await make_containers(harness.client, await make_template(harness.client), product="cpu.large")
    await reconciler.reconcile_once()

    row = await must_row(harness, container_id)
    assert (row.status, row.reason) == (
        ContainerStatus.ERROR,
        "no node of IDC local has 2 vCPUs and 4096 MB in all (the largest: 8 vCPUs and 2048 MB); "
        "choose a smaller product",
    )
    assert "Unschedulable" in await event_types(harness, container_id)
    assert runtime.objects == {}


async def test_a_worker_that_does_not_fit_waits_pending_with_the_reason(
    harness: Harness, reconciler: ContainerReconciler, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    """Containers and workers draw from one node: three containers leave room for one worker of two wanted."""
    runtime.host = SMALL_HOST
    containers = await make_containers(harness.client, await make_template(harness.client), count=3)
    await reconciler.reconcile_once()
    endpoint_id = await make_endpoint(harness.client, min_replicas=2)
    await endpoints.reconcile_once()

    workers = await workers_of(harness, endpoint_id)
    assert sorted(worker.status for worker in workers) == [WorkerStatus.PENDING, WorkerStatus.STARTING]
    (waiting,) = [worker for worker in workers if worker.status == WorkerStatus.PENDING]
    assert waiting.reason == f"waiting to be placed: {NO_ROOM}"
    await endpoints.reconcile_once()  # still no room: it goes on waiting
    assert (await workers_of(harness, endpoint_id))[-1].status in (WorkerStatus.PENDING, WorkerStatus.STARTING)
    assert sum(worker.status == WorkerStatus.PENDING for worker in await workers_of(harness, endpoint_id)) == 1

    assert (await harness.client.delete(f"/api/v1/containers/{containers[0]}")).status_code == 200
    await reconciler.reconcile_once()
    await endpoints.reconcile_once()
    assert [w.status for w in await workers_of(harness, endpoint_id)] == [WorkerStatus.STARTING] * 2
