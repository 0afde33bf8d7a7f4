"""`/gpus/v2/quotas` (ours): the calling organization's quotas and what it holds against each."""

from __future__ import annotations

from fastapi import APIRouter

from dockyard.api.deps import ContextDep, PrincipalDep, ReadSessionDep
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.quotas import Quotas
from dockyard.services import quotas as service

router = APIRouter(prefix="/gpus/v2/quotas", tags=["quotas"], responses=ERROR_RESPONSES)


@router.get(
    "",
    response_model=Quotas,
    summary="Your organization's quotas",
    description="Each limit (set by the operator, or the installation's default) and what your organization holds "
    "against it: containers and endpoint workers count their products' GPUs, vCPUs and memory.",
)
async def get_quotas(context: ContextDep, principal: PrincipalDep, session: ReadSessionDep) -> Quotas:
    return await service.get(session, principal.org_id, settings=context.settings)
