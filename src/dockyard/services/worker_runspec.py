"""Builds the runtime's `RunSpec` for one endpoint worker, with its secrets in plaintext, and reads back
where the worker listens.

A worker runs its endpoint's worker template (one `WorkloadSpec`, docs/architecture.md) as it was at the
generation the worker was made for. What goes in:
- the spec's image, entrypoint, command, decrypted envs plus `DOCKYARD_ENDPOINT_ID` and `DOCKYARD_WORKER_ID`;
- the organization's network (`runspec.org_network`), shared with its containers and other workers;
- every spec port and the health-check port, published on loopback only, on host ports the runtime picks
  (read back after start: they are how the gateway, on the same host, reaches the worker); no container and no
  other host reaches them, so a request gets to a sync worker only through the gateway's key check;
- network storages as the named volumes `dockyard-ns-<storage id>` (shared with containers);
- the product's limits (CPU, memory, pids) and the GPUs allocated to the worker, by UUID;
- the registry credentials (`registry_auths.resolve`), which the caller resolves just before `create`.

An async endpoint's worker runs an unmodified `ppio-gpus`, `runpod` or `novita-gpus` worker SDK (Novita's is PPIO's
under `NOVITA_` names), which serves no HTTP: it calls Dockyard's worker webhooks instead (api/worker_webhooks.py).
So it publishes only the spec's own ports, is never health-probed, and gets every SDK's environment (`webhook_env`):
the four webhook URL templates, its id as the pod id, its own webhook key, the endpoint id and the ping interval. The
templates are written for the SDKs' substitutions: `$ID` in the job-take URL becomes the worker id; `$PPIO_POD_ID`,
`$RUNPOD_POD_ID`, `$NOVITA_POD_ID` in the others become the worker id at start and `$ID` in job-done and stream the
job id per job. The SDKs append `&job_in_progress=`, `&batch_size=` and `&isStream=` and derive `/job-take-batch/`
and runpod's `/job-stop/` by replacing `/job-take/`, so every template carries a query string (`?sdk=...`, naming the
SDK in the server's logs) and the job-take path holds `/job-take/`. runpod's start-up fitness checks are turned off
by default where they cannot pass on Dockyard (the network check dials 8.8.8.8, which an isolated region cannot
reach; the memory check wants 4 GB free, more than small CPU products have; the GPU check on a CPU product); the
product's limits are enforced by the runtime instead. An endpoint's own envs may set those switches back (they are
among the SDK switches `dockyard.core.inputs.USER_SDK_SWITCHES` lets users set), but never the webhook variables:
every other `PPIO_*`, `RUNPOD_*`, `NOVITA_*` and `DOCKYARD_*` name is refused by the API and dropped from envs stored
before that.

Build it just before `create` and drop it after, like the container's (services/runspec.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dockyard.config import Settings
from dockyard.core.status import EndpointType
from dockyard.core.workload import HealthCheck, WorkloadSpec
from dockyard.db.models import EndpointModel, ProductModel, WorkerModel
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
from dockyard.services.runspec import org_network, published, storage_volume
from dockyard.services.workloads import runtime_envs

KIND_WORKER = "worker"
LABEL_ENDPOINT = "dockyard.endpoint"
# Hosts that mean "every interface" when a runtime reports where it published a port: reach them on loopback.
_ANY_HOST = {"", "0.0.0.0", "::"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Where a worker's ports are published: the gateway and the prober run on the engine's host.
WORKER_HOST_IP = "127.0.0.1"
# The worker webhooks' path prefix on the server (api/worker_webhooks.py serves it).
WEBHOOK_PREFIX = "/gpus/v2/workers"
# What a container on a bridge network calls the host: the bridge's gateway (Podman writes it into /etc/hosts).
CONTAINER_HOST = "host.containers.internal"
_SDKS = ("PPIO", "RUNPOD", "NOVITA")  # the prefixes of the worker SDKs' variables


@dataclass(frozen=True)
class WebhookAccess:
    """How an async worker reaches its webhooks: the server's base URL as a container sees it, the worker's own
    key (its hash is on the worker row; the key itself only here) and the ping interval in milliseconds."""

    base_url: str
    key: str = field(repr=False)
    ping_interval_ms: int


def webhook_base_url(settings: Settings) -> str:
    """The server's URL as seen from inside a worker container: the public URL, except that a loopback host
    (which inside a container is the container itself) becomes the host's name on the bridge network. The
    server must then listen on an address the bridge reaches (`host: 0.0.0.0`), not on loopback only."""
    if settings.worker_webhook_url:
        return settings.worker_webhook_url.rstrip("/")
    parts = urlsplit(settings.resolved_public_url)
    if parts.hostname not in _LOOPBACK:
        return settings.resolved_public_url
    netloc = CONTAINER_HOST if parts.port is None else f"{CONTAINER_HOST}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def ping_interval_ms(settings: Settings) -> int:
    """A third of the job lease, so two pings may be lost before a busy worker's jobs go back to the queue."""
    return max(1000, int(settings.job_lease_seconds * 1000 / 3))


def webhook_env(endpoint: EndpointModel, worker: WorkerModel, access: WebhookAccess) -> dict[str, str]:
    """Every worker SDK's environment for `worker` (see the module docstring for the URL templates)."""
    base = f"{access.base_url}{WEBHOOK_PREFIX}/{endpoint.id}"
    env: dict[str, str] = {}
    for sdk in _SDKS:
        pod = f"${sdk}_POD_ID"
        query = f"?sdk={sdk.lower()}"
        env.update(
            {
                f"{sdk}_WEBHOOK_GET_JOB": f"{base}/job-take/$ID{query}",
                f"{sdk}_WEBHOOK_POST_OUTPUT": f"{base}/job-done/{pod}/$ID{query}",
                f"{sdk}_WEBHOOK_POST_STREAM": f"{base}/job-stream/{pod}/$ID{query}",
                f"{sdk}_WEBHOOK_PING": f"{base}/ping/{pod}{query}",
                f"{sdk}_POD_ID": worker.id,
                f"{sdk}_POD_HOSTNAME": worker_object_name(worker.id),
                f"{sdk}_AI_API_KEY": access.key,
                f"{sdk}_ENDPOINT_ID": endpoint.id,
                f"{sdk}_PING_INTERVAL": str(access.ping_interval_ms),
            }
        )
    return env


def _fitness_defaults(gpus: int) -> dict[str, str]:
    defaults = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    if gpus == 0:
        defaults["RUNPOD_SKIP_GPU_CHECK"] = "true"
    return defaults


def worker_object_name(worker_id: str) -> str:
    """The runtime object's name: deterministic per worker, so a repeated `create` finds the one made before."""
    return f"dy-w-{worker_id[:12]}"


def health_check(spec: WorkloadSpec) -> HealthCheck:
    """The health check a sync worker is probed with: the spec's, else `/health` on the first port (port 80 only
    for a spec with no port at all, which is then also where requests go). A spec stored without one (an endpoint
    made before the API filled in the default) so gets the same default as a new one."""
    if spec.health_check is not None:
        return spec.health_check
    return HealthCheck(port=spec.ports[0].container_port) if spec.ports else HealthCheck()


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
    webhook: WebhookAccess | None = None,
) -> RunSpec:
    """The request for `worker`, from the endpoint's current template (the caller creates only workers of the
    endpoint's current generation). `gpus` is the worker's allocation (empty for CPU products). An async
    endpoint's worker needs `webhook` (ValueError without it)."""
    spec = WorkloadSpec.model_validate(endpoint.spec)
    is_async = endpoint.type == EndpointType.ASYNC
    env = _fitness_defaults(len(gpus)) if is_async else {}
    env.update(runtime_envs(spec.envs, box=box))
    env["DOCKYARD_ENDPOINT_ID"] = endpoint.id
    env["DOCKYARD_WORKER_ID"] = worker.id
    if is_async:
        if webhook is None:
            raise ValueError(f"worker {worker.id} of async endpoint {endpoint.id} needs its webhook access")
        env.update(webhook_env(endpoint, worker, webhook))
    ports = [PortBinding(p.container_port, None, p.protocol.value.lower(), WORKER_HOST_IP) for p in spec.ports]
    check_port = health_check(spec).port
    if not is_async and all(not (p.container_port == check_port and p.protocol == "tcp") for p in ports):
        ports.append(PortBinding(check_port, None, "tcp", WORKER_HOST_IP))
    if registry_auth is None and spec.credential is not None:
        registry_auth = RegistryAuth(spec.credential.username, box.decrypt(spec.credential.secret))
    return RunSpec(
        name=worker_object_name(worker.id),
        image=spec.image,
        labels=worker_labels(worker, [gpu.uuid for gpu in gpus], node_id),
        network=org_network(worker.org_id),
        entrypoint=list(spec.entrypoint) or None,
        command=[*spec.command, *spec.args] or None,
        env=env,
        ports=ports,
        mounts=[
            Mount(target=v.mount_path, volume=storage_volume(v.storage_id), size_gb=v.size_gb) for v in spec.volumes
        ],
        registry_auth=registry_auth,
        gpus=[GpuDevice(gpu.uuid, gpu.minor_number, gpu.simulated) for gpu in gpus],
        cpu=product.cpu,
        memory_mb=product.memory_mb,
        pids_limit=product.pids_limit,
        rootfs_size_gb=spec.rootfs_size_gb,
    )


def worker_ports(obj: RuntimeObject, spec: WorkloadSpec, *, served: bool = True) -> list[dict[str, Any]]:
    """The host ports the runtime chose, as stored in the worker's `published_ports`: the containers' shape plus
    `hostIp`, with the serving port marked `serving` and the health-check port carrying `healthPath`. The
    row then says how to reach and probe the worker by itself, after a restart and after a later change to
    the endpoint's template alike. An async worker (`served=False`) is neither proxied to nor probed, so none
    of its ports is marked."""
    serving, check = serving_port(spec), health_check(spec)
    ports = []
    for entry, port in zip(published(obj), obj.ports, strict=True):
        tcp = served and port.protocol.lower() == "tcp"
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
