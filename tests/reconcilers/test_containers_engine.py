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
from docker.types import Mount as DockerMount
from sqlalchemy import select, update

from dockyard.core.status import ContainerStatus
from dockyard.db.models import ContainerModel, EventModel
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.runtimes.base import Mount, RunSpec, RuntimeFailure
from dockyard.runtimes.engine import EngineRuntime
from dockyard.services.bootstrap import local_node_id
from dockyard.services.runspec import container_labels, object_name
from tests.conftest import Harness
from tests.engine import answered, http_probe, network_of
from tests.engine_harness import database_url, fake_runtime  # noqa: F401
from tests.reconcilers.conftest import make_containers, make_template, must_row, row_of

pytestmark = pytest.mark.engine

DEADLINE = 30.0
STORED_BEFORE = "stopped: its configuration, stored before Dockyard checked it, holds what is now refused: "


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


async def new_storage(client: httpx.AsyncClient) -> str:
    answer = await client.post("/gpus/v2/network-storages", json={"name": "data", "region_id": "local", "size_gb": 1})
    assert answer.status_code == 200, answer.text
    storage_id: str = answer.json()["id"]
    return storage_id


async def store_spec(harness: Harness, container_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a row's stored spec, as a row written before the API's checks existed could hold it."""
    row = await must_row(harness, container_id)
    spec = dict(row.spec)
    change(spec)
    async with harness.context.db.write() as session:
        await session.execute(update(ContainerModel).where(ContainerModel.id == container_id).values(spec=spec))


async def a_secret_in_another_organizations_storage(
    harness: Harness, reconciler: ContainerReconciler, busybox_image: str
) -> tuple[str, str]:
    """Another organization's storage and its running container that writes `secret-of-globex` to /data/file there."""
    globex = await harness.new_client("globex")
    try:
        theirs = await new_storage(globex)
        writer = await make_template(
            globex, image=busybox_image, command="sh -c 'echo secret-of-globex > /data/file; sleep 600'", ports=[]
        )
        (their_box,) = await make_containers(globex, writer, storages=[{"containerPath": "/data", "id": theirs}])
    finally:
        await globex.aclose()
    await until(reconciler, lambda: status_is(harness, their_box, ContainerStatus.RUNNING), "theirs running")
    return theirs, their_box


async def test_a_storage_path_carrying_mount_options_mounts_nothing(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    """The attack as found: Podman's compatible API writes each mount as `--mount` CSV, so a containerPath of
    `/x,source=dockyard-ns-<another organization's storage>` mounted that storage read-write, and the
    volume-opt variant bind-mounted the host's /etc. The API refuses both; a row stored before that check ends
    `error` with the reason (the reconciler's check of stored specs) and nothing created; the runtime refuses
    such a request by itself."""
    runtime = harness.context.runtimes["local"]
    assert isinstance(runtime, EngineRuntime)
    theirs, their_box = await a_secret_in_another_organizations_storage(harness, engine_reconciler, busybox_image)
    (their_object,) = objects_of(docker_client, their_box)

    def their_file() -> str:
        code, output = their_object.exec_run(["cat", "/data/file"])
        return output.decode() if code == 0 else ""

    end = time.monotonic() + DEADLINE
    while their_file() != "secret-of-globex\n":
        assert time.monotonic() < end, "the other organization's container never wrote its file"
        await asyncio.sleep(0.1)

    their_volume = f"dockyard-ns-{theirs}"
    host_etc_volume = f"dockyard-ns-{uuid.uuid4()}"
    attacks = [
        f"/x,source={their_volume}",
        f"/x,volume-opt=device=/etc,volume-opt=o=bind,volume-opt=type=none,source={host_etc_volume}",
    ]
    ours = await new_storage(harness.client)
    template = await make_template(harness.client, image=busybox_image, command="sleep 600", ports=[])
    try:
        for path in attacks:
            body = {
                "count": 1,
                "idc": "local",
                "product": "cpu.small",
                "name": "box",
                "templateId": template,
                "storages": [{"containerPath": path, "id": ours}],
            }
            answer = await harness.client.post("/api/v1/containers", json=body)
            assert answer.status_code == 422, answer.text
            (detail,) = answer.json()["details"]
            assert detail["field"] == "storages[0].containerPath"
            assert "may hold only letters, digits and _ . - /" in detail["message"]

        stored = await make_containers(
            harness.client, template, count=2, storages=[{"containerPath": "/x", "id": ours}]
        )
        for container_id, path in zip(stored, attacks, strict=True):

            def inject(spec: dict[str, Any], path: str = path) -> None:
                spec["volumes"] = [{"storage_id": ours, "mount_path": path}]

            await store_spec(harness, container_id, inject)
        for container_id in stored:
            await until(engine_reconciler, lambda c=container_id: status_is(harness, c, ContainerStatus.ERROR), "error")
            row = await must_row(harness, container_id)
            assert row.reason.startswith(f"{STORED_BEFORE}mount path '/x,")
            assert "may hold only letters, digits and _ . - /" in row.reason
            assert objects_of(docker_client, container_id) == []

        for path in attacks:
            spec = RunSpec(
                name=f"dy-attack-{uuid.uuid4().hex[:8]}",
                image=busybox_image,
                labels={"dockyard.id": "attack"},
                command=["sleep", "600"],
                mounts=[Mount(path, volume=f"dockyard-ns-{ours}")],
            )
            with pytest.raises(RuntimeFailure, match="mount target") as raised:
                await runtime.create(spec)
            assert "nothing was created" in raised.value.reason
            assert await runtime.inspect(spec.name) is None

        assert host_etc_volume not in {volume.name for volume in docker_client.volumes.list()}
        assert their_file() == "secret-of-globex\n"
    finally:
        # Against an engine that took the injection, the volume it made has none of Dockyard's labels, so the
        # harness would not remove it: remove what uses it first, then the volume.
        for obj in docker_client.containers.list(all=True, filters={"volume": host_etc_volume}):
            obj.remove(force=True)
        for volume in docker_client.volumes.list(filters={"name": host_etc_volume}):
            volume.remove(force=True)


@pytest.fixture(scope="module")
def image_wanting_every_gpu(busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox with `ENV NVIDIA_VISIBLE_DEVICES=all`, as every CUDA base image has."""
    image = "localhost/dockyard-wants-gpus:test"
    context = tmp_path_factory.mktemp("wants-gpus")
    (context / "Containerfile").write_text(f"FROM {busybox_image}\nENV NVIDIA_VISIBLE_DEVICES=all\n")
    subprocess.run(["podman", "build", "-q", "-t", image, str(context)], check=True, capture_output=True)
    return image


async def test_a_cpu_container_is_handed_no_gpu_whatever_its_env_says(
    harness: Harness,
    engine_reconciler: ContainerReconciler,
    image_wanting_every_gpu: str,
    docker_client: docker.DockerClient,
) -> None:
    """`NVIDIA_VISIBLE_DEVICES=all` passed through on CPU products: with the NVIDIA toolkit on the host that
    hands a container every GPU. The API refuses the reserved variables, and inside a CPU container the variable
    is `void` even when its image says `all`. (A row stored before the check is stopped: see
    test_a_row_stored_before_the_checks_is_stopped_with_its_object.)"""
    client = harness.client
    wants = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}
    answer = await client.post(
        "/api/v1/templates", json={"name": "gpus", "path": image_wanting_every_gpu, "envs": [wants]}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["details"][0]["field"] == "envs[0].name"
    assert "NVIDIA_VISIBLE_DEVICES is reserved" in answer.json()["details"][0]["message"]

    template = await make_template(client, image=image_wanting_every_gpu, command="sleep 600", ports=[])
    (container_id,) = await make_containers(client, template, envs=[{"name": "RUNPOD_DEBUG_LEVEL", "value": "debug"}])
    await until(engine_reconciler, lambda: status_is(harness, container_id, ContainerStatus.RUNNING), "running")
    (obj,) = objects_of(docker_client, container_id)
    code, output = obj.exec_run(["env"])
    env = dict(line.split("=", 1) for line in output.decode().splitlines() if "=" in line)
    assert code == 0
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env["RUNPOD_DEBUG_LEVEL"] == "debug"  # an SDK switch users may set


async def test_placement_counts_the_cpus_podman_reports(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    """The node offers the CPUs and memory Podman's `info` reports; at an overcommit that leaves room for two
    cpu.small on this host, whatever its core count, the third waits with the reason and is never created."""
    info = docker_client.info()
    cpus, memory_mb = int(info["NCPU"]), int(info["MemTotal"]) // (1024 * 1024)
    settings = harness.context.settings
    settings.cpu_overcommit = 2 / cpus
    settings.memory_overcommit = 4096.5 / memory_mb  # 4096 MB: room for four, so the CPUs are what binds
    template_id = await make_template(harness.client, busybox_image, command="sleep 600", ports=[])
    ids = await make_containers(harness.client, template_id, count=3)

    async def settled() -> bool:
        rows = [await must_row(harness, container_id) for container_id in ids]
        return all(row.status == ContainerStatus.RUNNING or row.reason.startswith("waiting for") for row in rows)

    await until(engine_reconciler, settled, "three containers running or waiting")
    rows = [await must_row(harness, container_id) for container_id in ids]
    assert sorted(row.status.value for row in rows) == ["creating", "running", "running"]
    (refused,) = [row for row in rows if row.status == ContainerStatus.CREATING]
    assert refused.reason.startswith(
        "waiting for capacity: no node of IDC local has 1 vCPUs and 1024 MB free (the most free on one: 0 of 2 vCPUs "
        "and 2048 of 4096 MB)"
    )
    assert objects_of(docker_client, refused.id) == []
    nodes = (await harness.admin.get("/admin/v1/nodes")).json()
    assert (nodes[0]["cpus"], nodes[0]["memory_mb"]) == (cpus, memory_mb)


async def test_a_second_gpu_container_waits_for_the_gpu_and_starts_once_it_is_freed(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    """A 1-GPU machine (a simulated GPU) and two 1-GPU containers: the second waits with the reason, holding nothing
    and with no object, and starts by itself on the freed GPU once the first is deleted."""
    settings = harness.context.settings
    settings.node_cpus, settings.node_memory_mb = 64, 512 * 1024  # sized like a host of an H100 (16 vCPUs, 128 GiB)
    declared = await harness.admin.put(
        f"/admin/v1/nodes/{local_node_id()}/simulated-gpus",
        json={"model": "NVIDIA H100 80GB HBM3", "count": 1, "memory_mb": 81559},
    )
    assert declared.status_code == 200, declared.text
    (gpu,) = [item["uuid"] for item in declared.json()["gpus"]]
    template_id = await make_template(harness.client, busybox_image, command="sleep 600", ports=[])
    (first,) = await make_containers(harness.client, template_id, product="gpu.h100.1x")
    await until(engine_reconciler, lambda: status_is(harness, first, ContainerStatus.RUNNING), "the first running")
    (second,) = await make_containers(harness.client, template_id, product="gpu.h100.1x")

    async def waiting() -> bool:
        return (await must_row(harness, second)).reason.startswith("waiting for capacity")

    await until(engine_reconciler, waiting, "the second waiting")
    row = await must_row(harness, second)
    assert (row.status, row.reason) == (
        ContainerStatus.CREATING,
        "waiting for capacity: no free GPU: needs 1 \N{MULTIPLICATION SIGN} H100, all 1 on IDC local are in use; "
        "it starts by itself once another container or endpoint worker on IDC local is deleted and frees enough",
    )
    assert row.gpu_uuids == []
    assert objects_of(docker_client, second) == []

    def visible_gpus(container_id: str) -> str:
        (obj,) = objects_of(docker_client, container_id)
        code, output = obj.exec_run(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"])
        assert code == 0, output
        return str(output.decode().strip())

    assert visible_gpus(first) == gpu
    assert (await harness.client.delete(f"/api/v1/containers/{first}")).status_code == 200
    await until(engine_reconciler, lambda: status_is(harness, second, ContainerStatus.RUNNING), "the second running")
    assert objects_of(docker_client, first) == []
    assert (await must_row(harness, second)).gpu_uuids == [gpu]
    assert visible_gpus(second) == gpu


async def test_a_container_made_on_the_default_network_is_moved_onto_its_organizations_live(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    """A Dockyard older than per-organization networks made every object on the engine's default network, which
    another organization's containers reach. The reconciler moves such an object onto its organization's network
    and off the default one while it runs: same process, same published port, now reached by its organization's
    containers only."""
    template_id = await make_template(harness.client, image=busybox_image)
    (ours,) = await make_containers(harness.client, template_id)
    async with await harness.new_client("old-neighbour") as other:
        (theirs,) = await make_containers(other, await make_template(other, image=busybox_image))

    async def both_running() -> bool:
        return all([await status_is(harness, row_id, ContainerStatus.RUNNING) for row_id in (ours, theirs)])

    await until(engine_reconciler, both_running, "two containers of two organizations running")
    (old,) = await make_containers(harness.client, template_id)
    row = await must_row(harness, old)
    made_before = docker_client.containers.run(
        busybox_image,
        ["httpd", "-f", "-p", "8080", "-h", "/tmp"],
        name=object_name(row.id, row.generation),
        labels={
            **container_labels(row, [], ""),
            "dockyard.managed": "true",
            "dockyard.installation": harness.context.installation_id,
        },
        ports={"8080/tcp": None},
        detach=True,
    )
    (our_object,), (their_object,) = objects_of(docker_client, ours), objects_of(docker_client, theirs)
    default_network, on_default = network_of(made_before)
    assert default_network == "podman"
    end = time.monotonic() + DEADLINE
    while not answered(http_probe(their_object, on_default["IPAddress"], 8080)):  # the hole, as it was
        assert time.monotonic() < end, "the other organization never reached the container on the default network"
        await asyncio.sleep(0.2)
    started, pid = made_before.attrs["State"]["StartedAt"], made_before.attrs["State"]["Pid"]
    host_port = made_before.ports["8080/tcp"][0]["HostPort"]

    await engine_reconciler.reconcile_once()

    network, moved = network_of(made_before)
    assert network == f"dockyard-org-{row.org_id}"
    assert made_before.attrs["State"]["Running"] is True
    assert (made_before.attrs["State"]["StartedAt"], made_before.attrs["State"]["Pid"]) == (started, pid)
    assert await answers(int(host_port))
    code, output = http_probe(their_object, moved["IPAddress"], 8080)
    assert code != 0, output
    assert not answered((code, output)), output
    end = time.monotonic() + DEADLINE
    while not answered(http_probe(our_object, moved["IPAddress"], 8080)):
        assert time.monotonic() < end, "a container of its organization never reached the moved container"
        await asyncio.sleep(0.2)
    assert (await must_row(harness, old)).status == ContainerStatus.RUNNING
    async with harness.context.db.read() as session:
        (message,) = await session.scalars(
            select(EventModel.message).where(EventModel.object_id == old, EventModel.type == "NetworkMoved")
        )
    assert message.startswith(f"moved onto its organization's network {network} and off podman, without a restart")


async def test_a_row_stored_before_the_checks_is_stopped_with_its_object(
    harness: Harness, engine_reconciler: ContainerReconciler, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    """Rows an earlier release stored, with the objects it made from them: one whose storage path carried a mount
    option (its object, as Podman made it then, mounts another organization's storage read-write), one holding
    `NVIDIA_VISIBLE_DEVICES=all` (its object sees every GPU of a host with the NVIDIA toolkit). Each object is
    removed and its row ends `error` naming the refused value and saying to update it."""
    theirs, their_box = await a_secret_in_another_organizations_storage(harness, engine_reconciler, busybox_image)
    ours = await new_storage(harness.client)
    template = await make_template(harness.client, image=busybox_image, command="sleep 600", ports=[])
    mounting, gpus = await make_containers(
        harness.client, template, count=2, storages=[{"containerPath": "/x", "id": ours}]
    )
    injected = f"/x,source=dockyard-ns-{theirs}"

    def inject(spec: dict[str, Any]) -> None:
        spec["volumes"] = [{"storage_id": ours, "mount_path": injected}]

    def reserve(spec: dict[str, Any]) -> None:
        spec["envs"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": harness.context.box.encrypt("all")}]

    await store_spec(harness, mounting, inject)
    await store_spec(harness, gpus, reserve)
    made_before = {}
    for container_id, mount_path, env in ((mounting, injected, {}), (gpus, "/x", {"NVIDIA_VISIBLE_DEVICES": "all"})):
        row = await must_row(harness, container_id)
        made_before[container_id] = docker_client.containers.run(
            busybox_image,
            ["sleep", "600"],
            name=object_name(row.id, row.generation),
            labels={
                **container_labels(row, [], ""),
                "dockyard.managed": "true",
                "dockyard.installation": harness.context.installation_id,
            },
            environment=env,
            mounts=[DockerMount(target=mount_path, source=f"dockyard-ns-{ours}", type="volume")],
            detach=True,
        )
    # The attack, as the objects made then carry it.
    code, output = made_before[mounting].exec_run(["cat", "/x/file"])
    assert (code, output.decode()) == (0, "secret-of-globex\n")
    code, output = made_before[gpus].exec_run(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"])
    assert (code, output.decode()) == (0, "all\n")

    for container_id in (mounting, gpus):
        await until(engine_reconciler, lambda c=container_id: status_is(harness, c, ContainerStatus.ERROR), "stopped")
        assert objects_of(docker_client, container_id) == []
    update_it = "update the container without it (PUT /api/v1/containers/{}) and it starts again"
    assert (await must_row(harness, mounting)).reason == (
        f"{STORED_BEFORE}mount path '{injected}' may hold only letters, digits and _ . - / (found ','); "
        + update_it.format(mounting)
    )
    reason = (await must_row(harness, gpus)).reason
    assert reason.startswith(
        f"{STORED_BEFORE}environment variable NVIDIA_VISIBLE_DEVICES is reserved: NVIDIA_* variables are Dockyard's"
    )
    assert reason.endswith(update_it.format(gpus))
    assert (await must_row(harness, their_box)).status == ContainerStatus.RUNNING

    # Updated without the refused value, it runs again.
    answer = await harness.client.put(
        f"/api/v1/containers/{mounting}",
        json={"name": "box", "templateId": template, "storages": [{"containerPath": "/x", "id": ours}]},
    )
    assert answer.status_code == 200, answer.text
    await until(engine_reconciler, lambda: status_is(harness, mounting, ContainerStatus.RUNNING), "updated, running")
    (obj,) = objects_of(docker_client, mounting)
    assert obj.exec_run(["cat", "/x/file"])[0] != 0
