"""Rows an earlier release stored with what the API now refuses, over the in-memory runtime and a real database
(SQLite and PostgreSQL): a container is stopped (its objects removed, `error` naming the value and saying to
update it) and an endpoint's workers are drained (`failed`, the same way), by a reconciler as it starts after
the upgrade; an update without the value runs them again. The real-engine twin is in test_containers_engine.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import update

from dockyard.core.status import ContainerStatus, EndpointStatus, WorkerStatus
from dockyard.db.models import ContainerModel, EndpointModel
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.reconcilers.endpoints import EndpointReconciler
from tests.conftest import Harness
from tests.fakes import DEFAULT_NETWORK, FakeRuntime
from tests.reconcilers.conftest import event_types, make_containers, make_template, must_row
from tests.reconcilers.test_endpoints import (
    URL,
    all_ready,
    endpoint_row,
    events_of,
    make_endpoint,
    worker_objects,
    workers_of,
)

STORED_BEFORE = "stopped: its configuration, stored before Dockyard checked it, holds what is now refused: "


async def store(
    harness: Harness, model: type[ContainerModel | EndpointModel], row_id: str, change: Callable[[dict[str, Any]], None]
) -> None:
    """Rewrite a row's stored spec as an earlier release could have stored it."""
    async with harness.context.db.write() as session:
        row = await session.get(model, row_id)
        assert row is not None
        spec = dict(row.spec)
        change(spec)
        await session.execute(update(model).where(model.id == row_id).values(spec=spec))


async def test_a_container_stored_with_a_refused_mount_path_is_stopped_until_updated(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    storage = await harness.client.post(
        "/gpus/v2/network-storages", json={"name": "data", "region_id": "local", "size_gb": 1}
    )
    assert storage.status_code == 200, storage.text
    storage_id = storage.json()["id"]
    template_id = await make_template(harness.client)
    storages = [{"containerPath": "/data", "id": storage_id}]
    (container_id,) = await make_containers(harness.client, template_id, storages=storages)
    await reconciler.reconcile_once()
    assert len(runtime.objects) == 1
    injected = "/data,source=dockyard-ns-someone-else"

    def inject(spec: dict[str, Any]) -> None:
        spec["volumes"] = [{"storage_id": storage_id, "mount_path": injected}]

    await store(harness, ContainerModel, container_id, inject)
    restarted = ContainerReconciler(harness.context)  # the server after the upgrade: nothing in memory
    await restarted.reconcile_once()

    row = await must_row(harness, container_id)
    assert (row.status, row.reason) == (
        ContainerStatus.ERROR,
        f"{STORED_BEFORE}mount path '{injected}' may hold only letters, digits and _ . - / (found ','); update the "
        f"container without it (PUT /api/v1/containers/{container_id}) and it starts again",
    )
    assert (row.runtime_id, row.node_id, row.published_ports) == ("", "", [])
    assert runtime.objects == {}
    assert (await event_types(harness, container_id))[-1] == "Refused"

    # A restart does not bring it back; an update without the refused value does.
    assert (await harness.client.post(f"/api/v1/containers/{container_id}/restart")).status_code == 200
    await restarted.reconcile_once()
    assert (await must_row(harness, container_id)).status == ContainerStatus.ERROR
    assert runtime.objects == {}
    body = {"name": "box", "templateId": template_id, "storages": storages}
    assert (await harness.client.put(f"/api/v1/containers/{container_id}", json=body)).status_code == 200
    await restarted.reconcile_once()
    assert (await must_row(harness, container_id)).status == ContainerStatus.RUNNING
    assert len(runtime.objects) == 1


async def test_a_container_stored_with_a_reserved_variable_is_stopped(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))
    await reconciler.reconcile_once()
    (obj,) = runtime.objects.values()
    runtime.objects[obj.id] = replace(obj, networks=(DEFAULT_NETWORK,))  # made before organizations had networks

    def reserve(spec: dict[str, Any]) -> None:
        spec["envs"] = [{"name": "CUDA_VISIBLE_DEVICES", "value": harness.context.box.encrypt("0,1")}]

    await store(harness, ContainerModel, container_id, reserve)
    calls = len(runtime.calls)
    await ContainerReconciler(harness.context).reconcile_once()

    row = await must_row(harness, container_id)
    assert row.status == ContainerStatus.ERROR
    assert row.reason.startswith(f"{STORED_BEFORE}environment variable CUDA_VISIBLE_DEVICES is reserved (")
    assert runtime.objects == {}
    assert runtime.calls[calls:] == [("remove", obj.name)]  # removed, and not moved onto a network first or after


async def test_a_spec_is_read_once_per_generation(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    """What makes the check cheap: a generation found fine is not read again by the same reconciler (only an update,
    a new generation, changes a spec)."""
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))
    await reconciler.reconcile_once()
    await store(harness, ContainerModel, container_id, lambda spec: spec.update(image="dir:/etc"))
    await reconciler.reconcile_once()
    assert (await must_row(harness, container_id)).status == ContainerStatus.RUNNING
    await ContainerReconciler(harness.context).reconcile_once()
    assert (await must_row(harness, container_id)).reason.startswith(f"{STORED_BEFORE}image 'dir:/etc' ")


async def test_an_endpoint_stored_with_a_reserved_variable_drains_and_fails_until_updated(
    harness: Harness, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    endpoint_id = await make_endpoint(harness.client, min_replicas=1)
    await endpoints.reconcile_once()
    await all_ready(harness, endpoints, endpoint_id)
    assert len(worker_objects(runtime)) == 1

    def reserve(spec: dict[str, Any]) -> None:
        spec["envs"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": harness.context.box.encrypt("all")}]

    await store(harness, EndpointModel, endpoint_id, reserve)
    restarted = EndpointReconciler(harness.context, harness.routes)
    try:
        await restarted.reconcile_once()
        await restarted.reconcile_once()  # nothing more: it stays failed, says so once and starts no worker

        row = await endpoint_row(harness, endpoint_id)
        assert row is not None
        assert row.status == EndpointStatus.FAILED
        assert row.reason.startswith(f"{STORED_BEFORE}environment variable NVIDIA_VISIBLE_DEVICES is reserved: ")
        assert row.reason.endswith(
            f"update the endpoint without it (PUT /gpus/v2/endpoints/{endpoint_id}) and its workers start again"
        )
        assert await workers_of(harness, endpoint_id) == []
        assert worker_objects(runtime) == []
        events = await events_of(harness, endpoint_id)
        assert [kind for kind, _ in events].count("EndpointFailed") == 1
        (drained,) = [message for kind, message in events if kind == "WorkerDraining"]
        assert drained.endswith(": its configuration is refused")

        answer = await harness.client.put(f"{URL}/{endpoint_id}", json={"envs": []})
        assert answer.status_code == 200, answer.text
        await restarted.reconcile_once()
        (worker,) = await workers_of(harness, endpoint_id)
        assert worker.status == WorkerStatus.STARTING
        await all_ready(harness, restarted, endpoint_id)
        await restarted.reconcile_once()
        row = await endpoint_row(harness, endpoint_id)
        assert row is not None
        assert row.status == EndpointStatus.RUNNING
    finally:
        await restarted.close()
