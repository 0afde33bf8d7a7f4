"""Rows at rest: a pass reads them as a few columns, never whole, unless what it observes concerns them; they
still hold their GPUs, count in the gauges and keep their objects from being taken for orphans."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select

from dockyard.core.status import ContainerStatus, DesiredState
from dockyard.db.base import new_id, utcnow
from dockyard.db.models import ContainerModel, ProductModel
from dockyard.gpus.allocation import GpuAllocator
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.reconcilers.containers_rows import (
    RESTING_COLUMNS,
    STOPPED_REASON,
    PassState,
    RowTask,
    at_rest_clause,
    holds_nothing_clause,
    needs_task,
    resting_row,
)
from dockyard.runtimes.base import ObjectState, RunSpec, RuntimeObject
from dockyard.services.bootstrap import local_node_id
from tests.conftest import Harness
from tests.fakes import FakeRuntime
from tests.reconcilers.conftest import BUSYBOX, H100, make_containers, make_template, must_row, simulate_gpus

STOPPED_AT_REST: dict[str, Any] = {
    "desired": DesiredState.STOPPED,
    "status": ContainerStatus.STOPPED,
    "reason": STOPPED_REASON,
}
FAILED_AT_REST: dict[str, Any] = {
    "desired": DesiredState.RUNNING,
    "status": ContainerStatus.ERROR,
    "reason": "no free GPU",
    "runtime_id": "",
    "observed_generation": 1,
}


@contextmanager
def whole_rows_loaded() -> Iterator[list[str]]:
    """The ids of the container rows read whole (as ORM objects) while the block runs."""
    loaded: list[str] = []

    def on_load(target: ContainerModel, _context: object) -> None:
        loaded.append(target.id)

    event.listen(ContainerModel, "load", on_load)
    try:
        yield loaded
    finally:
        event.remove(ContainerModel, "load", on_load)


async def base_row(harness: Harness) -> ContainerModel:
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))
    return await must_row(harness, container_id)


async def insert_rows(harness: Harness, base: ContainerModel, count: int, **fields: Any) -> list[str]:
    """`count` rows like `base` (same organization, product and spec) with `fields` set."""
    ids = [new_id() for _ in range(count)]
    async with harness.context.db.write() as session:
        for container_id in ids:
            values: dict[str, Any] = {
                "org_id": base.org_id,
                "name": "rest",
                "idc_id": base.idc_id,
                "product_id": base.product_id,
                "template_id": base.template_id,
                "spec": base.spec,
                **fields,
            }
            session.add(ContainerModel(id=container_id, **values))
    return ids


async def make_object(
    runtime: FakeRuntime, row: ContainerModel, state: ObjectState, generation: int | None = None
) -> RuntimeObject:
    generation = row.generation if generation is None else generation
    labels = {
        "dockyard.kind": "container",
        "dockyard.id": row.id,
        "dockyard.org": row.org_id,
        "dockyard.generation": str(generation),
    }
    obj = await runtime.create(RunSpec(name=f"dy-{row.id[:12]}-g{generation}", image=BUSYBOX, labels=labels))
    obj = replace(obj, state=state)
    runtime.objects[obj.id] = obj
    return obj


async def test_a_pass_reads_rows_at_rest_as_columns_only(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    base = await base_row(harness)
    stopped = await insert_rows(harness, base, 40, **STOPPED_AT_REST)
    failed = await insert_rows(harness, base, 5, **FAILED_AT_REST)
    versions = {row_id: (await must_row(harness, row_id)).version for row_id in stopped + failed}

    with whole_rows_loaded() as loaded:
        await reconciler.reconcile_once()

    assert loaded == [base.id]  # only the new container, which has work to do
    assert [call for call, _ in runtime.calls] == ["create", "start"]
    assert {row_id: (await must_row(harness, row_id)).version for row_id in stopped + failed} == versions
    registry = harness.context.registry
    assert registry.get_sample_value("dockyard_containers", {"status": "stopped"}) == 40
    assert registry.get_sample_value("dockyard_containers", {"status": "error"}) == 5
    assert registry.get_sample_value("dockyard_containers", {"status": "running"}) == 1

    with whole_rows_loaded() as loaded:  # the running container has its object now: still read whole
        await reconciler.reconcile_once()
    assert loaded == [base.id]


async def test_a_row_at_rest_whose_object_runs_is_stopped(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    base = await base_row(harness)
    recorded, unrecorded, quiet = await insert_rows(harness, base, 3, **STOPPED_AT_REST)
    recorded_obj = await make_object(runtime, await must_row(harness, recorded), ObjectState.RUNNING)
    async with harness.context.db.write() as session:
        row = await session.get(ContainerModel, recorded)
        assert row is not None
        row.runtime_id = recorded_obj.id
    unrecorded_obj = await make_object(runtime, await must_row(harness, unrecorded), ObjectState.EXITED)

    with whole_rows_loaded() as loaded:
        await reconciler.reconcile_once()

    assert set(loaded) == {base.id, recorded, unrecorded}
    assert quiet not in loaded
    assert runtime.objects[recorded_obj.id].state == ObjectState.EXITED
    assert ("stop", recorded_obj.name) in runtime.calls
    assert (await must_row(harness, recorded)).status == ContainerStatus.STOPPED
    # An object the row did not know of is recorded as the row's, not taken for an orphan.
    row = await must_row(harness, unrecorded)
    assert (row.status, row.runtime_id) == (ContainerStatus.STOPPED, unrecorded_obj.id)
    assert set(runtime.objects) >= {recorded_obj.id, unrecorded_obj.id}
    registry = harness.context.registry
    assert registry.get_sample_value("dockyard_containers", {"status": "stopped"}) == 3
    assert registry.get_sample_value("dockyard_containers", {"status": "zombie"}) == 0


async def test_a_row_at_rest_whose_object_disappears_is_debounced_then_an_error(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))
    await reconciler.reconcile_once()
    await harness.client.post(f"/api/v1/containers/{container_id}/stop")
    await reconciler.reconcile_once()
    assert (await must_row(harness, container_id)).status == ContainerStatus.STOPPED
    with whole_rows_loaded() as loaded:  # at rest, its exited object as recorded: nothing to do
        await reconciler.reconcile_once()
    assert loaded == []

    runtime.objects.clear()
    await reconciler.reconcile_once()
    assert (await must_row(harness, container_id)).missing_since is not None
    await asyncio.sleep(harness.context.settings.missing_debounce_seconds + 0.1)
    await reconciler.reconcile_once()

    row = await must_row(harness, container_id)
    assert (row.status, row.runtime_id) == (ContainerStatus.ERROR, "")
    assert row.reason == "container disappeared: its runtime object was removed outside Dockyard"


async def test_a_row_at_rest_on_an_unreachable_idc_becomes_unknown(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    base = await base_row(harness)
    (stopped,) = await insert_rows(harness, base, 1, **STOPPED_AT_REST)
    (failed,) = await insert_rows(harness, base, 1, **FAILED_AT_REST)
    (elsewhere,) = await insert_rows(harness, base, 1, **STOPPED_AT_REST, idc_id="nowhere")
    runtime.available = False

    await reconciler.reconcile_once()

    assert (await must_row(harness, stopped)).status == ContainerStatus.UNKNOWN
    assert (await must_row(harness, failed)).status == ContainerStatus.ERROR
    row = await must_row(harness, elsewhere)
    assert (row.status, row.reason) == (
        ContainerStatus.UNKNOWN,
        "the container runtime of IDC nowhere cannot be reached; the operator has been told",
    )
    registry = harness.context.registry
    assert registry.get_sample_value("dockyard_containers", {"status": "unknown"}) == 2
    assert registry.get_sample_value("dockyard_containers", {"status": "stopped"}) == 0
    assert registry.get_sample_value("dockyard_containers", {"status": "error"}) == 1


async def test_gpus_of_rows_at_rest_stay_held(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    uuids = await simulate_gpus(harness, f"{H100}:2")
    template_id = await make_template(harness.client)
    first, second = await make_containers(harness.client, template_id, product="gpu.h100.1x", count=2)
    base = await must_row(harness, first)
    (resting,) = await insert_rows(harness, base, 1, **STOPPED_AT_REST, gpu_uuids=[uuids[0]], node_id=local_node_id())

    with whole_rows_loaded() as loaded:
        await ContainerReconciler(harness.context).reconcile_once()  # a fresh instance: nothing in memory

    assert resting not in loaded
    rows = [await must_row(harness, i) for i in (first, second)]
    assert sorted(row.status for row in rows) == [ContainerStatus.CREATING, ContainerStatus.RUNNING]
    assert [row.gpu_uuids for row in rows if row.status == ContainerStatus.RUNNING] == [[uuids[1]]]
    assert (await must_row(harness, resting)).gpu_uuids == [uuids[0]]
    assert harness.context.registry.get_sample_value("dockyard_gpus_allocated") == 2


async def test_needs_task_is_false_only_where_the_row_task_does_nothing(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    """Every combination of a row at rest and its objects: where `needs_task` says the pass may skip the
    row, running its task anyway changes neither the row nor the runtime."""
    base = await base_row(harness)
    now = utcnow()
    ids: list[str] = []
    shapes = itertools.product(
        ("", "own", "other"),  # runtime_id: none, the object's, another one
        (False, True),  # an update asked for since (generation ahead of observed)
        ([], [{"containerPort": 8080, "port": 30000, "protocol": "TCP"}]),
        (None, now - timedelta(seconds=1)),  # missing_since
        (None, ObjectState.RUNNING, ObjectState.EXITED, "older"),  # the object the runtime lists
    )
    for runtime_id, updated, ports, missing_since, listed in shapes:
        (row_id,) = await insert_rows(
            harness,
            base,
            1,
            **STOPPED_AT_REST,
            runtime_id="c-elsewhere" if runtime_id == "other" else "",
            generation=2 if updated else 1,
            observed_generation=1,
            published_ports=ports,
            missing_since=missing_since,
        )
        row = await must_row(harness, row_id)
        if listed is not None:
            state = ObjectState.EXITED if listed == "older" else ObjectState(listed)
            obj = await make_object(runtime, row, state, generation=0 if listed == "older" else None)
            if runtime_id == "own":
                async with harness.context.db.write() as session:
                    stored = await session.get(ContainerModel, row_id)
                    assert stored is not None
                    stored.runtime_id = obj.id
        ids.append(row_id)
    for listed_state in (None, ObjectState.RUNNING, ObjectState.EXITED):
        (row_id,) = await insert_rows(harness, base, 1, **FAILED_AT_REST)
        if listed_state is not None:
            await make_object(runtime, await must_row(harness, row_id), listed_state)
        ids.append(row_id)

    async with harness.context.db.read() as session:
        columns = select(*RESTING_COLUMNS).where(at_rest_clause(), ContainerModel.id.in_(ids))
        resting = {row.id: row for row in map(resting_row, await session.execute(columns))}
        bare = set(
            await session.scalars(select(ContainerModel.id).where(holds_nothing_clause(), ContainerModel.id.in_(ids)))
        )
        products = {p.id: p for p in await session.scalars(select(ProductModel))}
    assert set(resting) == set(ids)
    objects: dict[str, list[RuntimeObject]] = {}
    for obj in await runtime.list_managed():
        objects.setdefault(obj.resource_id, []).append(obj)
    state = PassState(
        db=harness.context.db,
        settings=harness.context.settings,
        box=harness.context.box,
        now=utcnow(),
        runtimes=harness.context.runtimes,
        products=products,
        ssh_keys={},
        allocator=GpuAllocator([]),
        objects=objects,
        unreachable={},
    )
    skipped = [row_id for row_id in ids if not needs_task(resting[row_id], objects.get(row_id, []), True)]
    # Rows holding nothing are never read unless an object carries their id (or their IDC is unreachable).
    assert 0 < len(bare) < len(ids)
    assert all(needs_task(resting[row_id], objects.get(row_id, []), True) == (row_id in objects) for row_id in bare)
    assert 0 < len(skipped) < len(ids)
    for row_id in skipped:
        row = await must_row(harness, row_id)
        calls = list(runtime.calls)
        await RowTask(state, row).run()
        assert (await must_row(harness, row_id)).version == row.version, row_id
        assert runtime.calls == calls, row_id
