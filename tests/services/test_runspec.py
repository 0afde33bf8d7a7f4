"""Building the runtime's request from a container row: secrets decrypted, limits, GPUs, volumes, SSH."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet

from dockyard.core.workload import Credential, EnvVar, PortSpec, VolumeSpec, WorkloadSpec
from dockyard.db.models import ContainerModel, ProductModel
from dockyard.gpus.inventory import GpuInfo
from dockyard.runtimes.base import GpuDevice, Mount, PortBinding, RegistryAuth
from dockyard.secrets import SecretBox
from dockyard.services.runspec import (
    authorized_keys_path,
    build_run_spec,
    public_keys_for,
    remove_authorized_keys,
    write_authorized_keys,
)

CONTAINER_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


def row(box: SecretBox, **spec_fields: object) -> ContainerModel:
    spec = WorkloadSpec(
        image="registry.example/team/app:1",
        credential=Credential(username="robot", secret=box.encrypt("registry-password")),
        command=["python", "serve.py"],
        args=["--port", "8000"],
        envs=[EnvVar(name="TOKEN", value=box.encrypt("tok-123")), EnvVar(name="EMPTY", value="")],
        ports=[PortSpec(container_port=8000), PortSpec(container_port=53, host_port=5353, protocol="UDP")],
        volumes=[VolumeSpec(storage_id="ns1", mount_path="/workspace")],
        **spec_fields,  # type: ignore[arg-type]
    )
    return ContainerModel(
        id=CONTAINER_ID,
        org_id="org-1",
        generation=3,
        spec=spec.model_dump(mode="json"),
        ssh_key_ids=["k2", "k1", "gone"],
    )


def product() -> ProductModel:
    return ProductModel(id="gpu.h100.1x", cpu=16.0, memory_mb=131072, pids_limit=4096, gpu_count=1)


def test_spec_carries_plaintext_secrets_limits_gpus_and_labels(tmp_path: Path) -> None:
    box = SecretBox(Fernet.generate_key().decode())
    gpu = GpuInfo("GPU-abc", 0, "NVIDIA H100 80GB HBM3", 81559, minor_number=2)
    spec = build_run_spec(
        row(box), product=product(), box=box, data_dir=tmp_path, public_keys=[], gpus=[gpu], node_id="local-host"
    )
    assert spec.name == "dy-3c90c3cc-0d4-g3"
    assert spec.image == "registry.example/team/app:1"
    assert spec.registry_auth == RegistryAuth("robot", "registry-password")
    assert spec.command == ["python", "serve.py", "--port", "8000"]
    assert spec.entrypoint is None
    assert spec.env == {"TOKEN": "tok-123", "EMPTY": ""}
    # Exactly the ports the owner asked for, on every interface: a public port is what a container offers.
    assert spec.ports == [PortBinding(8000, None, "tcp"), PortBinding(53, 5353, "udp")]
    assert spec.network == "dockyard-org-org-1"
    assert spec.mounts == [Mount(target="/workspace", volume="dockyard-ns-ns1")]
    assert spec.gpus == [GpuDevice("GPU-abc", 2, False)]
    assert (spec.cpu, spec.memory_mb, spec.pids_limit) == (16.0, 131072, 4096)
    assert spec.labels == {
        "dockyard.kind": "container",
        "dockyard.id": CONTAINER_ID,
        "dockyard.org": "org-1",
        "dockyard.generation": "3",
        "dockyard.gpus": "GPU-abc",
        "dockyard.node": "local-host",
    }


def test_ssh_keys_go_to_env_and_a_read_only_authorized_keys_file(tmp_path: Path) -> None:
    box = SecretBox(Fernet.generate_key().decode())
    container = row(box)
    stored = {("org-1", "k1"): "ssh-ed25519 AAAA1 one", ("org-1", "k2"): "ssh-ed25519 AAAA2 two\n"}
    stored[("org-2", "gone")] = "ssh-ed25519 AAAA3 another-organization"
    keys = public_keys_for(container, stored)
    assert keys == ["ssh-ed25519 AAAA2 two\n", "ssh-ed25519 AAAA1 one"]

    path = write_authorized_keys(tmp_path, CONTAINER_ID, keys)
    spec = build_run_spec(
        container, product=product(), box=box, data_dir=tmp_path, public_keys=keys, gpus=[], node_id="n"
    )
    assert path == authorized_keys_path(tmp_path, CONTAINER_ID)
    assert path.read_text() == "ssh-ed25519 AAAA2 two\nssh-ed25519 AAAA1 one\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert spec.env["SSH_KEY"] == "ssh-ed25519 AAAA2 two\nssh-ed25519 AAAA1 one"
    assert Mount(target="/root/.ssh/authorized_keys", host_path=str(path), read_only=True) in spec.mounts
    assert spec.labels["dockyard.gpus"] == ""

    remove_authorized_keys(tmp_path, CONTAINER_ID)
    assert not path.parent.exists()


def test_args_alone_replace_the_image_cmd_and_nothing_keeps_it(tmp_path: Path) -> None:
    box = SecretBox(Fernet.generate_key().decode())
    container = row(box)
    container.spec = {**container.spec, "command": [], "args": []}
    spec = build_run_spec(container, product=product(), box=box, data_dir=tmp_path, public_keys=[], gpus=[], node_id="")
    assert spec.command is None
    container.spec = {**container.spec, "args": ["-v"], "entrypoint": ["/bin/sh", "-c"]}
    spec = build_run_spec(container, product=product(), box=box, data_dir=tmp_path, public_keys=[], gpus=[], node_id="")
    assert (spec.entrypoint, spec.command) == (["/bin/sh", "-c"], ["-v"])


def test_reserved_variables_stored_before_the_api_refused_them_never_reach_the_runtime(tmp_path: Path) -> None:
    box = SecretBox(Fernet.generate_key().decode())
    stored = {
        "NVIDIA_VISIBLE_DEVICES": "all",
        "cuda_visible_devices": "0",
        "RUNPOD_POD_ID": "w-2",
        "RUNPOD_DEBUG_LEVEL": "x",
    }
    container = row(box)
    envs = [*container.spec["envs"], *({"name": k, "value": box.encrypt(v)} for k, v in stored.items())]
    container.spec = {**container.spec, "envs": envs}
    spec = build_run_spec(container, product=product(), box=box, data_dir=tmp_path, public_keys=[], gpus=[], node_id="")
    assert spec.env == {"TOKEN": "tok-123", "EMPTY": "", "RUNPOD_DEBUG_LEVEL": "x"}
