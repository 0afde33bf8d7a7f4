"""The containers reconciler when things go wrong, over the in-memory runtime and a real database: GPUs
under contention, a crashed server's successor, orphans, and a runtime that cannot be reached."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from sqlalchemy import update

from dockyard.core.status import ContainerStatus
from dockyard.db.models import ContainerModel
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.runtimes.base import RunSpec
from dockyard.services.bootstrap import local_node_id
from tests.conftest import Harness
from tests.fakes import FakeRuntime
from tests.reconcilers.conftest import (
    BUSYBOX,
    H100,
    event_types,
    make_containers,
    make_template,
    must_row,
    row_of,
    simulate_gpus,
)


def labelled_gpus(runtime: FakeRuntime) -> dict[str, list[str]]:
    return {o.labels["dockyard.id"]: o.gpu_uuids for o in runtime.objects.values()}


async def test_concurrent_creates_never_share_a_gpu(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    uuids = await simulate_gpus(harness, f"{H100}:8")
    # More containers than GPUs on purpose: the organization's quotas (8 GPUs by default) must let them be asked.
    orgs = (await harness.admin.get("/admin/v1/organizations")).json()
    quotas = {"gpus": 12, "vcpus": 12 * 16, "memory_mb": 12 * 128 * 1024}
    answer = await harness.admin.put(f"/admin/v1/organizations/{orgs[0]['id']}/quotas", json=quotas)
    assert answer.status_code == 200, answer.text
    ids = await make_containers(harness.client, await make_template(harness.client), product="gpu.h100.1x", count=12)

    await reconciler.reconcile_once()

    rows = [await must_row(harness, container_id) for container_id in ids]
    running = [row for row in rows if row.status == ContainerStatus.RUNNING]
    waiting = [row for row in rows if row.status == ContainerStatus.CREATING]
    assert (len(running), len(waiting)) == (8, 4)
    held = [uuid for row in running for uuid in row.gpu_uuids]
    assert sorted(held) == sorted(uuids)
    assert labelled_gpus(runtime) == {row.id: row.gpu_uuids for row in running}
    for row in waiting:
        assert row.reason.startswith(
            "waiting for capacity: no free GPU: needs 1 \N{MULTIPLICATION SIGN} H100, all 8 on IDC local are in use; "
        )
        assert row.gpu_uuids == []
        assert "Waiting" in await event_types(harness, row.id)
    registry = harness.context.registry
    assert registry.get_sample_value("dockyard_gpus_allocated") == 8
    assert registry.get_sample_value("dockyard_gpus_total") == 8
    assert registry.get_sample_value("dockyard_containers", {"status": "running"}) == 8
    assert registry.get_sample_value("dockyard_containers", {"status": "creating"}) == 4


async def test_a_deleted_container_frees_its_gpu_for_the_one_waiting(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    await simulate_gpus(harness, f"{H100}:1")
    first, second = await make_containers(
        harness.client, await make_template(harness.client), product="gpu.h100.1x", count=2
    )
    await reconciler.reconcile_once()
    rows = {row.id: row for row in [await must_row(harness, first), await must_row(harness, second)]}
    winner = next(i for i, row in rows.items() if row.status == ContainerStatus.RUNNING)
    loser = second if winner == first else first
    assert rows[loser].status == ContainerStatus.CREATING
    gpu = rows[winner].gpu_uuids

    await harness.client.delete(f"/api/v1/containers/{winner}")
    await reconciler.reconcile_once()  # the teardown runs first in the pass and frees the GPU for the one waiting

    assert await row_of(harness, winner) is None
    row = await must_row(harness, loser)
    assert (row.status, row.gpu_uuids) == (ContainerStatus.RUNNING, gpu)


async def test_gpu_allocation_respects_min_cuda_version(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    await simulate_gpus(harness, f"{H100}:2", cuda="12.4")
    template_id = await make_template(harness.client)
    (container_id,) = await make_containers(harness.client, template_id, product="gpu.h100.1x")
    async with harness.context.db.write() as session:
        row = await session.get(ContainerModel, container_id)
        assert row is not None
        row.spec = {**row.spec, "min_cuda_version": "12.10"}

    await reconciler.reconcile_once()

    row = await must_row(harness, container_id)
    assert row.status == ContainerStatus.ERROR
    assert "CUDA 12.10 or newer" in row.reason
    assert runtime.objects == {}


async def test_a_new_reconciler_rebuilds_allocations_from_rows_and_labels(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    uuids = await simulate_gpus(harness, f"{H100}:4")
    template_id = await make_template(harness.client)
    # A zombie from a lost database holds two GPUs through its label alone (its organization is unknown).
    await runtime.create(
        RunSpec(
            name="dy-lost-g1",
            image=BUSYBOX,
            labels={
                "dockyard.kind": "container",
                "dockyard.id": "lost",
                "dockyard.org": "gone",
                "dockyard.gpus": f"{uuids[0]},{uuids[1]}",
            },
        )
    )
    # A crash after the allocation was recorded and before anything was created.
    (allocated,) = await make_containers(harness.client, template_id, product="gpu.h100.1x")
    async with harness.context.db.write() as session:
        await session.execute(
            update(ContainerModel)
            .where(ContainerModel.id == allocated)
            .values(gpu_uuids=[uuids[3]], node_id=local_node_id())
        )
    others = await make_containers(harness.client, template_id, product="gpu.h100.1x", count=2)

    await ContainerReconciler(harness.context).reconcile_once()  # a fresh instance: nothing in memory

    row = await must_row(harness, allocated)
    assert (row.status, row.gpu_uuids) == (ContainerStatus.RUNNING, [uuids[3]])
    rows = [await must_row(harness, i) for i in others]
    assert sorted(row.status for row in rows) == [ContainerStatus.CREATING, ContainerStatus.RUNNING]
    assert [row.gpu_uuids for row in rows if row.status == ContainerStatus.RUNNING] == [[uuids[2]]]
    assert labelled_gpus(runtime)["lost"] == [uuids[0], uuids[1]]


async def test_orphan_becomes_a_zombie_and_is_removed_after_the_grace(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    (known,) = await make_containers(harness.client, await make_template(harness.client))
    await reconciler.reconcile_once()
    org_id = (await must_row(harness, known)).org_id
    orphan = "0b8f4c1e-0000-4000-8000-000000000001"
    await runtime.create(
        RunSpec(
            name="dy-0b8f4c1e-000-g1",
            image=BUSYBOX,
            labels={"dockyard.kind": "container", "dockyard.id": orphan, "dockyard.org": org_id},
        )
    )
    await runtime.create(
        RunSpec(
            name="dy-nobody-g1",
            image=BUSYBOX,
            labels={"dockyard.kind": "container", "dockyard.id": "nobody", "dockyard.org": "no-such-org"},
        )
    )
    unmanaged = await FakeRuntime(installation_id="someone-else").create(
        RunSpec(name="not-ours", image=BUSYBOX, labels={})
    )
    runtime.objects["foreign"] = replace(unmanaged, id="foreign")

    await reconciler.reconcile_once()
    row = await must_row(harness, orphan)
    assert row.status == ContainerStatus.ZOMBIE
    grace = harness.context.settings.zombie_grace_seconds
    assert row.reason == (
        f"the runtime still runs this container but Dockyard has no record of it; it will be removed after {grace:g} s"
    )
    assert {o.name for o in runtime.objects.values()} == {
        f"dy-{known[:12]}-g1",
        "dy-0b8f4c1e-000-g1",
        "dy-nobody-g1",
        "not-ours",
    }

    await asyncio.sleep(grace + 0.1)
    await reconciler.reconcile_once()

    assert await row_of(harness, orphan) is None
    assert {o.name for o in runtime.objects.values()} == {f"dy-{known[:12]}-g1", "not-ours"}
    assert (await must_row(harness, known)).status == ContainerStatus.RUNNING


async def test_unreachable_runtime_makes_rows_unknown_and_changes_nothing_else(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    await simulate_gpus(harness, f"{H100}:2")
    template_id = await make_template(harness.client)
    running, stopped = await make_containers(harness.client, template_id, product="gpu.h100.1x", count=2)
    (deleting,) = await make_containers(harness.client, template_id)
    await harness.client.post(f"/api/v1/containers/{stopped}/stop")
    await reconciler.reconcile_once()
    await reconciler.reconcile_once()
    assert (await must_row(harness, stopped)).status == ContainerStatus.STOPPED
    gpus_before = {i: (await must_row(harness, i)).gpu_uuids for i in (running, stopped)}

    runtime.available = False
    await harness.client.delete(f"/api/v1/containers/{deleting}")
    (waiting,) = await make_containers(harness.client, template_id)
    await reconciler.reconcile_once()

    for container_id in (running, stopped):
        row = await must_row(harness, container_id)
        assert row.status == ContainerStatus.UNKNOWN
        assert row.reason == "the container runtime of IDC local cannot be reached; the operator has been told"
        assert row.gpu_uuids == gpus_before[container_id]
    assert (await must_row(harness, deleting)).status == ContainerStatus.TERMINATING
    assert (await must_row(harness, waiting)).status == ContainerStatus.CREATING
    (idc,) = (await harness.admin.get("/admin/v1/idcs")).json()
    assert idc["runtime_error"] == "fake runtime is down"  # why, for the operator only

    runtime.available = True
    await reconciler.reconcile_once()
    assert (await must_row(harness, running)).status == ContainerStatus.RUNNING
    assert (await must_row(harness, stopped)).status == ContainerStatus.STOPPED
    assert (await must_row(harness, waiting)).status == ContainerStatus.RUNNING
    assert await row_of(harness, deleting) is None
    (idc,) = (await harness.admin.get("/admin/v1/idcs")).json()
    assert (idc["runtime_error"], idc["runtime_error_since"]) == ("", None)
