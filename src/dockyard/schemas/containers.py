"""GMI `/api/v1/containers`: create, read (seed 003's exact shape), update, actions."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dockyard.core.status import ContainerStatus, IPStatus
from dockyard.schemas.common import MAX_ARGS, MAX_ENVS, MOUNT_PATH_HELP, Argument, CamelModel, MountPath, Rfc3339
from dockyard.schemas.gmi import Env, EnvIn, Port

MAX_COUNT = 100
MAX_PORTS = 5
MAX_STORAGES = 16
ID_PATTERN = r"^[a-zA-Z0-9._-]+$"
NAME_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9_\-. ]*)?[A-Za-z0-9]$"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

Uuid = Annotated[str, Field(pattern=UUID_PATTERN)]

_COMMAND = (
    "The start command as a shell would split it. Non-empty: replaces the template's command; "
    "empty: the template's command is kept."
)
_ARGS = "Arguments after the command. Non-empty: replaces the template's args; empty: the template's are kept."
_ENVS = (
    "Environment variables, merged with the template's by name; a variable given here wins. Values are "
    "stored encrypted and answered masked; sending a masked value back keeps the stored secret."
)
_PORTS = (
    "Ports to publish (at most 5). Non-empty: replaces the template's ports; empty: the template's are kept. "
    "`port` fixes the host port (only with count 1); omitted, a free one is chosen and reported once running."
)
_STORAGES = "Network storages of the same IDC to mount; their data outlives the container (ours, as in PUT)."


class StorageIn(CamelModel):
    """A storage as a request mounts it."""

    container_path: MountPath = Field(description=MOUNT_PATH_HELP, examples=["/workspace"])
    id: str = Field(
        pattern=UUID_PATTERN, description="a network storage id", examples=["550e8400-e29b-41d4-a716-446655440000"]
    )


class Storage(CamelModel):
    """A storage as an answer shows it."""

    container_path: str = Field(description="absolute mount path", examples=["/workspace"])
    id: str = Field(description="a network storage id", examples=["550e8400-e29b-41d4-a716-446655440000"])


class CreateContainerRequest(CamelModel):
    count: int = Field(ge=1, le=MAX_COUNT, description="how many containers to create (1-100)", examples=[1])
    idc: str = Field(min_length=1, max_length=50, pattern=ID_PATTERN, examples=["local"])
    product: str = Field(min_length=1, max_length=256, pattern=ID_PATTERN, examples=["cpu.small"])
    name: str = Field(
        max_length=255,
        pattern=NAME_PATTERN,
        description="the name; with count > 1 the containers are named `<name>-1` .. `<name>-<count>`",
        examples=["LLM training"],
    )
    template_id: str = Field(pattern=UUID_PATTERN, description="the template whose image and defaults are used")
    command: Argument = Field(default="", description=_COMMAND)
    args: list[Argument] = Field(default_factory=list, max_length=MAX_ARGS, description=_ARGS)
    envs: list[EnvIn] = Field(default_factory=list, max_length=MAX_ENVS, description=_ENVS)
    ports: list[Port] = Field(default_factory=list, max_length=MAX_PORTS, description=_PORTS)
    ssh_key_id_list: list[Uuid] = Field(
        default_factory=list,
        max_length=50,
        description="SSH keys of your organization, installed as authorized keys and in env SSH_KEY",
    )
    storages: list[StorageIn] = Field(default_factory=list, max_length=MAX_STORAGES, description=_STORAGES)


class UpdateContainerRequest(CamelModel):
    """A reconfiguration. An omitted optional field keeps the container's current value for it; a field that
    is sent is applied over the (possibly new) template exactly as at creation."""

    name: str = Field(max_length=255, pattern=NAME_PATTERN, examples=["LLM training"])
    template_id: str = Field(pattern=UUID_PATTERN)
    command: Argument | None = Field(default=None, description=_COMMAND)
    args: list[Argument] | None = Field(default=None, max_length=MAX_ARGS, description=_ARGS)
    envs: list[EnvIn] | None = Field(default=None, max_length=MAX_ENVS, description=_ENVS)
    ports: list[Port] | None = Field(default=None, max_length=MAX_PORTS, description=_PORTS)
    storages: list[StorageIn] | None = Field(default=None, max_length=MAX_STORAGES, description=_STORAGES)


class IpAddress(CamelModel):
    ip_address: str = Field(description="the address the container's ports are published on; empty when none")
    status: IPStatus


class Container(CamelModel):
    """Seed 003: every field, same names and JSON types."""

    reason: str = Field(description="why the container has its status, in words")
    status: ContainerStatus
    storages: list[Storage]
    idc: str
    product: str
    name: str
    template_id: str
    created_at: Rfc3339
    id: str
    inbound_i_p: IpAddress = Field(alias="inboundIP")
    modified_at: Rfc3339
    org_id: str
    outbound_i_p: IpAddress = Field(alias="outboundIP")
    public_i_p: IpAddress = Field(alias="publicIP")
    args: list[str]
    command: str
    envs: list[Env] = Field(description="masked values")
    ports: list[Port] = Field(description="`port` is the published host port once known, else the requested one")
    ssh_key_id_list: list[str]


class ContainerAction(CamelModel):
    """The answer to start, stop and restart: the status the action leads to (`running`, `stopped`), with a reason
    saying it is in progress until the container is there (GET shows the status it is in meanwhile)."""

    id: str
    status: ContainerStatus
    reason: str
