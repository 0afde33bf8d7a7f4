"""Builds the runtime's `RunSpec` for one endpoint worker, with its secrets in plaintext, and reads back
where the worker listens.

A worker runs its endpoint's worker template (one `WorkloadSpec`, DESIGN.md principle 4) as it was at the
generation the worker was made for. What goes in:
- the spec's image, entrypoint, command, decrypted envs plus `DOCKYARD_ENDPOINT_ID` and `DOCKYARD_WORKER_ID`;
- every spec port and the health-check port, published on host ports the runtime picks (read back after
  start: they are how the gateway reaches the worker);
- network storages as the named volumes `dockyard-ns-<storage id>` (shared with containers);
- the product's limits (CPU, memory, pids) and the GPUs allocated to the worker, by UUID;
- the registry credentials (`registry_auths.resolve`), which the caller resolves just before `create`.

Build it just before `create` and drop it after, like the container's (services/runspec.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dockyard.core.workload import HealthCheck, WorkloadSpec
from dockyard.db.models import EndpointModel, ProductModel, WorkerModel
from dockyard.gpus.inventory import GpuInfo
from dockyard.reconcilers.containers_rows import published
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
from dockyard.services.runspec import storage_volume
from dockyard.services.workloads import decrypt_envs

KIND_WORKER = "worker"
LABEL_ENDPOINT = "dockyard.endpoint"
# Hosts that mean "every interface" when a runtime reports where it published a port: reach them on loopback.
_ANY_HOST = {"", "0.0.0.0", "::"}


def worker_object_name(worker_id: str) -> str:
    """The runtime object's name: deterministic per worker, so a repeated `create` finds the one made before."""
    return f"dy-w-{worker_id[:12]}"


def health_check(spec: WorkloadSpec) -> HealthCheck:
    return spec.health_check or HealthCheck()


def serving_port(spec: WorkloadSpec) -> int:
    """The container port requests are proxied to: the first spec port, else the health-check port."""
    return spec.ports[0].container_port if spec.ports else health_check(spec).port


def worker_labels(worker: WorkerModel, gpu_uuids: Sequence[str], node_id: str) -> dict[str, str]:
    return {
        LABEL_KIND: KIND_WORKER,
        LABEL_ID: worker.id,
        LABEL_ORG: worker.org_id,
        LABEL_GENERATION: str(worker.generation),
        LABEL_GPUS: ",".join(gpu_uuids),
        LABEL_NODE: node_id,
        LABEL_ENDPOINT: worker.endpoint_id,
    }


def build_worker_run_spec(
    endpoint: EndpointModel,
    worker: WorkerModel,
    *,
    product: ProductModel,
    box: SecretBox,
    gpus: Sequence[GpuInfo],
    node_id: str,
    registry_auth: RegistryAuth | None,
) -> RunSpec:
    """The request for `worker`, from the endpoint's current template (the caller creates only workers of the
    endpoint's current generation). `gpus` is the worker's allocation (empty for CPU products)."""
    spec = WorkloadSpec.model_validate(endpoint.spec)
    env = decrypt_envs(box, spec.envs)
    env["DOCKYARD_ENDPOINT_ID"] = endpoint.id
    env["DOCKYARD_WORKER_ID"] = worker.id
    ports = [PortBinding(p.container_port, None, p.protocol.value.lower()) for p in spec.ports]
    check_port = health_check(spec).port
    if all(not (p.container_port == check_port and p.protocol == "tcp") for p in ports):
        ports.append(PortBinding(check_port, None, "tcp"))
    if registry_auth is None and spec.credential is not None:
        registry_auth = RegistryAuth(spec.credential.username, box.decrypt(spec.credential.secret))
    return RunSpec(
        name=worker_object_name(worker.id),
        image=spec.image,
        labels=worker_labels(worker, [gpu.uuid for gpu in gpus], node_id),
        entrypoint=list(spec.entrypoint) or None,
        command=[*spec.command, *spec.args] or None,
        env=env,
        ports=ports,
        mounts=[Mount(target=v.mount_path, volume=storage_volume(v.storage_id)) for v in spec.volumes],
        registry_auth=registry_auth,
        gpus=[GpuDevice(gpu.uuid, gpu.minor_number, gpu.simulated) for gpu in gpus],
        cpu=product.cpu,
        memory_mb=product.memory_mb,
        pids_limit=product.pids_limit,
        rootfs_size_gb=spec.rootfs_size_gb,
    )


def worker_ports(obj: RuntimeObject, spec: WorkloadSpec) -> list[dict[str, Any]]:
    """The host ports the runtime chose, as stored in the worker's `published_ports`: the containers' shape plus
    `hostIp`, with the serving port marked `serving` and the health-check port carrying `healthPath`. The
    row then says how to reach and probe the worker by itself, after a restart and after a later change to
    the endpoint's template alike."""
    serving, check = serving_port(spec), health_check(spec)
    ports = []
    for entry, port in zip(published(obj), obj.ports, strict=True):
        tcp = port.protocol.lower() == "tcp"
        ports.append(
            {
                **entry,
                "hostIp": port.host_ip,
                "serving": tcp and port.container_port == serving,
                "healthPath": check.path if tcp and port.container_port == check.port else "",
            }
        )
    return ports


def _base_url(entry: dict[str, Any]) -> str:
    host = str(entry.get("hostIp") or "")
    host = "127.0.0.1" if host in _ANY_HOST else host
    return f"http://[{host}]:{entry['port']}" if ":" in host else f"http://{host}:{entry['port']}"


def worker_address(published_ports: Sequence[dict[str, Any]]) -> str | None:
    """`http://host:port` where the worker serves requests, or None before it has a container. A port
    published on every interface is reached on loopback."""
    for entry in published_ports:
        if entry.get("serving"):
            return _base_url(entry)
    return None


def worker_health(published_ports: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """(the health check's URL, how a reason names it: "GET /health on port 8080"), or None before the worker
    has a container."""
    for entry in published_ports:
        if path := str(entry.get("healthPath") or ""):
            path = path if path.startswith("/") else f"/{path}"
            return f"{_base_url(entry)}{path}", f"GET {path} on port {entry['containerPort']}"
    return None
