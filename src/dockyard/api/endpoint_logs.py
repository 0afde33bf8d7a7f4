"""An endpoint's output across its workers, removed ones included for a while (ours: PPIO documents none)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse

from dockyard.api.deps import ContextDep, PrincipalDep, ReadSessionDep
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.services import endpoint_logs as service
from dockyard.services.container_logs import parse_since

router = APIRouter(prefix="/gpus/v2/endpoints", tags=["endpoints"], responses=ERROR_RESPONSES)

EndpointPathId = Annotated[str, Path(min_length=1, max_length=255)]
TIME = "RFC 3339 time or unix seconds"
TEXT = "text/plain; charset=utf-8"


@router.get(
    "/{endpoint_id}/logs",
    response_class=StreamingResponse,
    summary="An endpoint's output, across its workers",
    description=(
        "Every worker's output merged by time, oldest first, each line as `<RFC 3339 time> <worker id> <line>`: "
        "the workers that have a container, read from it, and the workers removed within the retention period "
        "(`DOCKYARD_WORKER_LOG_RETENTION_SECONDS`, a day by default), as kept at their removal. With `follow`, "
        "the workers running at the time of the request are followed until they stop."
    ),
    responses={200: {"content": {"text/plain": {}}, "description": "tagged lines, oldest first"}},
)
async def endpoint_logs(
    endpoint_id: EndpointPathId,
    context: ContextDep,
    principal: PrincipalDep,
    session: ReadSessionDep,
    since: Annotated[str | None, Query(max_length=64, description=f"lines written at or after; {TIME}")] = None,
    until: Annotated[str | None, Query(max_length=64, description=f"lines written before; {TIME}")] = None,
    worker: Annotated[str | None, Query(min_length=1, max_length=64, description="only this worker's")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_LINES, description="the last N lines of the window")] = 1000,
    follow: Annotated[bool, Query(description="keep streaming the running workers' new lines")] = False,
) -> Response:
    chunks = await service.open_endpoint_logs(
        session,
        principal,
        endpoint_id,
        since=parse_since(since),
        until=parse_since(until, field="until"),
        worker_id=worker,
        limit=limit,
        follow=follow,
        context=context,
    )
    if follow:
        return StreamingResponse(chunks, media_type=TEXT)
    return Response(b"".join([chunk async for chunk in chunks]), media_type=TEXT)
