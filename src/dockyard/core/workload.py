"""The one workload spec, embedded in templates, containers and endpoint workers (docs/architecture.md).

A field added here reaches all three. Secrets inside it (env values) are stored encrypted: the services
encrypt on the way in, the reconcilers decrypt when they build the runtime's request, and the wire models
only ever see a masked value.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dockyard.core.status import Protocol


class EnvVar(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    value: str = Field(repr=False)  # encrypted at rest (see dockyard.secrets), and left out of repr() all the same


class PortSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    container_port: int
    host_port: int | None = None  # None: the runtime picks a free host port, read back after start
    protocol: Protocol = Protocol.TCP


class VolumeSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    storage_id: str  # a network storage, materialised as a named volume
    mount_path: str
    size_gb: int = 0  # its declared size when the workload was made: the volume's cap where the engine can hold one


class HealthCheck(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str = "/health"
    port: int = 80


class Credential(BaseModel):
    model_config = ConfigDict(frozen=True)

    username: str
    secret: str = Field(repr=False)  # encrypted at rest, and left out of repr() all the same


class WorkloadSpec(BaseModel):
    """What to run. `command` replaces the image's CMD, `entrypoint` its ENTRYPOINT; empty keeps the image's."""

    model_config = ConfigDict(frozen=True)

    image: str
    credential: Credential | None = None
    registry_auth_id: str | None = None
    entrypoint: list[str] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    envs: list[EnvVar] = Field(default_factory=list)
    ports: list[PortSpec] = Field(default_factory=list)
    volumes: list[VolumeSpec] = Field(default_factory=list)
    gpu_count: int = 0
    rootfs_size_gb: int | None = None
    min_cuda_version: str | None = None
    health_check: HealthCheck | None = None
