"""Quotas (ours): `GET /gpus/v2/quotas` for an organization's own, `/admin/v1/organizations/{id}/quotas` for the
operator; snake_case like PPIO. The list's shape is Google Compute's (`quotas[{metric, limit, usage}]`), named
as the rest of this API names things."""

from __future__ import annotations

from pydantic import Field

from dockyard.schemas.common import SnakeModel


class Quota(SnakeModel):
    name: str = Field(
        description="containers, endpoints, workers, gpus, vcpus, memory_mb, storage_gb or queued_jobs",
        examples=["vcpus"],
    )
    limit: int = Field(description="the most the organization may hold at once", examples=[128])
    used: float = Field(description="what it holds now", examples=[6.0])
    default: bool = Field(description="true when the limit is the installation's default, not one set for it")


class Quotas(SnakeModel):
    org_id: str
    quotas: list[Quota]
