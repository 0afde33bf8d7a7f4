"""PPIO `/gpus/v2/endpoints`: create, list (cursor), read (seed 000's exact shape), update, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dockyard.core.status import EndpointType, PolicyType
from dockyard.schemas.common import (
    MAX_ENVS,
    MOUNT_PATH_HELP,
    RESERVED_ENV_HELP,
    Argument,
    EnvValue,
    ImageReference,
    MountPath,
    SnakeModel,
    Text,
    UnixSeconds,
    UrlPath,
    UserEnvName,
)
from dockyard.schemas.waits import Blocking

MAX_REPLICAS = 1000
MAX_PORTS = 16
MAX_VOLUMES = 16
MAX_CURSOR = 1024
CUDA_PATTERN = r"^(\d{1,3}\.\d{1,3})?$"

_COMMAND = "The start command as a shell would split it; replaces the image's CMD. Empty keeps the image's."
_ENTRYPOINT = "Replaces the image's ENTRYPOINT, split like `command`. Empty keeps the image's."
_ENVS = "Values are stored encrypted and answered masked; sending a masked value back keeps the stored secret."
_HEALTH = (
    "GET `path` on `port` must answer 200 for a sync worker to be ready; default: the first port, `/health`. "
    "Async workers are never probed."
)


class WorkerConfig(SnakeModel):
    """How many workers, and what each may take. `max_replicas` is required wherever a worker_config is sent."""

    min_replicas: int = Field(default=0, ge=0, le=MAX_REPLICAS, description="0 scales to zero when idle")
    max_replicas: int = Field(ge=0, le=MAX_REPLICAS, examples=[2])
    idle_timeout: int = Field(default=60, ge=1, le=86400, description="seconds idle before a worker is removed")
    max_concurrent_per_worker: int = Field(default=1, ge=1, le=10000, description="in-flight requests per worker")
    gpu_num: int | None = Field(default=None, ge=0, le=8, description="GPUs per worker; default: the product's")
    rootfs_size_gb: int = Field(default=20, ge=1, le=10000)
    min_cuda_version: str = Field(
        default="", max_length=16, pattern=CUDA_PATTERN, description="e.g. 12.4; empty: any driver", examples=["12.4"]
    )
    request_timeout: int = Field(default=60, ge=1, le=3600, description="seconds from enqueue to answer")


class WorkerConfigOut(SnakeModel):
    min_replicas: int
    max_replicas: int
    idle_timeout: int
    max_concurrent_per_worker: int
    gpu_num: int
    rootfs_size_gb: int
    min_cuda_version: str
    request_timeout: int


class Policy(SnakeModel):
    type: PolicyType
    value: int = Field(gt=0, le=100000, description="queue: seconds waited; concurrency: requests per worker")


class VolumeIn(SnakeModel):
    id: str = Field(min_length=1, max_length=64, description="a network storage of the endpoint's region")
    type: Literal["network"] = "network"
    size: int = Field(default=0, ge=0, le=65536, description="informative; the storage's own size applies")
    mount_point: MountPath = Field(description=MOUNT_PATH_HELP, examples=["/data"])


class Volume(SnakeModel):
    id: str
    type: Literal["network"]
    mount_point: str


class EndpointEnvIn(SnakeModel):
    """A variable as a request sets it."""

    key: UserEnvName = Field(description=RESERVED_ENV_HELP)
    value: EnvValue = Field(repr=False)


class EndpointEnv(SnakeModel):
    """A variable as an answer shows it."""

    key: str
    value: str


class HealthCheckIn(SnakeModel):
    path: UrlPath = Field(default="/health", description="requested as http://<worker>:<port><path>")
    port: int | None = Field(default=None, ge=1, le=65535, description="omitted: the endpoint's first port")


class HealthCheckOut(SnakeModel):
    path: str
    port: int


PortNumber = Annotated[int, Field(ge=1, le=65535)]


class CreateEndpointRequest(SnakeModel):
    type: EndpointType
    name: Text = Field(min_length=1, max_length=255, examples=["example-endpoint"])
    app_name: Text = Field(default="", max_length=255)
    product_id: str = Field(min_length=1, max_length=255, examples=["serverless.cpu"])
    region_id: str = Field(default="local", min_length=1, max_length=50, description="the IDC running the workers")
    image: ImageReference = Field(examples=["localhost/worker:latest"])
    registry_auth_id: str = Field(default="", max_length=64, description="one of yours; empty: a public image")
    entrypoint: Argument = Field(default="", description=_ENTRYPOINT)
    command: Argument = Field(default="", description=_COMMAND)
    worker_config: WorkerConfig
    policy: Policy | None = Field(default=None, description="default: concurrency, one request per worker")
    volumes: list[VolumeIn] = Field(default_factory=list, max_length=MAX_VOLUMES)
    envs: list[EndpointEnvIn] = Field(default_factory=list, max_length=MAX_ENVS, description=_ENVS)
    ports: list[PortNumber] = Field(default_factory=list, max_length=MAX_PORTS)
    health_check: HealthCheckIn | None = Field(default=None, description=_HEALTH)


class UpdateEndpointRequest(SnakeModel):
    """Any create field but `type` and `app_name`; an omitted field keeps the endpoint's current value. A sent
    `worker_config` must hold `max_replicas` and is merged onto the current one: the fields it leaves out keep
    their values."""

    name: Text | None = Field(default=None, min_length=1, max_length=255)
    product_id: str | None = Field(default=None, min_length=1, max_length=255)
    region_id: str | None = Field(default=None, min_length=1, max_length=50)
    image: ImageReference | None = None
    registry_auth_id: str | None = Field(default=None, max_length=64)
    entrypoint: Argument | None = Field(default=None, description=_ENTRYPOINT)
    command: Argument | None = Field(default=None, description=_COMMAND)
    worker_config: WorkerConfig | None = None
    policy: Policy | None = None
    volumes: list[VolumeIn] | None = Field(default=None, max_length=MAX_VOLUMES)
    envs: list[EndpointEnvIn] | None = Field(default=None, max_length=MAX_ENVS, description=_ENVS)
    ports: list[PortNumber] | None = Field(default=None, max_length=MAX_PORTS)
    health_check: HealthCheckIn | None = Field(default=None, description=_HEALTH)


class EndpointId(SnakeModel):
    id: str


class StatusInfo(SnakeModel):
    status: str
    error: str = Field(description="why it failed; empty unless failed")
    message: str = Field(description="why it has its status, in words")


class Worker(SnakeModel):
    id: str
    status: StatusInfo
    log: str = Field(description="the URL of the worker's output")
    health: bool
    drain: bool


class Endpoint(SnakeModel):
    """Seed 000: every field, same names and JSON types."""

    id: str
    type: EndpointType
    name: str
    app_name: str
    status: StatusInfo
    url: str
    product_id: str
    worker_config: WorkerConfigOut
    policy: Policy
    image: str
    registry_auth_id: str
    entrypoint: str
    command: str
    volumes: list[Volume]
    envs: list[EndpointEnv] = Field(description="masked values")
    ports: list[int]
    workers: list[Worker]
    health_check: HealthCheckOut
    region_id: str
    member_id: str
    owner_id: str = Field(description="the owning organization")
    created_at: UnixSeconds
    blocking: Blocking | None = Field(
        default=None,
        description="GET of one endpoint only: why its work waits (a job queued, a request held); null when nothing "
        "waits or in a listing (docs/troubleshooting.md)",
    )


class EndpointList(SnakeModel):
    data: list[Endpoint]
    next_cursor: str = Field(description="pass as `cursor` for the next page; empty on the last")
    has_more: bool
