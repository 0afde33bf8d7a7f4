"""GMI `/api/v1/containers`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse

from dockyard.api.deps import ContextDep, IdempotencyKeyDep, PrincipalDep, ReadSessionDep, WriteSessionDep, answered
from dockyard.core.status import ContainerStatus
from dockyard.schemas.common import ERROR_RESPONSES, IdResponse, Page
from dockyard.schemas.containers import Container, ContainerAction, CreateContainerRequest, UpdateContainerRequest
from dockyard.services import container_logs
from dockyard.services import containers as service

router = APIRouter(prefix="/api/v1/containers", tags=["containers"], responses=ERROR_RESPONSES)

ContainerId = Annotated[str, Path(min_length=1, max_length=64)]
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", max_length=64, description="the ETag of a GET; a newer version answers 409"),
]


@router.post(
    "",
    response_model=list[IdResponse],
    summary="Create containers",
    description="Records `count` containers (status `creating`) and answers their ids at once; they start soon after.",
)
async def create_containers(
    body: CreateContainerRequest,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    return answered(await service.create(session, principal, body, idempotency_key, context=context))


@router.get("", response_model=Page[Container], summary="List containers")
async def list_containers(
    context: ContextDep,
    principal: PrincipalDep,
    session: ReadSessionDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=1000)] = 50,
    status: Annotated[ContainerStatus | None, Query(description="only containers with this status")] = None,
    name: Annotated[str | None, Query(max_length=255, description="case-insensitive substring of the name")] = None,
) -> Page[Container]:
    """Your organization's containers, a page at a time, newest first, each with its status and the reason for it;
    filter by status or by a part of the name."""
    return await service.list_page(
        session, principal, page=page, page_size=page_size, status=status, name=name, context=context
    )


@router.get("/{container_id}", response_model=Container, summary="Get a container")
async def get_container(
    container_id: ContainerId, response: Response, context: ContextDep, principal: PrincipalDep, session: ReadSessionDep
) -> Container:
    """One container: status and reason, ports published on the host, addresses, GPUs, env (secrets masked). The
    `ETag` header is the version to send as `If-Match` with a PUT."""
    container, etag = await service.get(session, principal, container_id, context=context)
    response.headers["ETag"] = etag
    return container


@router.put(
    "/{container_id}",
    response_model=IdResponse,
    summary="Reconfigure a container",
    description="Recreates the container with the new configuration: its local data is lost, storages are kept.",
)
async def update_container(
    container_id: ContainerId,
    body: UpdateContainerRequest,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
    if_match: IfMatch = None,
) -> IdResponse:
    return IdResponse(id=await service.update(session, principal, container_id, body, if_match, context=context))


@router.delete("/{container_id}", response_model=dict[str, str], summary="Delete a container")
async def delete_container(
    container_id: ContainerId, context: ContextDep, principal: PrincipalDep, session: WriteSessionDep
) -> dict[str, str]:
    """Marks the container `terminating` and answers at once; its runtime objects are removed soon after, its GPUs
    freed, and then it is gone."""
    await service.delete(session, principal, container_id, context=context)
    return {}


@router.post("/{container_id}/restart", response_model=ContainerAction, summary="Restart a container")
async def restart_container(
    container_id: ContainerId, context: ContextDep, principal: PrincipalDep, session: WriteSessionDep
) -> ContainerAction:
    """Stops and starts the container again with the same configuration; its status goes through `creating` to
    `running`."""
    return await service.restart(session, principal, container_id, context=context)


@router.post("/{container_id}/stop", response_model=ContainerAction, summary="Stop a container")
async def stop_container(
    container_id: ContainerId, context: ContextDep, principal: PrincipalDep, session: WriteSessionDep
) -> ContainerAction:
    """Stops the container (SIGTERM, then SIGKILL after the grace period); it keeps its GPUs and configuration, and
    `start` runs it again."""
    return await service.stop(session, principal, container_id, context=context)


@router.post("/{container_id}/start", response_model=ContainerAction, summary="Start a stopped container")
async def start_container(
    container_id: ContainerId, context: ContextDep, principal: PrincipalDep, session: WriteSessionDep
) -> ContainerAction:
    """Starts a `stopped` container again with the configuration it had."""
    return await service.start(session, principal, container_id, context=context)


@router.get(
    "/{container_id}/logs",
    response_class=StreamingResponse,
    summary="A container's output",
    responses={200: {"content": {"text/plain": {}}, "description": "stdout and stderr interleaved"}},
)
async def container_logs_route(
    container_id: ContainerId,
    context: ContextDep,
    principal: PrincipalDep,
    session: ReadSessionDep,
    tail: Annotated[int | None, Query(ge=0, le=100_000, description="the last N lines; omitted: all")] = None,
    follow: Annotated[bool, Query(description="keep streaming new output until the container stops")] = False,
    since: Annotated[str | None, Query(max_length=64, description="RFC 3339 time or unix seconds")] = None,
) -> Response:
    """The container's stdout and stderr as plain text, from `since`, the last `tail` lines, or all; with `follow`
    the answer streams new output until the container stops or the client leaves (`dockyard containers logs ID
    --follow`)."""
    chunks = await container_logs.open_logs(
        session,
        principal,
        container_id,
        tail=tail,
        follow=follow,
        since=container_logs.parse_since(since),
        context=context,
    )
    if follow:
        return StreamingResponse(chunks, media_type="text/plain; charset=utf-8")
    return Response(b"".join([chunk async for chunk in chunks]), media_type="text/plain; charset=utf-8")
