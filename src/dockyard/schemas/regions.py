"""`/gpus/v2/regions` (ours, PPIO style): the IDCs under PPIO's name for them."""

from __future__ import annotations

from pydantic import Field

from dockyard.core.status import IdcStatus
from dockyard.schemas.common import SnakeModel


class Region(SnakeModel):
    id: str = Field(examples=["local"])
    name: str
    country: str
    status: IdcStatus = Field(
        description="maintenance when the operator says so or its runtime cannot be reached; full when it has GPUs "
        "and none is free; else available"
    )


class RegionList(SnakeModel):
    data: list[Region]
