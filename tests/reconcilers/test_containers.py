"""The containers reconciler's lifecycle over the in-memory runtime and a real database (SQLite and
PostgreSQL): every status reachable on one host, with the reason a user reads."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete

from dockyard.core.status import ContainerStatus, DesiredState
from dockyard.db.models import EndpointModel
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.runtimes.base import ObjectState, RunSpec, RuntimeFailure, RuntimeObject
from dockyard.services.runspec import authorized_keys_path, org_network
from tests.conftest import Harness
from tests.fakes import FakeRuntime
from tests.reconcilers.conftest import event_types, make_containers, make_template, must_row, row_of
from tests.reconcilers.test_endpoints import make_endpoint


def only_object(runtime: FakeRuntime) -> RuntimeObject:
    assert len(runtime.objects) == 1, runtime.objects
    return next(iter(runtime.objects.values()))


async def running_container(harness: Harness, reconciler: ContainerReconciler, **fields: object) -> str:
    (container_id,) = await make_containers(harness.client, await make_template(harness.client), **fields)
    await reconciler.reconcile_once()
    assert (await must_row(harness, container_id)).status == ContainerStatus.RUNNING
    return container_id


async def test_creating_becomes_running_with_published_ports_and_labels(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))
    assert (await must_row(harness, container_id)).status == ContainerStatus.CREATING

    await reconciler.reconcile_once()

    row = await must_row(harness, container_id)
    obj = only_object(runtime)
    assert (row.status, row.reason) == (ContainerStatus.RUNNING, "")
    assert row.runtime_id == obj.id
    assert row.observed_generation == 1
    assert row.started_at is not None
    assert row.published_ports == [{"containerPort": 8080, "port": 30000, "protocol": "TCP"}]
    assert obj.name == f"dy-{container_id[:12]}-g1"
    assert obj.labels["dockyard.kind"] == "container"
    assert obj.labels["dockyard.id"] == container_id
    assert obj.labels["dockyard.org"] == row.org_id
    assert obj.labels["dockyard.generation"] == "1"
    assert obj.labels["dockyard.gpus"] == ""
    assert runtime.specs[obj.id].command == ["httpd", "-f", "-p", "8080", "-h", "/tmp"]
    assert runtime.specs[obj.id].memory_mb == 1024
    assert "Started" in await event_types(harness, container_id)
    got = (await harness.client.get(f"/api/v1/containers/{container_id}")).json()
    assert got["status"] == "running"
    assert got["ports"] == [{"containerPort": 8080, "port": 30000, "protocol": "TCP"}]

    calls = len(runtime.calls)
    await reconciler.reconcile_once()  # converged: a second pass changes nothing and creates nothing
    assert runtime.calls[calls:] == []
    assert (await must_row(harness, container_id)).version == row.version


async def test_missing_image_is_an_error_with_the_runtime_reason(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    template_id = await make_template(harness.client, image="localhost/nope:1")
    (container_id,) = await make_containers(harness.client, template_id)

    await reconciler.reconcile_once()

    row = await must_row(harness, container_id)
    assert (row.status, row.reason) == (ContainerStatus.ERROR, "image localhost/nope:1 not found")
    assert runtime.objects == {}
    calls = len(runtime.calls)
    await reconciler.reconcile_once()  # a failed create is not retried until the user restarts or updates
    assert runtime.calls[calls:] == []
    assert "Failed" in await event_types(harness, container_id)


async def test_start_failure_removes_the_half_made_object(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    runtime.fail_start["localhost/busybox:latest"] = "host port 8080/tcp is already in use"
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))

    await reconciler.reconcile_once()

    row = await must_row(harness, container_id)
    assert (row.status, row.reason) == (ContainerStatus.ERROR, "host port 8080/tcp is already in use")
    assert runtime.objects == {}
    assert row.runtime_id == ""


async def test_exit_code_and_out_of_memory_are_errors_that_keep_the_object(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    first = await running_container(harness, reconciler)
    runtime.exit(f"dy-{first[:12]}-g1", 3)
    await reconciler.reconcile_once()
    row = await must_row(harness, first)
    assert (row.status, row.reason, row.exit_code) == (ContainerStatus.ERROR, "exited with code 3", 3)
    assert f"dy-{first[:12]}-g1" in {obj.name for obj in runtime.objects.values()}

    second = await running_container(harness, reconciler)
    runtime.exit(f"dy-{second[:12]}-g1", 137, oom=True)
    await reconciler.reconcile_once()
    row = await must_row(harness, second)
    assert row.status == ContainerStatus.ERROR
    assert row.reason == "exited with code 137 (killed: out of memory; the product allows 1024 MiB)"
    assert "Exited" in await event_types(harness, second)


async def test_signals_behind_exit_codes_are_named(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    """Podman before 5.0 never reports OOMKilled: a bare SIGKILL names memory as the likely cause."""
    killed = await running_container(harness, reconciler)
    runtime.exit(f"dy-{killed[:12]}-g1", 137)
    crashed = await running_container(harness, reconciler)
    runtime.exit(f"dy-{crashed[:12]}-g1", 139)
    await reconciler.reconcile_once()
    assert (await must_row(harness, killed)).reason == (
        "exited with code 137 (killed by SIGKILL: most often out of memory; the product allows 1024 MiB)"
    )
    assert (await must_row(harness, crashed)).reason == "exited with code 139 (killed by SIGSEGV)"


async def test_stop_then_start(harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime) -> None:
    container_id = await running_container(harness, reconciler)

    assert (await harness.client.post(f"/api/v1/containers/{container_id}/stop")).status_code == 200
    await reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    assert (row.status, row.reason) == (ContainerStatus.STOPPED, "stopped on request")
    assert only_object(runtime).state == ObjectState.EXITED

    assert (await harness.client.post(f"/api/v1/containers/{container_id}/start")).status_code == 200
    await reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    assert (row.status, row.reason) == (ContainerStatus.RUNNING, "")
    assert only_object(runtime).state == ObjectState.RUNNING
    assert await event_types(harness, container_id) == ["Scheduled", "Started", "Stopped", "Started"]


async def test_restart_works_from_error(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    container_id = await running_container(harness, reconciler)
    name = f"dy-{container_id[:12]}-g1"
    runtime.exit(name, 1)
    await reconciler.reconcile_once()
    assert (await must_row(harness, container_id)).status == ContainerStatus.ERROR

    assert (await harness.client.post(f"/api/v1/containers/{container_id}/restart")).status_code == 200
    await reconciler.reconcile_once()

    row = await must_row(harness, container_id)
    assert (row.status, row.reason, row.exit_code) == (ContainerStatus.RUNNING, "", None)
    assert row.observed_restart_generation == row.restart_generation == 1
    assert runtime.calls[-2:] == [("stop", name), ("start", name)]
    calls = len(runtime.calls)
    await reconciler.reconcile_once()  # one restart per request
    assert runtime.calls[calls:] == []


async def test_restart_recreates_after_a_failed_create(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    runtime.fail_start["localhost/busybox:latest"] = "host port 8080/tcp is already in use"
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))
    await reconciler.reconcile_once()
    assert (await must_row(harness, container_id)).status == ContainerStatus.ERROR

    runtime.fail_start.clear()
    await harness.client.post(f"/api/v1/containers/{container_id}/restart")
    await reconciler.reconcile_once()
    assert (await must_row(harness, container_id)).status == ContainerStatus.RUNNING
    assert only_object(runtime).state == ObjectState.RUNNING


async def test_update_recreates_the_next_generation(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    container_id = await running_container(harness, reconciler)
    row = await must_row(harness, container_id)
    answer = await harness.client.put(
        f"/api/v1/containers/{container_id}",
        json={"name": "renamed", "templateId": row.template_id, "envs": [{"name": "MODE", "value": "two"}]},
    )
    assert answer.status_code == 200, answer.text

    await reconciler.reconcile_once()

    row = await must_row(harness, container_id)
    obj = only_object(runtime)
    assert obj.name == f"dy-{container_id[:12]}-g2"
    assert (row.status, row.observed_generation, row.runtime_id) == (ContainerStatus.RUNNING, 2, obj.id)
    assert runtime.specs[obj.id].env["MODE"] == "two"


async def test_disappeared_only_after_the_debounce_and_reappearing_clears_it(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    container_id = await running_container(harness, reconciler)
    obj = only_object(runtime)

    runtime.vanish(obj.id)
    await reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    assert row.status == ContainerStatus.RUNNING
    assert row.missing_since is not None

    runtime.objects[obj.id] = obj  # back before the debounce ran out: nothing happened
    await reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    assert (row.status, row.missing_since) == (ContainerStatus.RUNNING, None)

    runtime.vanish(obj.id)
    await reconciler.reconcile_once()
    await asyncio.sleep(harness.context.settings.missing_debounce_seconds + 0.1)
    await reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    assert row.status == ContainerStatus.ERROR
    assert row.reason == "container disappeared: its runtime object was removed outside Dockyard"
    assert (row.runtime_id, row.gpu_uuids, row.missing_since) == ("", [], None)
    assert "Disappeared" in await event_types(harness, container_id)


async def test_delete_removes_the_object_then_the_row(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    container_id = await running_container(harness, reconciler)
    assert (await harness.client.delete(f"/api/v1/containers/{container_id}")).status_code == 200
    assert (await must_row(harness, container_id)).status == ContainerStatus.TERMINATING

    await reconciler.reconcile_once()

    assert await row_of(harness, container_id) is None
    assert runtime.objects == {}
    assert (await harness.client.get(f"/api/v1/containers/{container_id}")).status_code == 404
    assert (await event_types(harness, container_id))[-1] == "Deleted"


async def test_delete_that_keeps_failing_shows_zombie_and_retries(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    container_id = await running_container(harness, reconciler)
    real_remove = runtime.remove

    async def refuse(object_id: str) -> None:
        raise RuntimeFailure("device or resource busy")

    runtime.remove = refuse  # type: ignore[method-assign]
    await harness.client.delete(f"/api/v1/containers/{container_id}")
    for _ in range(2):
        await reconciler.reconcile_once()
        assert (await must_row(harness, container_id)).status == ContainerStatus.TERMINATING
    await reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    assert row.status == ContainerStatus.ZOMBIE
    assert "device or resource busy" in row.reason

    runtime.remove = real_remove  # type: ignore[method-assign]
    await reconciler.reconcile_once()
    assert await row_of(harness, container_id) is None
    assert runtime.objects == {}


async def test_stale_write_does_not_clobber_a_concurrent_api_change(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    (container_id,) = await make_containers(harness.client, await make_template(harness.client))
    real_start = runtime.start

    async def start_while_user_stops(object_id: str) -> RuntimeObject:
        answer = await harness.client.post(f"/api/v1/containers/{container_id}/stop")
        assert answer.status_code == 200
        return await real_start(object_id)

    runtime.start = start_while_user_stops  # type: ignore[method-assign]
    await reconciler.reconcile_once()
    runtime.start = real_start  # type: ignore[method-assign]

    row = await must_row(harness, container_id)
    assert row.desired == DesiredState.STOPPED  # the user's write survived the reconciler's
    assert row.status == ContainerStatus.CREATING

    await reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    assert (row.status, row.desired) == (ContainerStatus.STOPPED, DesiredState.STOPPED)
    assert only_object(runtime).state == ObjectState.EXITED


async def test_ssh_keys_are_installed_and_removed_with_the_container(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime, client: httpx.AsyncClient
) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    public_key = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    created = await client.post("/api/v1/ssh-keys", json={"name": "laptop", "publicKey": public_key})
    assert created.status_code == 200, created.text
    container_id = await running_container(harness, reconciler, sshKeyIdList=[created.json()["id"]])

    spec = runtime.specs[only_object(runtime).id]
    path = authorized_keys_path(harness.context.settings.data_dir, container_id)
    assert spec.env["SSH_KEY"] == public_key
    assert path.read_text() == public_key + "\n"
    assert [(m.target, m.host_path, m.read_only) for m in spec.mounts] == [
        ("/root/.ssh/authorized_keys", str(path), True)
    ]

    await client.delete(f"/api/v1/containers/{container_id}")
    await reconciler.reconcile_once()
    assert not path.exists()


async def test_a_failing_row_does_not_stop_the_others(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    ids = await make_containers(harness.client, await make_template(harness.client), count=3)
    real_create = runtime.create

    async def create_or_crash(spec: RunSpec) -> RuntimeObject:
        if spec.labels["dockyard.id"] == ids[1]:
            raise ValueError("an unexpected bug")
        return await real_create(spec)

    runtime.create = create_or_crash  # type: ignore[method-assign]
    await reconciler.reconcile_once()
    statuses = [(await must_row(harness, i)).status for i in ids]
    assert statuses == [ContainerStatus.RUNNING, ContainerStatus.CREATING, ContainerStatus.RUNNING]


async def test_exited_object_found_after_restart_of_dockyard_is_recorded(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    container_id = await running_container(harness, reconciler)
    obj = only_object(runtime)
    runtime.objects[obj.id] = replace(obj, state=ObjectState.EXITED, exit_code=2)

    await ContainerReconciler(harness.context).reconcile_once()
    row = await must_row(harness, container_id)
    assert (row.status, row.reason) == (ContainerStatus.ERROR, "exited with code 2")


async def test_a_network_goes_when_its_organization_has_no_object_left_on_the_runtime(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    container_id = await running_container(harness, reconciler)
    org_network = f"dockyard-org-{(await must_row(harness, container_id)).org_id}"
    assert runtime.specs[only_object(runtime).id].network == org_network
    # A network no object is on any more (its organization's last worker went), and a worker's object of another
    # organization: only the first goes, since networks are kept for objects of any kind.
    runtime.networks["dockyard-org-gone"] = {"dockyard.installation": runtime.installation_id}
    worker_spec = RunSpec(name="dy-w-1", image="localhost/busybox:latest", labels={}, network="dockyard-org-w")
    worker = await runtime.create(replace(worker_spec, labels={"dockyard.kind": "worker", "dockyard.org": "w"}))

    await reconciler.reconcile_once()
    assert await runtime.list_networks() == sorted([org_network, "dockyard-org-w"])

    await harness.client.delete(f"/api/v1/containers/{container_id}")
    await reconciler.reconcile_once()  # removes the object; the listing it acts on still held it
    await reconciler.reconcile_once()
    assert await runtime.list_networks() == ["dockyard-org-w"]

    runtime.vanish(worker.id)
    runtime.available = False  # a runtime that cannot be listed keeps every network
    await reconciler.reconcile_once()
    assert list(runtime.networks) == ["dockyard-org-w"]
    runtime.available = True
    await reconciler.reconcile_once()
    assert runtime.networks == {}


async def test_an_organizations_network_stays_while_its_endpoint_is_at_zero_workers(
    harness: Harness, reconciler: ContainerReconciler, runtime: FakeRuntime
) -> None:
    # Its last worker went (scaled to zero): no object is on the network, but the endpoint may start one any time,
    # and making the network (and its keeper) again would be most of that start.
    endpoint_id = await make_endpoint(harness.client, min_replicas=0)
    async with harness.context.db.read() as session:
        endpoint = await session.get(EndpointModel, endpoint_id)
        assert endpoint is not None
        network = org_network(endpoint.org_id)
    labels = {"dockyard.installation": runtime.installation_id}
    runtime.networks[network] = dict(labels)
    runtime.networks["dockyard-org-gone"] = dict(labels)

    await reconciler.reconcile_once()
    assert await runtime.list_networks() == [network]

    async with harness.context.db.write() as session:
        await session.execute(delete(EndpointModel).where(EndpointModel.id == endpoint_id))
    await reconciler.reconcile_once()
    assert await runtime.list_networks() == []


async def test_a_port_the_update_fixes_elsewhere_is_no_port_that_was_taken(
    harness: Harness, reconciler: ContainerReconciler
) -> None:
    """Only a host port Dockyard chose is kept across a recreate; one the update sets is used, and not reported as a
    kept port that moved."""
    container_id = await running_container(harness, reconciler)
    row = await must_row(harness, container_id)
    (chosen,) = row.published_ports
    update = {"name": "box", "templateId": row.template_id, "ports": [{"containerPort": 8080, "port": 31999}]}
    answer = await harness.client.put(f"/api/v1/containers/{container_id}", json=update)
    assert answer.status_code == 200, answer.text
    await reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    assert (row.status, row.reason) == (ContainerStatus.RUNNING, "")
    assert [entry["port"] for entry in row.published_ports] == [31999] != [chosen["port"]]
    assert "PortsChanged" not in await event_types(harness, container_id)
