"""The containers reconciler against real Podman: a container reaches running and its published port
answers; exit codes, a missing image, stop/start, restart, delete, a container removed behind Dockyard's back
and an orphan are all seen as they happen on a real engine; each organization's containers are on a network
no other organization reaches.

Each test's objects carry the fresh installation id of its own database, and are removed at the end."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dockyard.core.status import ContainerStatus
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.runtimes.engine import EngineRuntime
from tests.conftest import Harness
from tests.engine import answered, http_probe, network_of
from tests.engine_harness import database_url, fake_runtime  # noqa: F401
from tests.reconcilers.conftest import make_containers, make_template, must_row, row_of

pytestmark = pytest.mark.engine

DEADLINE = 30.0


@pytest.fixture
def engine_reconciler(harness: Harness) -> ContainerReconciler:
    harness.context.settings.missing_debounce_seconds = 0.5
    harness.context.settings.zombie_grace_seconds = 0.5
    harness.context.settings.stop_timeout_seconds = 1
    return ContainerReconciler(harness.context)


async def until(
    reconciler: ContainerReconciler, check: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE
) -> None:
    """Reconcile until `check` holds, within a bounded deadline."""
    end = time.monotonic() + deadline
    while True:
        await reconciler.reconcile_once()
        if await check():
            return
        if time.monotonic() > end:
            pytest.fail(f"not converged within {deadline} s: {what}")
        await asyncio.sleep(0.2)


async def status_is(harness: Harness, container_id: str, status: ContainerStatus) -> bool:
    row = await row_of(harness, container_id)
    return row is not None and row.status == status


async def answers(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            await client.get(f"http://127.0.0.1:{port}/")
    except httpx.HTTPError:
        return False
    return True


def objects_of(client: docker.DockerClient, container_id: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"dockyard.id={container_id}"}))


async def test_lifecycle_on_podman(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    reconciler = engine_reconciler
    key = Ed25519PrivateKey.generate().public_key()
    public_key = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    ssh_key = await harness.client.post("/api/v1/ssh-keys", json={"name": "laptop", "publicKey": public_key})
    assert ssh_key.status_code == 200, ssh_key.text
    template_id = await make_template(harness.client, image=busybox_image)
    (container_id,) = await make_containers(harness.client, template_id, sshKeyIdList=[ssh_key.json()["id"]])
    row = await must_row(harness, container_id)
    assert (row.status, row.reason) == (ContainerStatus.CREATING, "accepted; waiting to be placed and started")

    await until(reconciler, lambda: status_is(harness, container_id, ContainerStatus.RUNNING), "running")
    row = await must_row(harness, container_id)
    (published,) = row.published_ports
    assert published["containerPort"] == 8080
    end = time.monotonic() + DEADLINE
    while not await answers(published["port"]):
        assert time.monotonic() < end, f"port {published['port']} never answered"
        await asyncio.sleep(0.2)
    (obj,) = objects_of(docker_client, container_id)
    assert obj.name == f"dy-{container_id[:12]}-g1"
    assert obj.labels["dockyard.generation"] == "1"
    code, output = obj.exec_run(["sh", "-c", 'cat /root/.ssh/authorized_keys; echo "$SSH_KEY"'])
    assert (code, output.decode()) == (0, f"{public_key}\n{public_key}\n")

    await harness.client.post(f"/api/v1/containers/{container_id}/stop")
    await until(reconciler, lambda: status_is(harness, container_id, ContainerStatus.STOPPED), "stopped")
    obj.reload()
    assert obj.status == "exited"

    await harness.client.post(f"/api/v1/containers/{container_id}/start")
    await until(reconciler, lambda: status_is(harness, container_id, ContainerStatus.RUNNING), "started again")

    obj.reload()
    started = obj.attrs["State"]["StartedAt"]
    await harness.client.post(f"/api/v1/containers/{container_id}/restart")

    async def restarted() -> bool:
        row = await must_row(harness, container_id)
        return row.observed_restart_generation == 1 and row.status == ContainerStatus.RUNNING

    await until(reconciler, restarted, "restarted")
    obj.reload()
    assert obj.status == "running"
    assert obj.attrs["State"]["StartedAt"] != started

    await harness.client.delete(f"/api/v1/containers/{container_id}")
    row = await must_row(harness, container_id)
    assert (row.status, row.reason) == (
        ContainerStatus.TERMINATING,
        "deletion requested; stopping and removing the container",
    )
    await until(reconciler, lambda: _gone(harness, container_id), "deleted")
    assert objects_of(docker_client, container_id) == []


async def _gone(harness: Harness, container_id: str) -> bool:
    return await row_of(harness, container_id) is None


async def test_exit_code_and_missing_image_on_podman(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    exits = await make_template(harness.client, image=busybox_image, command="sh -c 'exit 3'", ports=[])
    missing = await make_template(harness.client, image="localhost/dockyard-no-such-image:1", ports=[])
    (exited_id,) = await make_containers(harness.client, exits)
    (missing_id,) = await make_containers(harness.client, missing)

    await until(engine_reconciler, lambda: status_is(harness, exited_id, ContainerStatus.ERROR), "exited")
    await until(engine_reconciler, lambda: status_is(harness, missing_id, ContainerStatus.ERROR), "image missing")

    row = await must_row(harness, exited_id)
    assert (row.reason, row.exit_code) == ("exited with code 3", 3)
    assert len(objects_of(docker_client, exited_id)) == 1  # kept, so its logs stay readable
    row = await must_row(harness, missing_id)
    assert "localhost/dockyard-no-such-image:1" in row.reason
    assert objects_of(docker_client, missing_id) == []


async def test_removed_behind_dockyards_back_becomes_an_error_after_the_debounce(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    (container_id,) = await make_containers(harness.client, await make_template(harness.client, image=busybox_image))
    await until(engine_reconciler, lambda: status_is(harness, container_id, ContainerStatus.RUNNING), "running")

    for obj in objects_of(docker_client, container_id):
        obj.remove(force=True)
    await engine_reconciler.reconcile_once()
    row = await must_row(harness, container_id)
    assert (row.status, row.missing_since is not None) == (ContainerStatus.RUNNING, True)

    await until(engine_reconciler, lambda: status_is(harness, container_id, ContainerStatus.ERROR), "disappeared")
    row = await must_row(harness, container_id)
    assert row.reason == "container disappeared: its runtime object was removed outside Dockyard"


async def test_orphan_is_a_zombie_then_removed_and_unlabelled_containers_are_untouched(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    runtime = harness.context.runtimes["local"]
    (known,) = await make_containers(harness.client, await make_template(harness.client, image=busybox_image))
    await until(engine_reconciler, lambda: status_is(harness, known, ContainerStatus.RUNNING), "running")
    org_id = (await must_row(harness, known)).org_id
    orphan = str(uuid.uuid4())
    labels = {
        "dockyard.managed": "true",
        "dockyard.installation": runtime.installation_id,
        "dockyard.kind": "container",
        "dockyard.id": orphan,
        "dockyard.org": org_id,
    }
    docker_client.containers.run(
        busybox_image, ["sleep", "300"], name=f"dy-orphan-{orphan[:8]}", labels=labels, detach=True
    )
    stranger = docker_client.containers.run(busybox_image, ["sleep", "300"], name=f"stranger-{orphan[:8]}", detach=True)
    try:
        await engine_reconciler.reconcile_once()
        row = await must_row(harness, orphan)
        assert row.status == ContainerStatus.ZOMBIE

        await until(engine_reconciler, lambda: _gone(harness, orphan), "zombie removed")
        assert objects_of(docker_client, orphan) == []
        stranger.reload()
        assert stranger.status == "running"
        assert (await must_row(harness, known)).status == ContainerStatus.RUNNING
    finally:
        stranger.remove(force=True)


async def test_unreachable_engine_is_unknown_then_recovers(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    """The engine's API service dies while the container keeps running (conmon holds it): the row is
    `unknown` with a reason, nothing is released or deleted, and it is `running` again once the API is back."""
    directory = Path(tempfile.mkdtemp(prefix="dockyard-engine-"))
    url = f"unix://{directory / 'podman.sock'}"

    def serve() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            ["podman", "system", "service", "--time=0", url],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + DEADLINE
        while not (directory / "podman.sock").exists():
            assert time.monotonic() < end, "podman system service did not start"
            time.sleep(0.05)
        return process

    service = serve()
    original = harness.context.runtimes["local"]
    private = EngineRuntime(url, installation_id=original.installation_id)
    harness.context.runtimes["local"] = private
    try:
        (container_id,) = await make_containers(
            harness.client, await make_template(harness.client, image=busybox_image)
        )
        await until(engine_reconciler, lambda: status_is(harness, container_id, ContainerStatus.RUNNING), "running")

        service.terminate()
        service.wait(timeout=30)
        (directory / "podman.sock").unlink(missing_ok=True)
        await until(engine_reconciler, lambda: status_is(harness, container_id, ContainerStatus.UNKNOWN), "unknown")
        row = await must_row(harness, container_id)
        assert row.reason == "the container runtime of IDC local cannot be reached; the operator has been told"
        (obj,) = objects_of(docker_client, container_id)
        assert obj.status == "running"  # nothing was torn down while the engine could not be seen

        service = serve()
        await until(engine_reconciler, lambda: status_is(harness, container_id, ContainerStatus.RUNNING), "recovered")
        assert (await must_row(harness, container_id)).reason == ""
    finally:
        harness.context.runtimes["local"] = original
        await private.close()
        service.terminate()
        service.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def podman_network(name: str) -> dict[str, Any] | None:
    """Podman's own view of a network (the compatible API leaves out its options), None when it does not exist."""
    done = subprocess.run(["podman", "network", "inspect", name], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    (network,) = json.loads(done.stdout)
    return dict(network)


async def test_each_organization_has_a_network_that_no_other_organization_reaches(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    """The attack as found: every organization's containers shared one bridge, so one tenant's container opened
    connections to another's. Now each organization's containers join a network of its own: a second container
    of the same organization reaches the first, another organization's container reaches neither, and the
    network goes once its organization has no container left."""
    first, second = await make_containers(
        harness.client, await make_template(harness.client, image=busybox_image), count=2
    )
    async with await harness.new_client("network-neighbour") as other:
        (theirs,) = await make_containers(other, await make_template(other, image=busybox_image))

        async def all_running() -> bool:
            return all(
                [await status_is(harness, row_id, ContainerStatus.RUNNING) for row_id in (first, second, theirs)]
            )

        await until(engine_reconciler, all_running, "the three containers running")
        org_a, org_b = (await must_row(harness, first)).org_id, (await must_row(harness, theirs)).org_id
        (a1,), (a2,), (b1,) = (objects_of(docker_client, row_id) for row_id in (first, second, theirs))
        on_a = network_of(a1)[1]
        end = time.monotonic() + DEADLINE
        while not answered(http_probe(a2, on_a["IPAddress"], 8080)):
            assert time.monotonic() < end, "a container never reached the other container of its organization"
            await asyncio.sleep(0.2)
        for target in (a1, a2):
            code, output = http_probe(b1, network_of(target)[1]["IPAddress"], 8080)
            assert code != 0, output
            assert not answered((code, output)), output

        net_a = network_of(a1)[0]
        assert net_a == network_of(a2)[0] == f"dockyard-org-{org_a}"
        assert network_of(b1)[0] == f"dockyard-org-{org_b}"
        for network, org in ((net_a, org_a), (f"dockyard-org-{org_b}", org_b)):
            details = podman_network(network)
            assert details is not None
            assert details["labels"] == {
                "dockyard.managed": "true",
                "dockyard.installation": harness.context.installation_id,
                "dockyard.org": org,
            }
            assert details["options"] == {"isolate": "true"}
        # A container publishes exactly the ports its owner asked for, on every interface, and nothing else.
        assert a1.attrs["HostConfig"]["PublishAllPorts"] is False
        assert list(a1.attrs["NetworkSettings"]["Ports"]) == ["8080/tcp"]

        assert (await other.delete(f"/api/v1/containers/{theirs}")).status_code == 200
        await until(
            engine_reconciler,
            lambda: _network_gone(f"dockyard-org-{org_b}"),
            "the network of an organization with no container left removed",
        )
    assert podman_network(net_a) is not None
    assert (await must_row(harness, first)).status == ContainerStatus.RUNNING


async def _network_gone(name: str) -> bool:
    return podman_network(name) is None
