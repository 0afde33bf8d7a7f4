"""The runtime contract every backend implements (the local container engine, Kubernetes).

Reconcilers speak only this contract. It is deliberately small and every method is idempotent, so a
reconciler that crashed half-way can simply run its pass again:

- objects are named by the caller (`RunSpec.name`, deterministic per resource and generation), so a
  repeated `create` finds the object it made before instead of making a second one;
- `remove` and `stop` of something already gone succeed;
- the runtime is the truth about what exists: `list_managed` returns every object that carries this
  installation's labels, and nothing else, so unlabelled objects are never touched.

Errors a user can act on (a missing image, a port already taken) are raised as `RuntimeFailure` with a
sentence in `reason`; `RuntimeUnavailable` means the runtime itself cannot be reached right now.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

LABEL_MANAGED = "dockyard.managed"
LABEL_INSTALLATION = "dockyard.installation"
LABEL_KIND = "dockyard.kind"
LABEL_ID = "dockyard.id"
LABEL_ORG = "dockyard.org"
LABEL_GENERATION = "dockyard.generation"
LABEL_GPUS = "dockyard.gpus"
LABEL_NODE = "dockyard.node"


class RuntimeFailure(Exception):
    """The runtime refused the request for a reason the user can act on (stated in `reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PortTaken(RuntimeFailure):
    """A host port the object asked for is held by something else on the host."""


class RuntimeUnavailable(Exception):
    """The runtime could not be reached; nothing is known about its objects right now."""


class ObjectState(StrEnum):
    CREATED = "created"  # exists, never started
    RUNNING = "running"
    EXITED = "exited"  # stopped or ended by itself; see exit_code and oom_killed
    PAUSED = "paused"
    OTHER = "other"


@dataclass(frozen=True)
class PortBinding:
    container_port: int
    host_port: int | None = None  # requested; None lets the runtime choose
    protocol: str = "tcp"
    host_ip: str = ""  # the host address it is published on; "" = every interface


@dataclass(frozen=True)
class Mount:
    """A named volume (`volume`) or a host path (`host_path`) mounted at `target`."""

    target: str
    volume: str = ""
    host_path: str = ""
    read_only: bool = False
    size_gb: int = 0  # a volume made for this mount is capped at this size where the engine can hold one


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for the image's registry, in plaintext; the password is left out of repr() (a log line)."""

    username: str
    password: str = field(repr=False)


class PullPolicy(StrEnum):
    """When `create` pulls the image: Kubernetes' `imagePullPolicy`, which a Kubernetes runtime hands on as is.
    The control plane chooses it (services/private_images.py), since only it knows who pulled what before."""

    IF_NOT_PRESENT = "IfNotPresent"  # pull only when no local image has exactly this name
    ALWAYS = "Always"  # pull with `registry_auth` (anonymously without) even when the image is present


@dataclass(frozen=True)
class GpuDevice:
    """A GPU to attach, chosen by UUID; `minor` locates /dev/nvidiaN where device nodes are used."""

    uuid: str
    minor: int = -1
    simulated: bool = False


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to create one object. Plaintext secrets: build it just before `create`.

    `network` names the network the object joins: objects naming the same one reach each other, and no object
    of another network reaches them. "" joins the runtime's default network. A runtime set to a network mode
    of its own (slirp4netns) ignores it."""

    name: str
    image: str
    labels: dict[str, str]
    network: str = ""
    entrypoint: list[str] | None = None  # None keeps the image's
    command: list[str] | None = None  # None keeps the image's
    env: dict[str, str] = field(default_factory=dict, repr=False)  # plaintext secret values: not in repr()
    ports: list[PortBinding] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    registry_auth: RegistryAuth | None = None
    pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    gpus: list[GpuDevice] = field(default_factory=list)
    cpu: float = 0.0  # cores; 0 = unlimited
    memory_mb: int = 0  # 0 = unlimited
    pids_limit: int = 0  # 0 = unlimited
    rootfs_size_gb: int | None = None


@dataclass(frozen=True)
class PublishedPort:
    container_port: int
    host_port: int
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True)
class RuntimeObject:
    """What the runtime reports about one object it runs."""

    id: str
    name: str
    labels: dict[str, str]
    state: ObjectState
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    ports: list[PublishedPort] = field(default_factory=list)
    ip_address: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # The networks it is on, by name, sorted: the one `RunSpec.network` named, or the runtime's default for "".
    # Empty where the runtime puts objects on no network of its choosing (a network mode of its own, slirp4netns).
    networks: tuple[str, ...] = ()

    @property
    def resource_id(self) -> str:
        return self.labels.get(LABEL_ID, "")

    @property
    def generation(self) -> int:
        try:
            return int(self.labels.get(LABEL_GENERATION, "0"))
        except ValueError:
            return 0

    @property
    def gpu_uuids(self) -> list[str]:
        value = self.labels.get(LABEL_GPUS, "")
        return [uuid for uuid in value.split(",") if uuid]


@dataclass(frozen=True)
class HostCapacity:
    """The CPUs and memory of the host a runtime's objects run on, as the backend reports them."""

    cpus: float
    memory_mb: int


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str


class Runtime(Protocol):
    """The contract. Timings are for a local engine; every call may raise `RuntimeUnavailable`."""

    installation_id: str

    async def probe(self) -> str:
        """Describe the backend ("podman 4.3.1"); raises `RuntimeUnavailable` when unreachable."""
        ...

    async def create(self, spec: RunSpec) -> RuntimeObject:
        """Create (not start) an object named `spec.name`, labelled as managed by this installation.

        Idempotent by name: if it exists already, return it. Ensures the image is present, any named volumes
        (`ensure_volume`, with each mount's size) and `spec.network` exist; the network is labelled as managed
        by this installation and with the object's `dockyard.org`. The image: with `PullPolicy.ALWAYS` it is
        pulled with `spec.registry_auth` (anonymously without) even when present, and a pull the registry
        refuses raises `RuntimeFailure`, so the registry decides whether these credentials may run it; with
        `IF_NOT_PRESENT` a local image counts only when `spec.image` is one of its names (never one an engine
        finds by a short name or an id prefix), else it is pulled with `spec.registry_auth`. The object runs the
        image so checked, whatever is tagged later. Raises `RuntimeFailure` for a missing image, a refused GPU,
        a bad mount. Takes ~0.1 s with the image present and `IF_NOT_PRESENT`; a pull can take minutes.
        """
        ...

    async def start(self, object_id: str) -> RuntimeObject:
        """Start it; starting a running object is a no-op. `RuntimeFailure` when it cannot start
        (a host port already taken, an executable not found)."""
        ...

    async def stop(self, object_id: str, timeout: int = 10) -> None:
        """SIGTERM, then SIGKILL after `timeout` s. Stopping a stopped or missing object succeeds."""
        ...

    async def restart(self, object_id: str, timeout: int = 10) -> RuntimeObject:
        """Stop then start."""
        ...

    async def remove(self, object_id: str) -> None:
        """Remove it, force-stopping if running. Removing a missing object succeeds."""
        ...

    async def inspect(self, object_id: str) -> RuntimeObject | None:
        """The object by id or name, or None when it does not exist."""
        ...

    async def list_managed(self) -> list[RuntimeObject]:
        """Every object labelled with this installation, running or not."""
        ...

    def logs(
        self,
        object_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> AsyncIterator[bytes]:
        """Its output (stdout and stderr interleaved), the last `tail` lines, since `since` (at or before the
        epoch: from the beginning); with `follow`, until it stops or the consumer closes the iterator; with
        `timestamps`, each line led by the time it was written (RFC 3339, UTC, up to nanoseconds) and a space. Raises
        `RuntimeFailure` when the object does not exist or the runtime refuses the read."""
        ...

    async def exec(self, object_id: str, command: list[str]) -> ExecResult:
        """Run a command inside the running object and wait for it."""
        ...

    async def capacity(self) -> HostCapacity:
        """The host's CPUs and memory (an engine's `info`: NCPU, MemTotal), probed once and cached."""
        ...

    async def ensure_volume(self, name: str, labels: dict[str, str], size_gb: int = 0) -> None:
        """Create the named volume if missing, capped at `size_gb` (when not 0) where the backend's storage can
        enforce a size; where it cannot, the volume is made without a cap (the declared size still counts
        against the organization's quota), and the backend logs why once."""
        ...

    async def remove_volume(self, name: str) -> None:
        """Remove the named volume; missing is fine. `RuntimeFailure` while an object uses it."""
        ...

    async def list_networks(self) -> list[str]:
        """The names of the networks `create` made for this installation (those labelled with it)."""
        ...

    async def remove_network(self, name: str) -> None:
        """Remove the named network; missing is fine. `RuntimeFailure` while an object, created or running, is
        on it. Never races a `create` joining it: one waits for the other."""
        ...

    async def move_to_network(self, object_id: str, network: str, org: str) -> None:
        """Put the object on `network` and take it off every other network, in whatever state it is, without
        stopping it: a running object keeps running and its published ports. The network is made if missing,
        labelled as `create` labels one, with `org` as its `dockyard.org`; never races a `remove_network`. A
        runtime with a network mode of its own does nothing. `RuntimeFailure` when the object does not exist or
        the runtime refuses."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
