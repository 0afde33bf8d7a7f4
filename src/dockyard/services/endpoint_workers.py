"""An endpoint's workers, their output and the endpoint's events: read-only views for the user.

The endpoint reconciler writes the worker rows and the events; nothing here changes state. Every lookup goes
through the endpoint first, so another organization's endpoint (and its workers) is a 404 like a wrong id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.context import ServerContext
from dockyard.core.callers import Principal
from dockyard.db.models import EndpointModel, NodeModel, WorkerModel
from dockyard.errors import Conflict, NotFound
from dockyard.schemas.endpoint_workers import (
    EndpointEvent,
    EndpointEventList,
    LastProbe,
    WorkerDetail,
    WorkerList,
)
from dockyard.services import endpoints, events
from dockyard.services.container_logs import open_runtime_logs

EVENT_KIND = "endpoint"


async def _workers(session: AsyncSession, endpoint_id: str) -> list[WorkerModel]:
    rows = await session.scalars(
        select(WorkerModel)
        .where(WorkerModel.endpoint_id == endpoint_id)
        .order_by(WorkerModel.created_at, WorkerModel.id)
    )
    return list(rows)


async def list_workers(
    session: AsyncSession, principal: Principal, endpoint_id: str, *, context: ServerContext
) -> WorkerList:
    """Every worker of the endpoint, oldest first, whatever its status."""
    row = await endpoints.get_row(session, principal, endpoint_id)
    workers = await _workers(session, row.id)
    # The endpoint's own wire form gives each worker's status, log URL, health and drain: one definition of them.
    shown = endpoints.to_wire(row, workers, context).workers
    return WorkerList(
        data=[
            WorkerDetail(
                **wire.model_dump(),
                generation=worker.generation,
                node_id=worker.node_id,
                created_at=worker.created_at,
                updated_at=worker.modified_at,
                last_probe=(
                    LastProbe(at=worker.last_probe_at, result=worker.last_probe_result)
                    if worker.last_probe_at is not None
                    else None
                ),
                first_call_at=worker.first_seen_at,
                last_call_at=worker.last_seen_at,
            )
            for wire, worker in zip(shown, workers, strict=True)
        ]
    )


async def _worker(session: AsyncSession, endpoint: EndpointModel, worker_id: str) -> WorkerModel:
    worker = await session.get(WorkerModel, worker_id)
    if worker is None or worker.endpoint_id != endpoint.id:
        raise NotFound(
            f"worker {worker_id} not found on endpoint {endpoint.id}; "
            f"GET /gpus/v2/endpoints/{endpoint.id}/workers lists its workers"
        )
    return worker


async def _worker_idc(session: AsyncSession, endpoint: EndpointModel, worker: WorkerModel) -> str:
    """The IDC whose runtime holds the worker: its node's. A worker of an older generation may still run in
    the region the endpoint had before a PUT moved it, so the endpoint's region is only the fallback."""
    node = await session.get(NodeModel, worker.node_id) if worker.node_id else None
    return node.idc_id if node is not None else endpoint.idc_id


async def open_worker_logs(
    session: AsyncSession,
    principal: Principal,
    endpoint_id: str,
    worker_id: str,
    *,
    tail: int | None,
    follow: bool,
    since: datetime | None,
    context: ServerContext,
) -> AsyncIterator[bytes]:
    """An iterator over the worker's output. 404: not this organization's endpoint, or not its worker; 409: the
    worker has no runtime object yet (or it is gone); 503: its runtime cannot be reached."""
    endpoint = await endpoints.get_row(session, principal, endpoint_id)
    worker = await _worker(session, endpoint, worker_id)
    if not worker.runtime_id:
        raise Conflict(
            f"worker {worker_id} has not started yet (status {worker.status.value}); no logs. "
            "Retry once its status is starting or ready"
        )
    idc_id = await _worker_idc(session, endpoint, worker)
    return await open_runtime_logs(
        context, idc_id, worker.runtime_id, f"worker {worker_id}", tail=tail, follow=follow, since=since
    )


async def list_events(session: AsyncSession, principal: Principal, endpoint_id: str, limit: int) -> EndpointEventList:
    """The endpoint's latest `limit` events (the reconciler's and the autoscaler's decisions), newest first."""
    row = await endpoints.get_row(session, principal, endpoint_id)
    rows = await events.list_events(session, row.org_id, EVENT_KIND, row.id, limit)
    return EndpointEventList(
        data=[EndpointEvent(type=e.type, message=e.message, created_at=e.created_at) for e in reversed(rows)]
    )
