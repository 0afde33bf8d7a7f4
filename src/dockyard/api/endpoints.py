"""PPIO `/gpus/v2/endpoints`: serverless endpoints' desired state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from dockyard.api.deps import ContextDep, IdempotencyKeyDep, PrincipalDep, ReadSessionDep, WriteSessionDep, answered
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.endpoints import (
    MAX_CURSOR,
    CreateEndpointRequest,
    Endpoint,
    EndpointId,
    EndpointList,
    UpdateEndpointRequest,
)
from dockyard.services import endpoints as service

router = APIRouter(prefix="/gpus/v2/endpoints", tags=["endpoints"], responses=ERROR_RESPONSES)

EndpointPathId = Annotated[str, Path(min_length=1, max_length=255)]


@router.post(
    "",
    response_model=EndpointId,
    summary="Create an endpoint",
    description="Records the endpoint (status `deploying`) and answers its id at once; its workers start soon after.",
)
async def create_endpoint(
    body: CreateEndpointRequest,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    return answered(await service.create(session, principal, body, idempotency_key, context=context))


@router.get("", response_model=EndpointList, summary="List endpoints")
async def list_endpoints(
    context: ContextDep,
    principal: PrincipalDep,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR, description="`next_cursor` of the last page")] = None,
    keyword: Annotated[str | None, Query(max_length=255, description="case-insensitive substring of the name")] = None,
    member_ids: Annotated[str | None, Query(max_length=4096, description="comma-separated member ids")] = None,
) -> EndpointList:
    """Your organization's endpoints, newest first, `limit` at a time; pass `next_cursor` as `cursor` for the next
    page."""
    return await service.list_page(
        session, principal, limit=limit, cursor=cursor, keyword=keyword, member_ids=member_ids, context=context
    )


@router.get("/{endpoint_id}", response_model=Endpoint, summary="Get an endpoint")
async def get_endpoint(
    endpoint_id: EndpointPathId, context: ContextDep, principal: PrincipalDep, session: ReadSessionDep
) -> Endpoint:
    """One endpoint: its status and the reason for it, its worker config and its `url` (the gateway's for a sync
    endpoint, the job API's for an async one)."""
    return await service.get(session, principal, endpoint_id, context=context)


@router.put(
    "/{endpoint_id}",
    response_model=dict[str, str],
    summary="Update an endpoint",
    description="A change to what a worker runs rolls the workers (status `updating`); other changes apply in place.",
)
async def update_endpoint(
    endpoint_id: EndpointPathId,
    body: UpdateEndpointRequest,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
) -> dict[str, str]:
    await service.update(session, principal, endpoint_id, body, context=context)
    return {}


@router.delete("/{endpoint_id}", response_model=dict[str, str], summary="Delete an endpoint")
async def delete_endpoint(
    endpoint_id: EndpointPathId, context: ContextDep, principal: PrincipalDep, session: WriteSessionDep
) -> dict[str, str]:
    """Marks the endpoint `deleting` and answers at once: its workers are drained and removed, then it is gone."""
    await service.delete(session, principal, endpoint_id, context=context)
    return {}
