"""An endpoint's workers, each worker's output, and the endpoint's events (ours, in PPIO's style)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse

from dockyard.api.deps import ContextDep, PrincipalDep, ReadSessionDep
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.endpoint_workers import MAX_EVENTS, EndpointEventList, WorkerList
from dockyard.services import endpoint_workers as service
from dockyard.services.container_logs import parse_since

router = APIRouter(prefix="/gpus/v2/endpoints", tags=["endpoints"], responses=ERROR_RESPONSES)

EndpointPathId = Annotated[str, Path(min_length=1, max_length=255)]
WorkerPathId = Annotated[str, Path(min_length=1, max_length=64)]
TEXT = "text/plain; charset=utf-8"


@router.get("/{endpoint_id}/workers", response_model=WorkerList, summary="List an endpoint's workers")
async def list_workers(
    endpoint_id: EndpointPathId, context: ContextDep, principal: PrincipalDep, session: ReadSessionDep
) -> WorkerList:
    """The endpoint's workers with their status (`pending`, `starting`, `ready`, `draining`, `stopping`, `failed`)
    and the reason for it."""
    return await service.list_workers(session, principal, endpoint_id, context=context)


@router.get(
    "/{endpoint_id}/workers/{worker_id}/logs",
    response_class=StreamingResponse,
    summary="A worker's output",
    description="Each worker's `log` URL. 409 while the worker has not started; 503 while its runtime is down.",
    responses={200: {"content": {"text/plain": {}}, "description": "stdout and stderr interleaved"}},
)
async def worker_logs(
    endpoint_id: EndpointPathId,
    worker_id: WorkerPathId,
    context: ContextDep,
    principal: PrincipalDep,
    session: ReadSessionDep,
    tail: Annotated[int | None, Query(ge=0, le=100_000, description="the last N lines; omitted: all")] = None,
    follow: Annotated[bool, Query(description="keep streaming new output until the worker stops")] = False,
    since: Annotated[str | None, Query(max_length=64, description="RFC 3339 time or unix seconds")] = None,
) -> Response:
    chunks = await service.open_worker_logs(
        session,
        principal,
        endpoint_id,
        worker_id,
        tail=tail,
        follow=follow,
        since=parse_since(since),
        context=context,
    )
    if follow:
        return StreamingResponse(chunks, media_type=TEXT)
    return Response(b"".join([chunk async for chunk in chunks]), media_type=TEXT)


@router.get(
    "/{endpoint_id}/events",
    response_model=EndpointEventList,
    summary="An endpoint's events",
    description="What the reconciler and the autoscaler decided about the endpoint, and why; newest first.",
)
async def list_events(
    endpoint_id: EndpointPathId,
    principal: PrincipalDep,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 50,
) -> EndpointEventList:
    return await service.list_events(session, principal, endpoint_id, limit)
