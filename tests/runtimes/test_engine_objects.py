"""The engine-JSON mapping, over payloads shaped as Docker and Podman send them."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from docker.errors import APIError

from dockyard.runtimes.base import ObjectState, PublishedPort, RuntimeUnavailable
from dockyard.runtimes.engine import EngineRuntime, engine_facts
from dockyard.runtimes.engine_objects import (
    is_name_conflict,
    is_storage_opt_unsupported,
    object_from_inspect,
    object_from_listing,
    parse_engine_time,
    start_failure_reason,
)

DOCKER_OOM_INSPECT = {
    "Id": "abc123",
    "Name": "/dockyard-c1",
    "Config": {"Labels": {"dockyard.id": "c1"}},
    "State": {
        "Status": "exited",
        "ExitCode": 137,
        "OOMKilled": True,
        "Error": "",
        "StartedAt": "2024-05-01T10:00:00.123456789Z",
        "FinishedAt": "2024-05-01T10:00:05Z",
    },
    "NetworkSettings": {
        "IPAddress": "",
        "Ports": {
            "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}, {"HostIp": "::", "HostPort": "32768"}],
            "9000/tcp": None,
        },
        "Networks": {"bridge": {"IPAddress": "172.17.0.2"}},
    },
}


def test_inspect_of_an_oom_killed_container() -> None:
    obj = object_from_inspect(DOCKER_OOM_INSPECT)
    assert obj.name == "dockyard-c1"
    assert obj.state == ObjectState.EXITED
    assert obj.exit_code == 137
    assert obj.oom_killed is True
    assert obj.ports == [PublishedPort(8080, 32768, "tcp", "0.0.0.0")]
    assert obj.ip_address == "172.17.0.2"
    assert obj.started_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert obj.finished_at == datetime(2024, 5, 1, 10, 0, 5, tzinfo=UTC)
    assert obj.resource_id == "c1"


def test_running_container_has_no_exit_code_and_zero_time_is_none() -> None:
    attrs = {
        "Id": "def",
        "Name": "/x",
        "Config": {"Labels": None},
        "State": {
            "Status": "running",
            "ExitCode": 0,
            "StartedAt": "2024-05-01T10:00:00Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
        },
        "NetworkSettings": {"IPAddress": "10.88.0.4", "Ports": {}},
    }
    obj = object_from_inspect(attrs)
    assert obj.state == ObjectState.RUNNING
    assert obj.exit_code is None
    assert obj.finished_at is None
    assert obj.labels == {}
    assert obj.ip_address == "10.88.0.4"


def test_states_outside_the_contract_are_other() -> None:
    assert object_from_inspect({"Id": "x", "State": {"Status": "restarting"}}).state == ObjectState.OTHER
    assert object_from_inspect({"Id": "x", "State": {"Status": "paused"}}).state == ObjectState.PAUSED


def test_listing_reads_the_exit_code_from_the_status_text() -> None:
    entry = {
        "Id": "abc",
        "Names": ["/dockyard-c2"],
        "State": "exited",
        "Status": "Exited (3) 2 seconds ago",
        "Labels": {"dockyard.installation": "i1"},
        "Ports": [{"PrivatePort": 8080, "PublicPort": 40000, "Type": "tcp", "IP": "0.0.0.0"}, {"PrivatePort": 22}],
    }
    obj = object_from_listing(entry)
    assert (obj.name, obj.state, obj.exit_code) == ("dockyard-c2", ObjectState.EXITED, 3)
    assert obj.ports == [PublishedPort(8080, 40000, "tcp", "0.0.0.0")]
    running = object_from_listing({**entry, "State": "running", "Status": "Up 5 seconds"})
    assert running.exit_code is None


def test_the_networks_an_object_is_on_are_read_from_the_inspect_and_the_listing() -> None:
    assert object_from_inspect(DOCKER_OOM_INSPECT).networks == ("bridge",)
    entry = {"Id": "abc", "Names": ["/c"], "State": "running", "Labels": {}}
    two = {"Networks": {"dockyard-org-b": {}, "podman": {"IPAddress": "10.88.0.5"}}}
    assert object_from_listing({**entry, "NetworkSettings": two}).networks == ("dockyard-org-b", "podman")
    # Podman lists a container in a network mode of its own (slirp4netns) with null networks.
    assert object_from_listing({**entry, "NetworkSettings": {"Networks": None}}).networks == ()


def test_parse_engine_time() -> None:
    assert parse_engine_time("") is None
    assert parse_engine_time(None) is None
    assert parse_engine_time("0001-01-01T00:00:00Z") is None
    assert parse_engine_time("not a time") is None
    parsed = parse_engine_time("2026-01-02T03:04:05+02:00")
    assert parsed is not None
    assert parsed.utcoffset() is not None


def test_start_failures_become_sentences() -> None:
    podman_port = "cannot listen on the TCP port: listen tcp4 :36969: bind: address already in use"
    docker_port = (
        "driver failed programming external connectivity on endpoint web (1f2e): "
        "Bind for 0.0.0.0:8080 failed: port is already allocated"
    )
    assert start_failure_reason(podman_port).startswith("host port 36969 is already in use")
    assert start_failure_reason(docker_port).startswith("host port 8080 is already in use")
    docker_exe = 'failed to create task: exec: "serve": executable file not found in $PATH: unknown'
    assert "the command serve does not exist" in start_failure_reason(docker_exe)
    denied = 'runc create failed: exec: "/etc/passwd": permission denied'
    assert "/etc/passwd is not executable" in start_failure_reason(denied)
    assert start_failure_reason("something new").endswith(": something new")


def test_engine_error_classifiers() -> None:
    podman = 'the container name "web" is already in use by 1f2e. You have to remove that container'
    assert is_name_conflict(500, podman)
    assert is_name_conflict(409, "Conflict.")
    assert not is_name_conflict(500, "listen tcp4 :80: bind: address already in use")
    assert is_storage_opt_unsupported("--storage-opt is supported only for overlay over xfs with 'pquota' mount option")
    assert not is_storage_opt_unsupported("no space left on device")


def test_engine_kind_comes_from_the_version_components() -> None:
    podman = engine_facts(
        {"Version": "4.3.1", "Components": [{"Name": "Podman Engine", "Version": "4.3.1"}]}, {"NCPU": 2}
    )
    assert (podman.description, podman.cpus) == ("podman 4.3.1", 2)
    docker = engine_facts({"Version": "26.1.0", "Components": [{"Name": "Engine", "Version": "26.1.0"}]}, {"NCPU": 8})
    assert (docker.description, docker.cpus) == ("docker 26.1.0", 8)
    assert not podman.nvidia_runtime
    assert not docker.nvidia_runtime


def test_docker_with_the_nvidia_runtime_takes_device_requests() -> None:
    """Docker lists the NVIDIA Container Toolkit's runtime in `info` once the toolkit has configured it."""
    version = {"Version": "26.1.0", "Components": [{"Name": "Engine", "Version": "26.1.0"}]}
    info = {"NCPU": 8, "Runtimes": {"runc": {"path": "runc"}, "nvidia": {"path": "nvidia-container-runtime"}}}
    assert engine_facts(version, info).nvidia_runtime


async def test_a_container_removed_mid_inspect_is_missing_not_an_unreachable_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Podman 4.3 answers 500 "no such container" when a container is removed while it is inspected (two loops
    list and remove at once); any other server error still means the engine cannot be trusted now."""
    runtime = EngineRuntime("unix:///nonexistent.sock", installation_id="test")
    answer: list[APIError] = []

    def inspect_container(object_id: str) -> dict[str, object]:
        raise answer[0]

    async def ready() -> tuple[object, object]:
        return SimpleNamespace(api=SimpleNamespace(inspect_container=inspect_container)), object()

    monkeypatch.setattr(runtime, "_ready", ready)
    answer.append(
        APIError("500 Server Error", explanation="container abc does not exist in database: no such container")
    )
    assert await runtime.inspect("abc") is None
    answer[0] = APIError("500 Server Error", explanation="database is locked")
    with pytest.raises(RuntimeUnavailable):
        await runtime.inspect("abc")
