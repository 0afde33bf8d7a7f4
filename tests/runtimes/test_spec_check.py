"""The engine runtime's own check of a RunSpec, alone: what Dockyard builds passes, and each value that could
carry an engine option, or reach beyond what Dockyard owns, is refused with a sentence."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from dockyard.core.status import EndpointType
from dockyard.core.workload import EnvVar, HealthCheck, PortSpec, VolumeSpec, WorkloadSpec
from dockyard.db.models import ContainerModel, EndpointModel, ProductModel, WorkerModel
from dockyard.gpus.inventory import GpuInfo
from dockyard.runtimes.base import GpuDevice, Mount, PortBinding, RunSpec, RuntimeFailure
from dockyard.runtimes.spec_check import check_run_spec, spec_problem
from dockyard.secrets import SecretBox
from dockyard.services.runspec import build_run_spec, write_authorized_keys
from dockyard.services.worker_runspec import WebhookAccess, build_worker_run_spec
from tests.core.test_inputs import BAD_MOUNT_PATHS, OTHER_VOLUME

ROOT = Path("/var/lib/dockyard")
STORAGE = "550e8400-e29b-41d4-a716-446655440000"
CONTAINER = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
KEYS = Mount("/root/.ssh/authorized_keys", host_path=f"{ROOT}/ssh/{CONTAINER}/authorized_keys", read_only=True)
SAFE = RunSpec(
    name="dy-3c90c3cc-0d4-g1",
    image="registry.example.com/team/app:1",
    labels={"dockyard.id": CONTAINER, "dockyard.gpus": "GPU-a,GPU-b", "dockyard.node": "local-host.example"},
    entrypoint=["/bin/sh", "-c"],
    command=["echo 'quotes; $(and) && pipes | stay text'"],
    env={"SSH_KEY": "ssh-ed25519 AAAA me\nssh-rsa BBBB you", "A.B-c": "x=y,z"},
    ports=[PortBinding(8080), PortBinding(53, 5353, "udp"), PortBinding(9000, None, "tcp", "127.0.0.1")],
    network="dockyard-org-2b1c8d5e-0000-4000-8000-000000000001",
    mounts=[Mount("/data", volume=f"dockyard-ns-{STORAGE}"), KEYS],
    gpus=[GpuDevice("GPU-2f8a0c1e-1234-5678-9abc-def012345678", minor=0)],
)


def changed(**fields: Any) -> RunSpec:
    return dataclasses.replace(SAFE, **fields)


def test_a_safe_spec_passes() -> None:
    assert spec_problem(SAFE, host_root=ROOT) is None
    check_run_spec(SAFE, host_root=ROOT)


def test_what_dockyard_builds_for_a_container_and_a_worker_passes(tmp_path: Path) -> None:
    box = SecretBox(Fernet.generate_key().decode())
    spec = WorkloadSpec(
        image="localhost/app:1",
        command=["python", "serve.py"],
        envs=[EnvVar(name="TOKEN", value=box.encrypt("t"))],
        ports=[PortSpec(container_port=8000)],
        volumes=[VolumeSpec(storage_id=STORAGE, mount_path="/workspace")],
        health_check=HealthCheck(path="/ping", port=8000),
    ).model_dump(mode="json")
    product = ProductModel(id="cpu.small", cpu=1.0, memory_mb=512, pids_limit=256)
    row = ContainerModel(id=CONTAINER, org_id="org-1", generation=1, spec=spec, ssh_key_ids=["k"])
    write_authorized_keys(tmp_path, CONTAINER, ["ssh-ed25519 AAAA me"])
    gpu = GpuInfo("GPU-sim-0a1b2c3d-0a1b-0a1b-0a1b2c3d4e5f", 0, "NVIDIA H100 80GB HBM3", 81559, simulated=True)
    container = build_run_spec(
        row, product=product, box=box, data_dir=tmp_path, public_keys=["ssh-ed25519 AAAA me"], gpus=[gpu], node_id="n"
    )
    assert spec_problem(container, host_root=tmp_path) is None
    endpoint = EndpointModel(id="ep-1", org_id="org-1", type=EndpointType.ASYNC, spec=spec)
    worker = WorkerModel(id="w-1", endpoint_id="ep-1", org_id="org-1", generation=1)
    webhook = WebhookAccess("http://host.containers.internal:8000", "key", 10000)
    built = build_worker_run_spec(
        endpoint, worker, product=product, box=box, gpus=[], node_id="n", registry_auth=None, webhook=webhook
    )
    assert spec_problem(built, host_root=None) is None


@pytest.mark.parametrize(("path", "why"), BAD_MOUNT_PATHS)
def test_a_storage_target_the_api_refuses_is_refused_here_too(path: str, why: str) -> None:
    spec = changed(mounts=[Mount(path, volume=f"dockyard-ns-{STORAGE}")])
    with pytest.raises(RuntimeFailure) as raised:
        check_run_spec(spec, host_root=ROOT)
    assert raised.value.reason.startswith(f"refused to create {SAFE.name}: mount target ")
    assert why in raised.value.reason
    assert raised.value.reason.endswith("; nothing was created")


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"name": "dy x"}, "not a valid container name"),
        ({"name": "-dy"}, "not a valid container name"),
        ({"image": "localhost/x:1 --privileged"}, "image reference"),
        ({"image": "dir:etc"}, "not a dir: path"),
        ({"labels": {"dockyard.id": "x\ny"}}, "label"),
        ({"labels": {"dockyard.id": "a=b"}}, "label"),
        ({"labels": {"Dockyard ID": "x"}}, "label"),
        ({"env": {"A=B": "x"}}, "environment variable 'A=B'"),
        ({"env": {"HOST*": ""}}, "environment variable 'HOST*'"),
        ({"env": {"A": "x\x00y"}}, "NUL"),
        ({"env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, "set by the runtime from the GPUs allocated"),
        ({"env": {"nvidia_driver_capabilities": "all"}}, "set by the runtime"),
        ({"env": {"CUDA_VISIBLE_DEVICES": "0"}}, "set by the runtime"),
        ({"command": ["sh", "a\x00b"]}, "NUL"),
        ({"entrypoint": ["\x00"]}, "NUL"),
        ({"mounts": [Mount("/data", volume=OTHER_VOLUME + ",opt=x")]}, "not a network storage's volume"),
        ({"mounts": [Mount("/data", volume="/etc")]}, "not a network storage's volume"),
        ({"mounts": [Mount("/data", volume="my-volume")]}, "not a network storage's volume"),
        ({"mounts": [Mount("/data")]}, "either a volume or a host path"),
        ({"mounts": [Mount("/data", volume=OTHER_VOLUME, host_path=f"{ROOT}/x")]}, "either a volume or a host path"),
        ({"mounts": [Mount("/h", host_path="/etc", read_only=True)]}, "only files under /var/lib/dockyard"),
        ({"mounts": [Mount("/h", host_path=str(ROOT), read_only=True)]}, "only files under"),
        ({"mounts": [Mount("/h", host_path="/var/lib/dockyard-other/x", read_only=True)]}, "only files under"),
        ({"mounts": [Mount("/h", host_path=f"{ROOT}/../../etc", read_only=True)]}, "without . or .."),
        ({"mounts": [Mount("/h", host_path="ssh/keys", read_only=True)]}, "absolute"),
        ({"mounts": [Mount("/h", host_path=f"{ROOT}/a,source=x", read_only=True)]}, "comma"),
        ({"mounts": [Mount("/h", host_path=f"{ROOT}/ssh/keys")]}, "read-only"),
        ({"mounts": [Mount("/h,ro=false", host_path=f"{ROOT}/ssh/keys", read_only=True)]}, "may hold only"),
        ({"mounts": [Mount("/proc/x", host_path=f"{ROOT}/ssh/keys", read_only=True)]}, "at or under /proc"),
        ({"mounts": [*SAFE.mounts, Mount("/data/", volume=OTHER_VOLUME)]}, "two mounts at /data"),
        ({"mounts": [*SAFE.mounts, Mount(KEYS.target, volume=OTHER_VOLUME)]}, "SSH keys"),
        ({"ports": [PortBinding(0)]}, "outside 1-65535"),
        ({"ports": [PortBinding(80, 70000)]}, "outside 1-65535"),
        ({"ports": [PortBinding(80, None, "tcp,udp")]}, "not tcp or udp"),
        ({"ports": [PortBinding(80, None, "tcp", "localhost")]}, "not an IP address"),
        ({"ports": [PortBinding(80, None, "tcp", "127.0.0.1:80")]}, "not an IP address"),
        ({"network": "host"}, "network mode"),
        ({"network": "container:dy-other"}, "not a valid network name"),
        ({"network": "dockyard-org-x,opt=1"}, "not a valid network name"),
        ({"gpus": [GpuDevice("GPU-a,GPU-b")]}, "not a GPU UUID"),
        ({"gpus": [GpuDevice("all")]}, "not a GPU UUID"),
    ],
)
def test_each_unsafe_value_is_refused_with_a_sentence(fields: dict[str, Any], why: str) -> None:
    problem = spec_problem(changed(**fields), host_root=ROOT)
    assert problem is not None
    assert why in problem


def test_a_runtime_without_a_host_path_root_mounts_no_host_path() -> None:
    assert spec_problem(changed(mounts=[KEYS]), host_root=None) == (
        f"host path '{KEYS.host_path}': this runtime mounts no host path"
    )
