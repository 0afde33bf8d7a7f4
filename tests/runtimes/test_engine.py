"""EngineRuntime against a real Podman: every behaviour the runtime contract promises, seen on the engine.

Each test gets its own installation id (the `runtime` fixture, in conftest.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import pytest

from dockyard.runtimes.base import (
    LABEL_ID,
    LABEL_INSTALLATION,
    LABEL_MANAGED,
    GpuDevice,
    Mount,
    ObjectState,
    PortBinding,
    RunSpec,
    RuntimeFailure,
    RuntimeObject,
    RuntimeUnavailable,
)
from dockyard.runtimes.engine import EngineRuntime
from dockyard.runtimes.nvidia import LIBRARY_DIR, NvidiaHost
from tests.runtimes.test_nvidia import UUID_A, fake_driver

pytestmark = pytest.mark.engine

# A guard against a hang turning into a stuck test run; never an assertion about speed.
PATIENCE_SECONDS = 30


def spec_for(runtime: EngineRuntime, image: str, suffix: str, command: list[str], **fields: Any) -> RunSpec:
    return RunSpec(
        name=f"{runtime.installation_id}-{suffix}",
        image=image,
        labels={LABEL_ID: suffix},
        command=command,
        **fields,
    )


async def wait_exited(runtime: EngineRuntime, object_id: str) -> RuntimeObject:
    async with asyncio.timeout(PATIENCE_SECONDS):
        while True:
            obj = await runtime.inspect(object_id)
            assert obj is not None
            if obj.state == ObjectState.EXITED:
                return obj
            await asyncio.sleep(0.05)


async def read_logs(runtime: EngineRuntime, object_id: str, **options: Any) -> bytes:
    return b"".join([chunk async for chunk in runtime.logs(object_id, **options)])


def http_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        return conn.recv(64)


async def test_probe_names_the_engine(runtime: EngineRuntime) -> None:
    assert (await runtime.probe()).startswith("podman ")


async def test_started_container_runs_and_its_published_port_answers(
    runtime: EngineRuntime, busybox_image: str
) -> None:
    spec = spec_for(
        runtime, busybox_image, "web", ["httpd", "-f", "-p", "8080", "-h", "/tmp"], ports=[PortBinding(8080)]
    )
    created = await runtime.create(spec)
    assert created.state == ObjectState.CREATED
    assert created.labels[LABEL_MANAGED] == "true"
    assert created.labels[LABEL_INSTALLATION] == runtime.installation_id
    assert created.resource_id == "web"

    started = await runtime.start(created.id)
    assert started.state == ObjectState.RUNNING
    assert started.started_at is not None
    assert started.started_at.tzinfo is not None
    assert started.finished_at is None
    [port] = started.ports
    assert port.container_port == 8080
    assert port.host_port > 0

    async with asyncio.timeout(PATIENCE_SECONDS):
        while True:
            try:
                answer = await asyncio.to_thread(http_get, port.host_port)
                break
            except OSError:  # httpd not listening yet
                await asyncio.sleep(0.05)
    assert answer.startswith(b"HTTP/1.")

    by_name = await runtime.inspect(spec.name)
    assert by_name is not None
    assert by_name.id == created.id
    assert (await runtime.start(created.id)).state == ObjectState.RUNNING  # starting a running one is a no-op


async def test_create_is_idempotent_by_name(runtime: EngineRuntime, busybox_image: str) -> None:
    spec = spec_for(runtime, busybox_image, "twice", ["sleep", "30"])
    first = await runtime.create(spec)
    second = await runtime.create(spec)
    assert first.id == second.id
    assert [obj.id for obj in await runtime.list_managed()] == [first.id]


async def test_list_managed_returns_only_this_installations_objects(
    runtime: EngineRuntime, busybox_image: str, engine_url: str
) -> None:
    ours = await runtime.create(spec_for(runtime, busybox_image, "ours", ["sleep", "30"]))
    neighbour = EngineRuntime(engine_url, installation_id=f"{runtime.installation_id}-other")
    stranger_name = f"{runtime.installation_id}-unlabelled"
    try:
        theirs = await neighbour.create(spec_for(neighbour, busybox_image, "theirs", ["sleep", "30"]))
        await asyncio.to_thread(
            subprocess.run,
            ["podman", "run", "-d", "--name", stranger_name, busybox_image, "sleep", "30"],
            check=True,
            capture_output=True,
        )
        listed = await runtime.list_managed()
        assert [obj.id for obj in listed] == [ours.id]
        assert [obj.id for obj in await neighbour.list_managed()] == [theirs.id]
    finally:
        await asyncio.to_thread(subprocess.run, ["podman", "rm", "-f", "-t", "0", stranger_name], capture_output=True)
        await neighbour.remove(f"{neighbour.installation_id}-theirs")
        await neighbour.close()


async def test_missing_image_is_a_failure_naming_the_image(runtime: EngineRuntime) -> None:
    image = f"localhost/dockyard-missing-{uuid.uuid4().hex[:8]}:latest"
    with pytest.raises(RuntimeFailure) as raised:
        await runtime.create(spec_for(runtime, image, "noimage", ["true"]))
    assert image in raised.value.reason
    assert "build or push it" in raised.value.reason
    assert await runtime.list_managed() == []


async def test_taken_host_port_is_a_failure_naming_the_port(runtime: EngineRuntime, busybox_image: str) -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        spec = spec_for(runtime, busybox_image, "clash", ["sleep", "30"], ports=[PortBinding(8080, host_port=taken)])
        created = await runtime.create(spec)
        with pytest.raises(RuntimeFailure) as raised:
            await runtime.start(created.id)
    assert f"host port {taken}" in raised.value.reason
    assert "already in use" in raised.value.reason


async def test_missing_executable_is_a_failure_naming_it(runtime: EngineRuntime, busybox_image: str) -> None:
    created = await runtime.create(spec_for(runtime, busybox_image, "noexe", ["/bin/no-such-program"]))
    with pytest.raises(RuntimeFailure) as raised:
        await runtime.start(created.id)
    assert "/bin/no-such-program" in raised.value.reason
    assert "does not exist in the image" in raised.value.reason


async def test_exit_code_is_read_back(runtime: EngineRuntime, busybox_image: str) -> None:
    created = await runtime.create(spec_for(runtime, busybox_image, "exit3", ["sh", "-c", "exit 3"]))
    await runtime.start(created.id)
    exited = await wait_exited(runtime, created.id)
    assert exited.exit_code == 3
    assert not exited.oom_killed
    assert exited.finished_at is not None
    assert exited.started_at is not None
    [listed] = await runtime.list_managed()
    assert (listed.state, listed.exit_code, listed.finished_at) == (ObjectState.EXITED, 3, exited.finished_at)


async def test_memory_limit_kills_a_process_that_exceeds_it(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient, engine_url: str
) -> None:
    """The kernel's OOM killer ends it with SIGKILL (137). Docker and Podman 5 report `OOMKilled`; Podman
    before 5.0 never does (conmon notices the OOM and leaves an `oom` marker file in its working directory,
    which that Podman does not read), so there the marker is the evidence that the OOM killer acted."""
    marker = Path(engine_url.removeprefix("unix://")).parent / "oom"
    marker.unlink(missing_ok=True)
    hog = ["sh", "-c", "x=a; while true; do x=$x$x; done"]
    created = await runtime.create(spec_for(runtime, busybox_image, "hog", hog, memory_mb=16))
    await runtime.start(created.id)
    exited = await wait_exited(runtime, created.id)
    assert exited.exit_code == 137
    reported = engine.api.inspect_container(created.id)["State"]["OOMKilled"]
    assert exited.oom_killed == reported
    assert exited.oom_killed or marker.exists()


async def test_logs_tail(runtime: EngineRuntime, busybox_image: str) -> None:
    five = ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done"]
    created = await runtime.create(spec_for(runtime, busybox_image, "five", five))
    await runtime.start(created.id)
    await wait_exited(runtime, created.id)
    assert await read_logs(runtime, created.id, tail=2) == b"line4\nline5\n"
    assert await read_logs(runtime, created.id) == b"".join(f"line{i}\n".encode() for i in range(1, 6))


async def test_logs_since_the_epoch_or_before_is_everything_and_tail_zero_nothing(
    runtime: EngineRuntime, busybox_image: str
) -> None:
    """The docker SDK refuses a `since` at or before the epoch (InvalidArgument), which was an unhandled error on
    the logs routes; the runtime reads it as "from the beginning"."""
    two = ["sh", "-c", "echo one; echo two"]
    created = await runtime.create(spec_for(runtime, busybox_image, "epoch", two))
    await runtime.start(created.id)
    await wait_exited(runtime, created.id)
    for since in (datetime(1970, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)):
        assert await read_logs(runtime, created.id, since=since) == b"one\ntwo\n", since
    assert await read_logs(runtime, created.id, since=datetime(9999, 12, 31, tzinfo=UTC)) == b""
    assert await read_logs(runtime, created.id, tail=0) == b""


async def test_logs_since(runtime: EngineRuntime, busybox_image: str) -> None:
    """`since` keeps what was printed after it: the cut is taken after "one" was read back and before the
    container is told to print "two", so the two lines lie on either side of it."""
    waits = ["sh", "-c", "echo one; while [ ! -f /tmp/go ]; do sleep 0.05; done; echo two"]
    created = await runtime.create(spec_for(runtime, busybox_image, "since", waits))
    await runtime.start(created.id)
    async with asyncio.timeout(PATIENCE_SECONDS):
        while True:
            if await read_logs(runtime, created.id):
                break
            await asyncio.sleep(0.05)  # "one" not written yet
    cut = datetime.now(UTC)
    await runtime.exec(created.id, ["sh", "-c", ": > /tmp/go"])
    await wait_exited(runtime, created.id)
    assert await read_logs(runtime, created.id, since=cut) == b"two\n"
    assert await read_logs(runtime, created.id, since=cut - timedelta(hours=1)) == b"one\ntwo\n"


async def test_logs_follow_sees_new_lines_and_ends_when_the_container_stops(
    runtime: EngineRuntime, busybox_image: str
) -> None:
    waits = ["sh", "-c", "echo ready; while [ ! -f /tmp/go ]; do sleep 0.05; done; echo after"]
    created = await runtime.create(spec_for(runtime, busybox_image, "follow", waits))
    await runtime.start(created.id)
    received = b""
    async with asyncio.timeout(PATIENCE_SECONDS):
        async for chunk in runtime.logs(created.id, follow=True):
            received += chunk
            if received == b"ready\n":
                assert (await runtime.exec(created.id, ["sh", "-c", ": > /tmp/go"])).exit_code == 0
    assert received == b"ready\nafter\n"


async def test_closing_a_follow_early_frees_its_thread(runtime: EngineRuntime, busybox_image: str) -> None:
    """A follow of a container that never stops, abandoned after one line: the worker thread reading it
    must end, or shutting its executor down would wait forever."""
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=4)
    loop.set_default_executor(executor)
    ticks = ["sh", "-c", "while true; do echo tick; sleep 0.1; done"]
    created = await runtime.create(spec_for(runtime, busybox_image, "ticks", ticks))
    await runtime.start(created.id)
    follow = runtime.logs(created.id, follow=True)
    assert (await anext(follow)).startswith(b"tick")
    await follow.aclose()  # type: ignore[attr-defined]
    loop.set_default_executor(ThreadPoolExecutor(max_workers=4))
    async with asyncio.timeout(PATIENCE_SECONDS):
        await asyncio.to_thread(executor.shutdown, wait=True)


async def test_logs_of_a_missing_object_is_a_failure(runtime: EngineRuntime) -> None:
    with pytest.raises(RuntimeFailure, match="not found"):
        async for _ in runtime.logs(f"{runtime.installation_id}-absent"):
            pass


async def test_stop_restart_remove_and_their_idempotence(runtime: EngineRuntime, busybox_image: str) -> None:
    missing = f"{runtime.installation_id}-absent"
    await runtime.stop(missing)
    await runtime.remove(missing)
    await runtime.remove_volume(missing)
    assert await runtime.inspect(missing) is None
    created = await runtime.create(spec_for(runtime, busybox_image, "gone", ["sleep", "30"]))
    await runtime.start(created.id)
    [running] = await runtime.list_managed()
    assert running.state == ObjectState.RUNNING
    assert running.started_at is not None
    await runtime.stop(created.id, timeout=0)
    [stopped] = await runtime.list_managed()
    assert stopped.state == ObjectState.EXITED
    assert stopped.finished_at is not None
    restarted = await runtime.restart(created.id, timeout=0)
    [listed] = await runtime.list_managed()
    assert listed.state == ObjectState.RUNNING
    assert listed.started_at == restarted.started_at != running.started_at
    await runtime.stop(created.id, timeout=0)
    assert (await runtime.inspect(created.id)) is not None
    await runtime.remove(created.id)
    await runtime.remove(created.id)
    assert await runtime.inspect(created.id) is None


async def test_env_and_mounts_are_visible_inside(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient, tmp_path: Path
) -> None:
    volume = f"dockyard-ns-{uuid.uuid4()}"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.txt").write_text("from the host\n")
    spec = spec_for(
        runtime,
        busybox_image,
        "env",
        ["sh", "-c", "echo $GREETING > /data/greeting; sleep 30"],
        env={"GREETING": "hello"},
        mounts=[Mount("/data", volume=volume), Mount("/config", host_path=str(tmp_path / "config"), read_only=True)],
    )
    created = await runtime.create(spec)
    assert engine.volumes.get(volume).attrs["Labels"][LABEL_INSTALLATION] == runtime.installation_id
    await runtime.start(created.id)
    async with asyncio.timeout(PATIENCE_SECONDS):
        while True:
            result = await runtime.exec(created.id, ["cat", "/data/greeting"])
            if result.exit_code == 0:
                break
            await asyncio.sleep(0.05)  # the shell has not written it yet
    assert result.output == "hello\n"
    assert (await runtime.exec(created.id, ["sh", "-c", "echo $GREETING"])).output == "hello\n"
    assert (await runtime.exec(created.id, ["cat", "/config/config.txt"])).output == "from the host\n"
    assert (await runtime.exec(created.id, ["sh", "-c", "echo x > /config/new"])).exit_code != 0  # read-only

    with pytest.raises(RuntimeFailure, match="in use"):
        await runtime.remove_volume(volume)
    await runtime.remove(created.id)
    assert engine.volumes.get(volume).name == volume  # removing the container keeps named volumes
    await runtime.remove_volume(volume)
    with pytest.raises(docker.errors.NotFound):
        engine.volumes.get(volume)


async def test_host_paths_outside_the_data_dir_are_refused_before_the_engine_sees_them(
    runtime: EngineRuntime, busybox_image: str, tmp_path: Path
) -> None:
    for mount, why in [
        (Mount("/host", host_path="/etc", read_only=True), "only files under"),
        (Mount("/host", host_path=f"{tmp_path}/../etc", read_only=True), "without . or .."),
        (Mount("/host", host_path=str(tmp_path / "keys"), read_only=False), "read-only"),
        (Mount("/proc/sys", host_path=str(tmp_path / "keys"), read_only=True), "/proc"),
    ]:
        spec = spec_for(runtime, busybox_image, "host", ["sleep", "30"], mounts=[mount])
        with pytest.raises(RuntimeFailure, match=why) as raised:
            await runtime.create(spec)
        assert "nothing was created" in raised.value.reason
        assert await runtime.inspect(spec.name) is None
    unmounting = EngineRuntime(runtime.url, installation_id=runtime.installation_id)  # no data dir: no host path
    try:
        keys = Mount("/root/.ssh/authorized_keys", host_path=str(tmp_path / "keys"), read_only=True)
        with pytest.raises(RuntimeFailure, match="mounts no host path"):
            await unmounting.create(spec_for(unmounting, busybox_image, "host", ["sleep", "30"], mounts=[keys]))
    finally:
        await unmounting.close()


async def test_a_container_without_gpus_is_told_it_has_none(runtime: EngineRuntime, busybox_image: str) -> None:
    """`NVIDIA_VISIBLE_DEVICES=void` inside, so the NVIDIA toolkit's hook attaches no GPU whatever the image's ENV
    says; a request that sets a GPU variable itself is refused."""
    created = await runtime.create(spec_for(runtime, busybox_image, "cpu", ["sleep", "30"], env={"MODE": "cpu"}))
    await runtime.start(created.id)
    env = (await runtime.exec(created.id, ["env"])).output.splitlines()
    assert "NVIDIA_VISIBLE_DEVICES=void" in env
    assert "MODE=cpu" in env
    for name in ("NVIDIA_VISIBLE_DEVICES", "nvidia_driver_capabilities", "CUDA_VISIBLE_DEVICES"):
        spec = spec_for(runtime, busybox_image, "wants-gpus", ["sleep", "30"], env={name: "all"})
        with pytest.raises(RuntimeFailure, match="set by the runtime from the GPUs allocated"):
            await runtime.create(spec)
        assert await runtime.inspect(spec.name) is None


async def test_exec_in_a_stopped_object_is_a_failure(runtime: EngineRuntime, busybox_image: str) -> None:
    created = await runtime.create(spec_for(runtime, busybox_image, "idle", ["sleep", "30"]))
    with pytest.raises(RuntimeFailure, match="start it first"):
        await runtime.exec(created.id, ["true"])


async def test_limits_and_unprivileged_settings_reach_the_engine(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient
) -> None:
    spec = spec_for(
        runtime, busybox_image, "limited", ["sleep", "30"], memory_mb=64, pids_limit=50, cpu=0.5, rootfs_size_gb=1
    )
    created = await runtime.create(spec)
    host = engine.api.inspect_container(created.id)["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["PidsLimit"] == 50
    assert host["NanoCpus"] == 500_000_000
    assert host["Privileged"] is False
    assert "no-new-privileges" in host["SecurityOpt"]
    assert not host.get("CapAdd")


async def test_cpu_request_is_clamped_to_the_hosts_cpus(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient
) -> None:
    created = await runtime.create(spec_for(runtime, busybox_image, "greedy", ["sleep", "30"], cpu=4096))
    host_cpus = engine.info()["NCPU"]
    assert engine.api.inspect_container(created.id)["HostConfig"]["NanoCpus"] == host_cpus * 1_000_000_000


async def test_simulated_gpu_sets_only_the_visible_devices(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient
) -> None:
    spec = spec_for(runtime, busybox_image, "gpu", ["sleep", "30"], gpus=[GpuDevice("GPU-sim-0", simulated=True)])
    created = await runtime.create(spec)
    await runtime.start(created.id)
    result = await runtime.exec(created.id, ["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"])
    assert result.output == "GPU-sim-0\n"
    assert not engine.api.inspect_container(created.id)["HostConfig"].get("Devices")


async def test_a_real_gpu_gets_its_device_node_and_the_drivers_files_read_only(
    runtime: EngineRuntime, busybox_image: str, tmp_path: Path
) -> None:
    """Podman takes no device request, so a GPU is attached as the toolkit would: its device node (here a
    character device made as /dev/null's, standing for /dev/nvidia0), the driver's files mounted read-only where
    `LD_LIBRARY_PATH` and PATH find them, and the variables naming it."""
    dev = tmp_path / "dev"
    dev.mkdir()
    os.mknod(dev / "nvidia0", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(dev / "nvidiactl", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    nvidia = NvidiaHost(str(fake_driver(tmp_path / "driver")), dev=dev)
    gpu_runtime = EngineRuntime(runtime.url, installation_id=runtime.installation_id, nvidia=nvidia)
    try:
        spec = spec_for(
            gpu_runtime,
            busybox_image,
            "real-gpu",
            ["sleep", "30"],
            gpus=[GpuDevice(UUID_A, minor=0)],
            env={"LD_LIBRARY_PATH": "/opt/mine"},
        )
        created = await gpu_runtime.create(spec)
        await gpu_runtime.start(created.id)
        script = (
            "[ -c /dev/nvidia0 ] && [ -c /dev/nvidiactl ] && ! [ -e /dev/nvidia1 ] && echo nodes; "
            f"head -c 4 {LIBRARY_DIR}/libcuda.so.1 | tail -c 3; echo; "
            f"touch {LIBRARY_DIR}/libcuda.so.1 2>/dev/null || echo read-only; "
            "[ -x /usr/bin/nvidia-smi ] && echo smi; "
            "echo $NVIDIA_VISIBLE_DEVICES $CUDA_VISIBLE_DEVICES $LD_LIBRARY_PATH"
        )
        result = await gpu_runtime.exec(created.id, ["sh", "-c", script])
        assert result.output.splitlines() == [
            "nodes",
            "ELF",
            "read-only",
            "smi",
            f"{UUID_A} {UUID_A} {LIBRARY_DIR}:/opt/mine",
        ]
    finally:
        await gpu_runtime.close()


async def test_unreachable_engine_is_unavailable(tmp_path: Path) -> None:
    url = f"unix://{tmp_path / 'absent.sock'}"
    runtime = EngineRuntime(url, installation_id="test")  # construction does no I/O
    with pytest.raises(RuntimeUnavailable, match="cannot reach the container engine at") as raised:
        await runtime.probe()
    assert url in str(raised.value)
    with pytest.raises(RuntimeUnavailable):
        await runtime.list_managed()
    await runtime.close()


def test_host_network_is_refused() -> None:
    with pytest.raises(ValueError, match="slirp4netns"):
        EngineRuntime("unix:///nowhere.sock", installation_id="test", network_mode="host")


async def test_a_sized_volume_is_capped_where_podman_can_and_made_anyway_where_it_cannot(
    runtime: EngineRuntime, busybox_image: str, engine: docker.DockerClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Podman caps a volume (`o=size=`) only on XFS with project quotas. Where its volume directory is elsewhere
    (ext4 here) it refuses the option: the container is still made, with its volume uncapped, and the runtime
    says why once and stops asking."""
    first, second = f"dockyard-ns-{uuid.uuid4()}", f"dockyard-ns-{uuid.uuid4()}"
    spec = spec_for(runtime, busybox_image, "sized", ["sleep", "30"], mounts=[Mount("/data", volume=first, size_gb=1)])
    with caplog.at_level(logging.WARNING, logger="dockyard.runtimes.engine"):
        await runtime.create(spec)
        await runtime.ensure_volume(second, {}, size_gb=1)
    options = [engine.volumes.get(name).attrs.get("Options") or {} for name in (first, second)]
    refusals = [record for record in caplog.records if "cannot cap volume sizes" in record.getMessage()]
    if runtime.volume_sizes_capped:
        assert options == [{"o": "size=1g"}] * 2
        assert refusals == []
    else:
        assert options == [{}, {}]
        (refusal,) = refusals
        assert "Project Quota" in refusal.getMessage()
