"""Builds the runtime's `RunSpec` for one container row, with its secrets in plaintext, and reads back where it
listens (`published`).

Build it just before `create` and drop it after: it is the only place env values and registry passwords
exist decrypted. What goes in:
- the workload spec copied from the template at creation (image, credential, command, args, envs, ports,
  network storages as the named volumes `dockyard-ns-<storage id>`);
- the organization's network (`org_network`), which every container and worker of the organization joins;
- the product's limits (CPU, memory, pids);
- the GPUs allocated to the row, by UUID;
- the organization's SSH keys the row names: as env `SSH_KEY` (the public keys joined by newlines, the
  GMI convention images read) and as an `authorized_keys` file bind-mounted read-only at
  `/root/.ssh/authorized_keys`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.inputs import AUTHORIZED_KEYS_TARGET
from dockyard.core.workload import WorkloadSpec
from dockyard.db.models import ContainerModel, ProductModel, SshKeyModel
from dockyard.gpus.inventory import GpuInfo
from dockyard.runtimes.base import (
    LABEL_GENERATION,
    LABEL_GPUS,
    LABEL_ID,
    LABEL_KIND,
    LABEL_NODE,
    LABEL_ORG,
    GpuDevice,
    Mount,
    PortBinding,
    RegistryAuth,
    RunSpec,
    RuntimeObject,
)
from dockyard.secrets import SecretBox
from dockyard.services.workloads import runtime_envs

KIND_CONTAINER = "container"


def object_name(container_id: str, generation: int) -> str:
    """The runtime object's name: deterministic per container and generation, so `create` is idempotent."""
    return f"dy-{container_id[:12]}-g{generation}"


def published(obj: RuntimeObject) -> list[dict[str, Any]]:
    """The host ports the runtime chose, as stored in `published_ports` (GMI's port shape)."""
    return [{"containerPort": p.container_port, "port": p.host_port, "protocol": p.protocol.upper()} for p in obj.ports]


def storage_volume(storage_id: str) -> str:
    return f"dockyard-ns-{storage_id}"


ORG_NETWORK_PREFIX = "dockyard-org-"


def org_network(org_id: str) -> str:
    """The network of every container and worker of one organization, isolated from every other's."""
    return f"{ORG_NETWORK_PREFIX}{org_id}"


def container_labels(row: ContainerModel, gpu_uuids: Sequence[str], node_id: str) -> dict[str, str]:
    return {
        LABEL_KIND: KIND_CONTAINER,
        LABEL_ID: row.id,
        LABEL_ORG: row.org_id,
        LABEL_GENERATION: str(row.generation),
        LABEL_GPUS: ",".join(gpu_uuids),
        LABEL_NODE: node_id,
    }


def authorized_keys_path(data_dir: Path, container_id: str) -> Path:
    return data_dir / "ssh" / container_id / "authorized_keys"


def write_authorized_keys(data_dir: Path, container_id: str, public_keys: Sequence[str]) -> Path:
    """Write the file the container mounts; readable by its owner only, as sshd's StrictModes demands."""
    path = authorized_keys_path(data_dir, container_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(key.strip() + "\n" for key in public_keys))
    tmp.replace(path)  # atomic: a container starting now never sees half a file
    return path


def remove_authorized_keys(data_dir: Path, container_id: str) -> None:
    shutil.rmtree(authorized_keys_path(data_dir, container_id).parent, ignore_errors=True)


async def load_ssh_keys(session: AsyncSession, rows: Sequence[ContainerModel]) -> dict[tuple[str, str], str]:
    """`(org id, key id) -> public key` for every key the rows name; another organization's key never matches."""
    wanted = {key_id for row in rows for key_id in row.ssh_key_ids or []}
    if not wanted:
        return {}
    keys = await session.scalars(select(SshKeyModel).where(SshKeyModel.id.in_(wanted)))
    return {(key.org_id, key.id): key.public_key for key in keys}


def public_keys_for(row: ContainerModel, ssh_keys: dict[tuple[str, str], str]) -> list[str]:
    """The row's keys that still exist, in the order the user listed them."""
    return [ssh_keys[(row.org_id, key_id)] for key_id in row.ssh_key_ids or [] if (row.org_id, key_id) in ssh_keys]


def build_run_spec(
    row: ContainerModel,
    *,
    product: ProductModel,
    box: SecretBox,
    data_dir: Path,
    public_keys: Sequence[str],
    gpus: Sequence[GpuInfo],
    node_id: str,
) -> RunSpec:
    """The request for the row's current generation. `gpus` are the row's allocation (empty for CPU
    products); when `public_keys` is not empty the caller writes them with `write_authorized_keys` first."""
    spec = WorkloadSpec.model_validate(row.spec)
    env = runtime_envs(spec.envs, box=box)
    mounts = [
        Mount(target=volume.mount_path, volume=storage_volume(volume.storage_id), size_gb=volume.size_gb)
        for volume in spec.volumes
    ]
    if public_keys:
        env["SSH_KEY"] = "\n".join(key.strip() for key in public_keys)
        mounts.append(
            Mount(
                target=AUTHORIZED_KEYS_TARGET,
                host_path=str(authorized_keys_path(data_dir, row.id)),
                read_only=True,
            )
        )
    registry_auth = None
    if spec.credential is not None:
        registry_auth = RegistryAuth(spec.credential.username, box.decrypt(spec.credential.secret))
    # `command` replaces the image's CMD and `args` follow it; with neither, the image's CMD runs.
    command = [*spec.command, *spec.args] or None
    return RunSpec(
        name=object_name(row.id, row.generation),
        image=spec.image,
        labels=container_labels(row, [gpu.uuid for gpu in gpus], node_id),
        network=org_network(row.org_id),
        entrypoint=list(spec.entrypoint) or None,
        command=command,
        env=env,
        ports=[PortBinding(p.container_port, p.host_port, p.protocol.value.lower()) for p in spec.ports],
        mounts=mounts,
        registry_auth=registry_auth,
        gpus=[GpuDevice(gpu.uuid, gpu.minor_number, gpu.simulated) for gpu in gpus],
        cpu=product.cpu,
        memory_mb=product.memory_mb,
        pids_limit=product.pids_limit,
        rootfs_size_gb=spec.rootfs_size_gb,
    )
