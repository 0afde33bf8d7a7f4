"""GMI `/api/v1/idcs`: the data centres a container can be created in."""

from __future__ import annotations

from pydantic import Field

from dockyard.core.status import IdcStatus
from dockyard.schemas.common import CamelModel


class IdcInfo(CamelModel):
    idc_id: str = Field(examples=["local"])
    name: str
    country: str
    country_subdivision: str
    status: IdcStatus = Field(
        description="maintenance when the operator says so or its runtime cannot be reached; full when it has GPUs "
        "and none is free; else available"
    )
