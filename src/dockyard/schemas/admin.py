"""The operator's API (`/admin/v1`, ours): snake_case like PPIO, RFC 3339 times."""

from __future__ import annotations

from pydantic import Field

from dockyard.schemas.common import Rfc3339, SnakeModel


class CreateOrganizationRequest(SnakeModel):
    name: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class Organization(SnakeModel):
    id: str
    name: str
    created_at: Rfc3339


class CreateKeyRequest(SnakeModel):
    member: str = Field(default="default", min_length=1, max_length=255, description="the member's name")
    name: str = Field(default="", max_length=255, description="a label for the key")
    is_admin: bool = Field(default=False, description="whether the key may call /admin/v1")


class ApiKey(SnakeModel):
    id: str
    org_id: str
    member_id: str
    name: str
    prefix: str = Field(description="the first characters of the key, to recognise it")
    is_admin: bool
    created_at: Rfc3339
    revoked_at: Rfc3339 | None = None


class CreatedApiKey(ApiKey):
    key: str = Field(description="the key itself; shown this once and never again")
