"""GMI `/api/v1/idcs`."""

from __future__ import annotations

from fastapi import APIRouter

from dockyard.api.deps import PrincipalDep, ReadSessionDep
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.idcs import IdcInfo
from dockyard.services import idcs as service

router = APIRouter(prefix="/api/v1/idcs", tags=["idcs"], responses=ERROR_RESPONSES)


@router.get("", response_model=list[IdcInfo], summary="List IDCs")
async def list_idcs(_: PrincipalDep, session: ReadSessionDep) -> list[IdcInfo]:
    """The IDCs your containers can run in, each `available`, `full` (it has GPUs and none is free) or
    `maintenance`."""
    return await service.list_idcs(session)
