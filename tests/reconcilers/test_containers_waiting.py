"""A container that does not fit waits, over the in-memory runtime and a real database (SQLite and PostgreSQL):
it stays `creating` with a reason saying what it waits for, holds nothing, is placed by the first pass that
finds room (oldest first), says it waits for its image and start once placed, and a worker letting go of capacity
wakes the loop. The real-engine twin is in test_containers_engine.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from dockyard.core.status import ContainerStatus, WorkerStatus
from dockyard.db.base import utcnow
from dockyard.db.models import ContainerModel
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.reconcilers.core import PLACED_REASON
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.runtimes.base import RunSpec, RuntimeObject
from dockyard.services.bootstrap import local_node_id
from tests.conftest import Harness
from tests.fakes import FakeRuntime
from tests.reconcilers.conftest import H100, event_types, make_containers, make_template, must_row, simulate_gpus
from tests.reconcilers.test_endpoints import make_endpoint, workers_of

GPU = "gpu.h100.1x"
WAITING_FOR_THE_GPU = (
    "waiting for capacity: no free GPU: needs 1 \N{MULTIPLICATION SIGN} H100, all 1 on IDC local are in use; "
    "it starts by itself once another container or endpoint worker on IDC local is deleted and frees enough"
)


async def test_a_second_one_gpu_container_on_a_one_gpu_machine_waits_for_a_free_gpu(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    (gpu,) = await simulate_gpus(harness, f"{H100}:1")
    template_id = await make_template(harness.client)
    (first,) = await make_containers(harness.client, template_id, product=GPU)
    await reconciler.reconcile_once()
    (second,) = await make_containers(harness.client, template_id, product=GPU)
    await reconciler.reconcile_once()

    row = await must_row(harness, second)
    assert (row.status, row.reason) == (ContainerStatus.CREATING, WAITING_FOR_THE_GPU)
    assert (row.gpu_uuids, row.node_id, row.runtime_id) == ([], "", "")
    got = (await harness.client.get(f"/api/v1/containers/{second}")).json()
    assert (got["status"], got["reason"]) == ("creating", WAITING_FOR_THE_GPU)
    assert await event_types(harness, second) == ["Waiting"]
    assert [obj.labels["dockyard.id"] for obj in runtime.objects.values()] == [first]

    # Waiting is not failing: each pass asks again, and while nothing changes it writes nothing and says it once.
    calls = len(runtime.calls)
    await reconciler.reconcile_once()
    assert (await must_row(harness, second)).version == row.version
    assert runtime.calls[calls:] == []
    assert await event_types(harness, second) == ["Waiting"]

    assert (await harness.client.delete(f"/api/v1/containers/{first}")).status_code == 200
    await reconciler.reconcile_once()  # the teardown runs first and frees the GPU for the one waiting
    row = await must_row(harness, second)
    assert (row.status, row.reason, row.gpu_uuids) == (ContainerStatus.RUNNING, "", [gpu])
    assert await event_types(harness, second) == ["Waiting", "Scheduled", "Started"]


async def test_a_waiting_container_can_be_stopped_started_and_deleted(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    await simulate_gpus(harness, f"{H100}:1")
    template_id = await make_template(harness.client)
    await make_containers(harness.client, template_id, product=GPU)
    await reconciler.reconcile_once()
    (waiting,) = await make_containers(harness.client, template_id, product=GPU)
    await reconciler.reconcile_once()

    assert (await harness.client.post(f"/api/v1/containers/{waiting}/stop")).status_code == 200
    await reconciler.reconcile_once()
    assert (await must_row(harness, waiting)).status == ContainerStatus.STOPPED
    assert (await harness.client.post(f"/api/v1/containers/{waiting}/start")).status_code == 200
    await reconciler.reconcile_once()
    assert ((row := await must_row(harness, waiting)).status, row.reason) == (
        ContainerStatus.CREATING,
        WAITING_FOR_THE_GPU,
    )
    assert (await harness.client.delete(f"/api/v1/containers/{waiting}")).status_code == 200
    await reconciler.reconcile_once()
    assert (await harness.client.get(f"/api/v1/containers/{waiting}")).status_code == 404
    assert len(runtime.objects) == 1


async def test_the_oldest_waiting_container_is_placed_first(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    """First come, first served, whatever the ids: the rows' ages are set so that the order of their ids is the
    reverse of it. A larger request that waits does not hold back a smaller one that fits what is free."""
    uuids = await simulate_gpus(harness, f"{H100}:2")
    assert (await harness.admin.post("/admin/v1/products", json=PAIR)).status_code == 200
    template_id = await make_template(harness.client)
    (holder,) = await make_containers(harness.client, template_id, product=GPU)
    await reconciler.reconcile_once()
    waiting = sorted(await make_containers(harness.client, template_id, product=GPU, count=3))
    (large,) = await make_containers(harness.client, template_id, product=PAIR["id"])
    # The ids sorted: the last is the oldest. The pair asks for both GPUs and is older than all three.
    now = utcnow()
    ages = {large: now - timedelta(minutes=10), **{c: now - timedelta(minutes=i) for i, c in enumerate(waiting)}}
    async with harness.context.db.write() as session:
        for container_id, created_at in ages.items():
            await session.execute(
                update(ContainerModel).where(ContainerModel.id == container_id).values(created_at=created_at)
            )

    await reconciler.reconcile_once()
    # One GPU is free: the pair cannot use it, the oldest of the three takes it.
    oldest, middle, youngest = reversed(waiting)
    assert [(await must_row(harness, c)).status for c in (large, oldest, middle, youngest)] == [
        ContainerStatus.CREATING,
        ContainerStatus.RUNNING,
        ContainerStatus.CREATING,
        ContainerStatus.CREATING,
    ]
    assert (await must_row(harness, large)).reason.startswith(
        "waiting for capacity: no free GPU: needs 2 \N{MULTIPLICATION SIGN} H100, at most 1 of 2 "
    )

    assert (await harness.client.delete(f"/api/v1/containers/{oldest}")).status_code == 200
    await reconciler.reconcile_once()
    assert [(await must_row(harness, c)).status for c in (large, middle, youngest)] == [
        ContainerStatus.CREATING,
        ContainerStatus.RUNNING,
        ContainerStatus.CREATING,
    ]

    # Both GPUs free at once: the pair, older than everyone, gets them.
    for container_id in (holder, middle):
        assert (await harness.client.delete(f"/api/v1/containers/{container_id}")).status_code == 200
    await reconciler.reconcile_once()
    row = await must_row(harness, large)
    assert (row.status, sorted(row.gpu_uuids)) == (ContainerStatus.RUNNING, sorted(uuids))
    assert (await must_row(harness, youngest)).status == ContainerStatus.CREATING


PAIR = {
    "id": "gpu.h100.2x",
    "idc_id": "local",
    "category": "instance",
    "gpu_model": "H100",
    "gpu_count": 2,
    "gpu_memory_mb": 81559,
    "cpu": 32,
    "memory_mb": 256 * 1024,
    "pids_limit": 4096,
    "disk_gb": 100,
    "price_per_hour": 4.98,
    "product_line": "h100",
}


async def test_a_worker_that_lets_go_of_its_gpu_wakes_the_containers_loop(
    harness: Harness, reconciler: ContainerReconciler, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    await simulate_gpus(harness, f"{H100}:1")
    endpoint_id = await make_endpoint(harness.client, min_replicas=1, product_id="serverless.h100")
    await endpoints.reconcile_once()
    (worker,) = await workers_of(harness, endpoint_id)
    assert worker.status == WorkerStatus.STARTING
    (container_id,) = await make_containers(harness.client, await make_template(harness.client), product=GPU)
    await reconciler.reconcile_once()
    assert (await must_row(harness, container_id)).reason == WAITING_FOR_THE_GPU

    woken: list[str] = []
    harness.context.waker = woken.append
    assert (await harness.client.delete(f"/gpus/v2/endpoints/{endpoint_id}")).status_code == 200
    woken.clear()  # the API wakes the endpoints loop; what matters is who wakes the containers loop
    for _ in range(5):
        if reconciler.name in woken:
            break
        await endpoints.reconcile_once()
    assert reconciler.name in woken
    assert await workers_of(harness, endpoint_id) == []

    await reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    assert (row.status, row.node_id) == (ContainerStatus.RUNNING, local_node_id())


async def test_a_placed_container_says_it_waits_for_its_image_and_start(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The create (the image's pull, on a real engine) is held until the row has been read mid-pass.
    creating, release = asyncio.Event(), asyncio.Event()
    create = runtime.create

    async def slow_create(spec: RunSpec) -> RuntimeObject:
        creating.set()
        await release.wait()
        return await create(spec)

    monkeypatch.setattr(runtime, "create", slow_create)
    template_id = await make_template(harness.client)
    (container_id,) = await make_containers(harness.client, template_id)
    passing = asyncio.create_task(reconciler.reconcile_once())
    await asyncio.wait_for(creating.wait(), 10)
    got = (await harness.client.get(f"/api/v1/containers/{container_id}")).json()
    assert (got["status"], got["reason"]) == ("creating", PLACED_REASON.format(local_node_id()))
    release.set()
    await passing
    assert (await must_row(harness, container_id)).status == ContainerStatus.RUNNING
