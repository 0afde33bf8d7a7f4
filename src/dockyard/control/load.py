"""Every endpoint's load, wherever it is counted: the one view the autoscaler and the endpoint reconciler read.

- Sync requests in this process: the routing table (`RouteTable.figures()`), as fresh as the last request.
- Sync requests in stand-alone gateways: their reports (control/reports.py), a report interval old at most.
- Async jobs: the durable queue itself. Queued jobs are `queued`, jobs a worker holds are `in_flight` (on that
  worker), and the oldest queued job's age is the oldest wait, so both scaling policies read an async endpoint exactly
  as they read a sync one. Queued low-priority jobs (RunPod's `policy.lowPriority`) are left out, so they never make
  an endpoint add a worker; the workers it has take them. A worker is idle since the end (or start) of the last job it
  ran, or since it was last changed (became ready) when it ran none.

The figures of one endpoint from several sources are summed (`reports.merge`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.control.reports import merge, remote_figures
from dockyard.core.status import EndpointType, JobStatus, WorkerStatus
from dockyard.db.base import utcnow
from dockyard.db.models import EndpointModel, JobModel, WorkerModel
from dockyard.gateway.routes import EndpointFigures, RouteTable, WorkerFigures


async def job_figures(session: AsyncSession, now: datetime | None = None) -> list[EndpointFigures]:
    """The async endpoints' load, from the durable queue and their ready workers."""
    now = now or utcnow()
    endpoint_ids = list(await session.scalars(select(EndpointModel.id).where(EndpointModel.type == EndpointType.ASYNC)))
    if not endpoint_ids:
        return []
    active = (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS)
    counts = await session.execute(
        select(JobModel.endpoint_id, JobModel.status, func.count(), func.min(JobModel.created_at))
        .where(
            JobModel.endpoint_id.in_(endpoint_ids),
            JobModel.status.in_(active),
            or_(JobModel.status != JobStatus.IN_QUEUE, JobModel.low_priority.is_(False)),
        )
        .group_by(JobModel.endpoint_id, JobModel.status)
    )
    queued: dict[str, int] = defaultdict(int)
    in_flight: dict[str, int] = defaultdict(int)
    oldest: dict[str, float] = defaultdict(float)
    for endpoint_id, status, count, first in counts:
        if status == JobStatus.IN_QUEUE:
            queued[endpoint_id] = count
            oldest[endpoint_id] = max(0.0, (now - first).total_seconds())
        else:
            in_flight[endpoint_id] = count
    held = await session.execute(
        select(JobModel.worker_id, func.count())
        .where(JobModel.endpoint_id.in_(endpoint_ids), JobModel.status == JobStatus.IN_PROGRESS)
        .group_by(JobModel.worker_id)
    )
    holding = {worker_id: count for worker_id, count in held}
    last_job = await session.execute(
        select(JobModel.worker_id, func.max(func.coalesce(JobModel.finished_at, JobModel.started_at)))
        .where(JobModel.endpoint_id.in_(endpoint_ids), JobModel.worker_id != "")
        .group_by(JobModel.worker_id)
    )
    last_active = {worker_id: when for worker_id, when in last_job if when is not None}
    workers: dict[str, list[WorkerFigures]] = defaultdict(list)
    ready = await session.scalars(
        select(WorkerModel).where(WorkerModel.endpoint_id.in_(endpoint_ids), WorkerModel.status == WorkerStatus.READY)
    )
    for worker in ready:
        busy = holding.get(worker.id, 0)
        since = max(last_active.get(worker.id, worker.modified_at), worker.modified_at)
        idle = 0.0 if busy else max(0.0, (now - since).total_seconds())
        workers[worker.endpoint_id].append(WorkerFigures(worker.id, not worker.drain, busy, idle))
    return [
        EndpointFigures(
            endpoint_id, queued[endpoint_id], in_flight[endpoint_id], oldest[endpoint_id], tuple(workers[endpoint_id])
        )
        for endpoint_id in endpoint_ids
    ]


async def load_figures(session: AsyncSession, routes: RouteTable, report_interval: float) -> dict[str, EndpointFigures]:
    """Every endpoint's load now, from all three sources (see the module docstring)."""
    return merge([*routes.figures(), *await remote_figures(session, report_interval), *await job_figures(session)])
