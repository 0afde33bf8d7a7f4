"""`/gpus/v2/network-storages` (ours, PPIO style): snake_case, unix-second times."""

from __future__ import annotations

from pydantic import Field

from dockyard.core.status import NetworkStorageStatus
from dockyard.schemas.common import SnakeModel, Text, UnixSeconds

MAX_SIZE_GB = 65536


class CreateNetworkStorageRequest(SnakeModel):
    name: Text = Field(min_length=1, max_length=255, examples=["datasets"])
    region_id: str = Field(min_length=1, max_length=50, description="the IDC (region) holding it", examples=["local"])
    size_gb: int = Field(ge=1, le=MAX_SIZE_GB, examples=[100])


class UpdateNetworkStorageRequest(SnakeModel):
    size_gb: int = Field(ge=1, le=MAX_SIZE_GB, description="the new size; storages only grow")


class NetworkStorageId(SnakeModel):
    id: str


class NetworkStorage(SnakeModel):
    id: str
    name: str
    region_id: str
    size_gb: int
    status: NetworkStorageStatus
    mounted_by: list[str] = Field(description="ids of the containers, then the endpoints, whose workers mount it")
    created_at: UnixSeconds


class NetworkStorageList(SnakeModel):
    data: list[NetworkStorage]
