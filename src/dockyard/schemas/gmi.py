"""Value objects of the GMI family shared by templates and containers (envs, ports)."""

from __future__ import annotations

from pydantic import Field

from dockyard.core.status import Protocol
from dockyard.schemas.common import (
    ENV_NAME_PATTERN,
    MAX_ENV_VALUE,
    RESERVED_ENV_HELP,
    CamelModel,
    EnvValue,
    UserEnvName,
)


class EnvIn(CamelModel):
    """A variable as a request sets it."""

    name: UserEnvName = Field(examples=["access_token"], description=RESERVED_ENV_HELP)
    value: EnvValue = Field(default="", description="masked in answers", repr=False)


class Env(CamelModel):
    """A variable as an answer shows it."""

    name: str = Field(min_length=1, max_length=255, pattern=ENV_NAME_PATTERN, examples=["access_token"])
    value: str = Field(default="", max_length=MAX_ENV_VALUE, description="masked in answers")


class Port(CamelModel):
    container_port: int = Field(ge=1, le=65535, description="the port inside the container")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="the host port; omitted: a free one is chosen and reported"
    )
    protocol: Protocol = Protocol.TCP
