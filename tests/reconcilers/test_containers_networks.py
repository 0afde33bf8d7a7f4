"""Objects made before each organization had a network of its own are moved onto it, over the in-memory runtime
and a real database (SQLite and PostgreSQL): a container or a worker on the engine's default network is moved
onto its organization's network and off the default one without a restart, with an event; the real-engine twin
(the container keeps running and another organization no longer reaches it) is in test_containers_engine.py."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select

from dockyard.core.status import ContainerStatus
from dockyard.db.models import EventModel
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.runtimes.base import ObjectState, RunSpec
from dockyard.services.runspec import org_network
from tests.conftest import Harness
from tests.fakes import DEFAULT_NETWORK, FakeRuntime
from tests.reconcilers.conftest import BUSYBOX, make_containers, make_template, must_row
from tests.reconcilers.test_endpoints import make_endpoint, worker_objects, workers_of

MADE_BEFORE = "without a restart: it was made before each organization had a network of its own"


async def events_of(harness: Harness, object_id: str, type: str) -> list[str]:
    async with harness.context.db.read() as session:
        found = await session.scalars(
            select(EventModel.message)
            .where(EventModel.object_id == object_id, EventModel.type == type)
            .order_by(EventModel.id)
        )
        return list(found)


def put_on_default_network(runtime: FakeRuntime, object_id: str) -> None:
    """Where a Dockyard older than per-organization networks made every object."""
    runtime.objects[object_id] = replace(runtime.objects[object_id], networks=(DEFAULT_NETWORK,))


async def test_a_container_on_the_default_network_is_moved_onto_its_organizations_without_a_restart(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))
    await reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    (obj,) = runtime.objects.values()
    assert obj.networks == (org_network(row.org_id),)
    put_on_default_network(runtime, obj.id)

    calls = len(runtime.calls)
    await reconciler.reconcile_once()

    obj = runtime.objects[obj.id]
    assert (obj.networks, obj.state) == ((org_network(row.org_id),), ObjectState.RUNNING)
    assert runtime.calls[calls:] == [("move", obj.name)]  # neither stopped nor recreated
    assert (await must_row(harness, container_id)).status == ContainerStatus.RUNNING
    assert await events_of(harness, container_id, "NetworkMoved") == [
        f"moved onto its organization's network {org_network(row.org_id)} and off {DEFAULT_NETWORK}, {MADE_BEFORE}"
    ]

    calls = len(runtime.calls)
    await reconciler.reconcile_once()  # on its network: nothing more to do
    assert runtime.calls[calls:] == []
    assert len(await events_of(harness, container_id, "NetworkMoved")) == 1


async def test_a_stopped_container_and_a_worker_are_moved_too_and_other_objects_are_left_alone(
    harness: Harness, reconciler: ContainerReconciler, endpoints: EndpointReconciler, runtime: FakeRuntime
) -> None:
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))
    await reconciler.reconcile_once()
    assert (await harness.client.post(f"/api/v1/containers/{container_id}/stop")).status_code == 200
    await reconciler.reconcile_once()
    endpoint_id = await make_endpoint(harness.client, min_replicas=1)
    await endpoints.reconcile_once()
    (worker,) = worker_objects(runtime)
    (container,) = [obj for obj in runtime.objects.values() if obj.id != worker.id]
    assert container.state == ObjectState.EXITED
    org = (await must_row(harness, container_id)).org_id
    # An orphan of an organization that no longer exists, and an object on no network of Dockyard's choosing
    # (a runtime's own network mode): neither is moved.
    stranger = await runtime.create(
        RunSpec(
            name="dy-stranger-g1",
            image=BUSYBOX,
            labels={"dockyard.kind": "container", "dockyard.id": "x", "dockyard.org": "gone"},
        )
    )
    private = await runtime.create(
        RunSpec(
            name="dy-private-g1",
            image=BUSYBOX,
            labels={"dockyard.kind": "container", "dockyard.id": "y", "dockyard.org": org},
        )
    )
    runtime.objects[private.id] = replace(private, networks=())
    for obj in (container, worker):
        put_on_default_network(runtime, obj.id)

    await reconciler.reconcile_once()

    assert runtime.objects[container.id].networks == (org_network(org),)
    assert runtime.objects[container.id].state == ObjectState.EXITED
    assert runtime.objects[worker.id].networks == (org_network(org),)
    assert runtime.objects[stranger.id].networks == (DEFAULT_NETWORK,)
    assert runtime.objects[private.id].networks == ()
    (worker_row,) = await workers_of(harness, endpoint_id)
    assert await events_of(harness, endpoint_id, "NetworkMoved") == [
        f"worker {worker_row.id}: moved onto its organization's network {org_network(org)} and off "
        f"{DEFAULT_NETWORK}, {MADE_BEFORE}"
    ]
    assert len(await events_of(harness, container_id, "NetworkMoved")) == 1
