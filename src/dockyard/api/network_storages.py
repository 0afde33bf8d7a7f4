"""`/gpus/v2/network-storages` (ours), shared by containers' `storages` and endpoints' `volumes`."""

from __future__ import annotations

from fastapi import APIRouter

from dockyard.schemas.common import ERROR_RESPONSES

router = APIRouter(prefix="/gpus/v2/network-storages", tags=["network-storages"], responses=ERROR_RESPONSES)
