"""`/gpus/v2/regions` (ours)."""

from __future__ import annotations

from fastapi import APIRouter

from dockyard.api.deps import PrincipalDep, ReadSessionDep
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.regions import RegionList
from dockyard.services import regions as service

router = APIRouter(prefix="/gpus/v2/regions", tags=["regions"], responses=ERROR_RESPONSES)


@router.get("", response_model=RegionList, summary="List regions")
async def list_regions(_: PrincipalDep, session: ReadSessionDep) -> RegionList:
    """The regions endpoints and products are offered in (Dockyard's IDCs), in PPIO's shape, each with its status."""
    return RegionList(data=await service.list_regions(session))
