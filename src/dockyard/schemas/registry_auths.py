"""`/gpus/v2/registry-auths` (ours, PPIO style): snake_case, unix-second times; the password goes in only."""

from __future__ import annotations

from pydantic import Field

from dockyard.schemas.common import SnakeModel, Text, UnixSeconds


class CreateRegistryAuthRequest(SnakeModel):
    name: Text = Field(min_length=1, max_length=255, examples=["docker-hub"])
    username: str = Field(min_length=1, max_length=255, examples=["robot"])
    password: str = Field(min_length=1, max_length=4096, description="stored encrypted; never answered", repr=False)


class RegistryAuthId(SnakeModel):
    id: str


class RegistryAuth(SnakeModel):
    id: str
    name: str
    username: str
    created_at: UnixSeconds


class RegistryAuthList(SnakeModel):
    data: list[RegistryAuth]
