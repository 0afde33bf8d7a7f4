"""Why an endpoint's queue is not moving, from what is already stored: the one place that says it.

`blocking(facts, now)` is a pure function of `QueueFacts` (the endpoint's status and reason, its workers' statuses,
reasons and times, its scale-up held by a quota, its bounds and queue), unit-tested with made-up facts. `facts`
is the one read that gathers them; `explain` is both; `snapshot` is what the job status view reads, kept per
endpoint in the server's `WaitCache` for `CACHE_SECONDS`, so a thousand clients polling queued jobs cost one read a
second, not a thousand.

The reasons, first that applies wins (docs/troubleshooting.md says what each means and what to do):

1. `ENDPOINT_FAILED`: Dockyard marked the endpoint failed (a crash loop, a spec it refuses).
2. `WORKERS_FAILING`: no worker ready and some of the current template failed before becoming ready within
   `FAILURES_WINDOW` (the last one's error: a worker failed for never calling in says so there).
3. `WORKERS_NOT_CALLING_IN`: an async worker started longer than `call_in_seconds` ago (half the bound after which
   it is failed) and has never called its webhooks, or the last worker failed for that (with the URL it was given:
   a server on loopback is the usual cause).
4. `NO_FREE_GPU` / `NO_ROOM`: a worker waits to be placed (the placement's own sentence).
5. `QUOTA_REACHED`: the autoscaler's scale-up is held by the organization's quota and no worker is coming.
6. `WORKER_STARTING`: a worker is being placed or started (since when).
7. `MAX_REPLICAS`: jobs queue while every worker the endpoint may have runs one (or it may have none).
8. `SCALING_FROM_ZERO`: no worker yet, and work waits (or the autoscaler wants one).

None: workers are ready and not all of them are taken, so the queue moves; or the endpoint is at zero workers with
nothing waiting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.core.status import (
    NEVER_CALLED_IN_PREFIX,
    UNPLACED_PREFIX,
    EndpointStatus,
    EndpointType,
    JobStatus,
    WorkerStatus,
)
from dockyard.db.base import utcnow
from dockyard.db.models import EndpointModel, EventModel, JobModel, ProductModel, WorkerModel
from dockyard.db.session import Database
from dockyard.outbound import redact_url
from dockyard.schemas.waits import Blocking, WaitCode
from dockyard.services.worker_runspec import webhook_base_url

CACHE_SECONDS = 1.0  # how long the job status view reuses an endpoint's explanation
_CACHE_BOUND = 1024  # entries kept before the expired ones are dropped
THROUGHPUT_WINDOW = timedelta(minutes=5)  # jobs taken in this window make the estimate of a queued job's start
FAILURES_WINDOW = timedelta(minutes=10)  # a failed worker older than this no longer explains a wait
_EVENTS = ("EndpointFailed", "ScaleUpHeld", "ScaledUp")
_WAITING = (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS)
_GONE = (WorkerStatus.FAILED, WorkerStatus.EXITED, WorkerStatus.STOPPING, WorkerStatus.DRAINING)


@dataclass(frozen=True)
class WorkerFacts:
    """One worker as the explanation reads it. `since`: when its row last changed (for a starting worker, about
    when its container started); `created_at`: when it was wanted."""

    id: str
    status: WorkerStatus
    reason: str
    current: bool  # of the endpoint's current generation
    drain: bool
    called_in: bool  # an async worker that has called its webhooks at least once
    since: datetime
    created_at: datetime


@dataclass(frozen=True)
class QueueFacts:
    """Everything `blocking` reads of one endpoint."""

    endpoint_id: str
    type: EndpointType
    status: EndpointStatus
    reason: str
    failed_since: datetime | None  # the latest `EndpointFailed` event
    max_replicas: int
    desired_replicas: int  # the autoscaler's figure, at least min_replicas
    gpus_per_worker: int
    queued: int  # jobs IN_QUEUE
    running: int  # jobs IN_PROGRESS
    workers: tuple[WorkerFacts, ...]
    held: tuple[str, datetime] | None  # the latest `ScaleUpHeld` event, when no `ScaledUp` came after it
    webhook_url: str  # the base URL async workers are given (services/worker_runspec.py)
    call_in_seconds: float


@dataclass(frozen=True)
class Snapshot:
    """An endpoint's explanation and its recent throughput (jobs taken per second; 0: none taken lately)."""

    blocking: Blocking | None
    rate: float
    at: datetime


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _seconds(now: datetime, since: datetime) -> str:
    return f"{max(0.0, (now - since).total_seconds()):.0f} s"


def blocking(facts: QueueFacts, now: datetime) -> Blocking | None:
    """The one reason the endpoint's queued work waits, or None when it moves (see the module docstring)."""
    endpoint = facts.endpoint_id
    if facts.status == EndpointStatus.FAILED:
        return Blocking(
            code=WaitCode.ENDPOINT_FAILED,
            message=f"endpoint {endpoint} failed: {facts.reason}. Fix the cause and update it (`dockyard endpoints "
            f"update {endpoint} --image ...`); it also retries by itself. `dockyard endpoints events {endpoint}` "
            "shows what happened",
            since=_unix(facts.failed_since),
        )
    live = [w for w in facts.workers if w.status not in _GONE and not w.drain]
    ready = [w for w in live if w.status == WorkerStatus.READY]
    recent = now - FAILURES_WINDOW
    failed = [w for w in facts.workers if w.status == WorkerStatus.FAILED and w.current and w.since >= recent]
    if failed and not ready:
        last = max(failed, key=lambda w: w.since)
        if last.reason.startswith(NEVER_CALLED_IN_PREFIX):  # the reason names the URL and the likely cause
            return Blocking(
                code=WaitCode.WORKERS_NOT_CALLING_IN,
                message=f"{len(failed)} worker(s) failed for never calling the webhooks; the last: {last.reason}",
                since=_unix(min(w.since for w in failed)),
            )
        return Blocking(
            code=WaitCode.WORKERS_FAILING,
            message=f"{len(failed)} worker(s) failed before becoming ready; the last: {last.reason}. "
            f"`dockyard endpoints logs {endpoint} {last.id}` shows its output",
            since=_unix(min(w.since for w in failed)),
        )
    silent = [
        w
        for w in live
        if facts.type == EndpointType.ASYNC
        and w.status == WorkerStatus.STARTING
        and not w.called_in
        and (now - w.since).total_seconds() >= facts.call_in_seconds
    ]
    if silent and not ready:
        worker = min(silent, key=lambda w: w.since)
        return Blocking(
            code=WaitCode.WORKERS_NOT_CALLING_IN,
            message=f"worker {worker.id} started {_seconds(now, worker.since)} ago and has not called its webhooks "
            f"at {facts.webhook_url}; that URL must reach the server from inside a container (serve on 0.0.0.0, or "
            f"set DOCKYARD_WORKER_WEBHOOK_URL). `dockyard endpoints logs {endpoint} {worker.id}` shows its output",
            since=_unix(worker.since),
        )
    placing = [w for w in live if w.status == WorkerStatus.PENDING and w.reason.startswith(UNPLACED_PREFIX)]
    if placing and not ready:
        worker = min(placing, key=lambda w: w.created_at)
        code = WaitCode.NO_FREE_GPU if facts.gpus_per_worker else WaitCode.NO_ROOM
        what = f"{facts.gpus_per_worker} free GPU(s) of its product" if facts.gpus_per_worker else "room"
        return Blocking(
            code=code,
            message=f"no node has {what} for worker {worker.id} ({worker.reason}); it starts when one frees up. "
            f"`dockyard endpoints update {endpoint} --product ...` picks another product",
            since=_unix(worker.created_at),
        )
    if facts.held is not None and not live:
        message, at = facts.held
        return Blocking(
            code=WaitCode.QUOTA_REACHED,
            message=f"the organization's quota holds the endpoint's scale-up ({message}); free some of it "
            "(`dockyard containers delete`, `dockyard endpoints update --max-replicas`) or ask the operator to raise "
            "it (`dockyard admin quotas`)",
            since=_unix(at),
        )
    coming = [w for w in live if w.status in (WorkerStatus.PENDING, WorkerStatus.STARTING)]
    if coming and not ready:
        worker = min(coming, key=lambda w: w.created_at)
        return Blocking(
            code=WaitCode.WORKER_STARTING,
            message=f"worker {worker.id} is {worker.status.value} since {_seconds(now, worker.created_at)} ago: "
            f"{worker.reason or 'being placed'}. `dockyard endpoints workers {endpoint}` follows it",
            since=_unix(worker.created_at),
        )
    taken = len(ready) >= facts.max_replicas and facts.running >= len(ready)
    if facts.queued and (facts.max_replicas == 0 or taken):
        if facts.max_replicas == 0:
            told = "its max_replicas is 0, so no worker ever starts"
        else:
            told = f"all {len(ready)} worker(s) it may have (max_replicas) are taken; jobs run in turn"
        return Blocking(
            code=WaitCode.MAX_REPLICAS,
            message=f"endpoint {endpoint}: {told}. Raise it with `dockyard endpoints update {endpoint} "
            "--max-replicas N`",
        )
    if not ready and (facts.queued or facts.desired_replicas):
        return Blocking(
            code=WaitCode.SCALING_FROM_ZERO,
            message=f"endpoint {endpoint} has no worker yet; the autoscaler starts one for the queued work. "
            f"`dockyard endpoints events {endpoint}` shows its decisions",
        )
    return None


async def facts(session: AsyncSession, endpoint: EndpointModel, *, settings: Settings) -> QueueFacts:
    """Gather `QueueFacts` of `endpoint` (a row the caller has authorized) in `session`: its workers, its queued
    jobs counted, its product's GPUs and its latest failure and scale events."""
    workers = await session.scalars(select(WorkerModel).where(WorkerModel.endpoint_id == endpoint.id))
    counted = await session.execute(
        select(JobModel.status, func.count())
        .where(JobModel.endpoint_id == endpoint.id, JobModel.status.in_(_WAITING))
        .group_by(JobModel.status)
    )
    jobs: dict[JobStatus, int] = {row[0]: row[1] for row in counted}
    gpus = await session.scalar(select(ProductModel.gpu_count).where(ProductModel.id == endpoint.product_id))
    events = (
        await session.execute(
            select(EventModel.type, EventModel.message, EventModel.created_at)
            .where(EventModel.object_id == endpoint.id, EventModel.type.in_(_EVENTS))
            .order_by(EventModel.id.desc())
            .limit(20)
        )
    ).all()
    latest: dict[str, tuple[str, datetime]] = {}
    for kind, message, at in events:
        latest.setdefault(kind, (message, at))
    held = latest.get("ScaleUpHeld")
    if held is not None and "ScaledUp" in latest and latest["ScaledUp"][1] >= held[1]:
        held = None
    failed = latest.get("EndpointFailed")
    return QueueFacts(
        endpoint_id=endpoint.id,
        type=endpoint.type,
        status=endpoint.status,
        reason=endpoint.reason,
        failed_since=failed[1] if failed is not None else None,
        max_replicas=int(endpoint.worker_config.get("max_replicas", 0)),
        # Its min_replicas are wanted even before the autoscaler has written them.
        desired_replicas=max(endpoint.desired_replicas, int(endpoint.worker_config.get("min_replicas", 0))),
        gpus_per_worker=int(gpus or 0),
        queued=jobs.get(JobStatus.IN_QUEUE, 0),
        running=jobs.get(JobStatus.IN_PROGRESS, 0),
        workers=tuple(
            WorkerFacts(
                id=worker.id,
                status=worker.status,
                reason=worker.reason,
                current=worker.generation == endpoint.generation,
                drain=worker.drain,
                called_in=worker.last_seen_at is not None,
                since=worker.modified_at,
                created_at=worker.created_at,
            )
            for worker in workers
        ),
        held=held,
        webhook_url=redact_url(webhook_base_url(settings)),  # shown to the tenant: the operator's credentials never
        # A silent worker is reported at half the bound after which the reconciler fails and replaces it.
        call_in_seconds=settings.worker_call_in_timeout / 2,
    )


async def explain(session: AsyncSession, endpoint: EndpointModel, *, settings: Settings) -> Blocking | None:
    """The endpoint's blocking reason now (`blocking` of `facts`)."""
    return blocking(await facts(session, endpoint, settings=settings), utcnow())


async def snapshot(context: ServerContext, endpoint_id: str) -> Snapshot:
    """The endpoint's explanation and throughput, read at most once per `CACHE_SECONDS` per server (the job status
    view of a queued job reads it). An endpoint gone meanwhile explains nothing."""
    cache = context.waits
    found = cache.entries.get(endpoint_id)
    clock = time.monotonic()
    if found is not None and found[0] > clock:
        kept: Snapshot = found[1]
        return kept
    now = utcnow()
    async with context.db.read() as session:
        endpoint = await session.get(EndpointModel, endpoint_id)
        if endpoint is None:
            return Snapshot(None, 0.0, now)
        reason = blocking(await facts(session, endpoint, settings=context.settings), now)
        taken = await session.scalar(
            select(func.count())
            .select_from(JobModel)
            .where(JobModel.endpoint_id == endpoint_id, JobModel.started_at >= now - THROUGHPUT_WINDOW)
        )
    result = Snapshot(reason, int(taken or 0) / THROUGHPUT_WINDOW.total_seconds(), now)
    if len(cache.entries) >= _CACHE_BOUND:  # endpoints deleted or no longer polled leave with their expired entries
        for stale in [key for key, (until, _) in cache.entries.items() if until <= clock]:
            del cache.entries[stale]
    cache.entries[endpoint_id] = (clock + CACHE_SECONDS, result)
    return result


def estimated_start(found: Snapshot, position: int) -> int | None:
    """Unix seconds when the job at `position` (1-based) should be taken, at the endpoint's recent throughput;
    None when no job was taken lately, or when the queue is blocked by more than its turn (nothing says when it
    moves again)."""
    if found.rate <= 0 or (found.blocking is not None and found.blocking.code != WaitCode.MAX_REPLICAS):
        return None
    return int(found.at.timestamp() + (position - 1) / found.rate) + 1


_MINE = select(JobModel.created_at).where(JobModel.id == bindparam("job_id")).scalar_subquery()
# Built once (Database.first): the jobs queued on the endpoint up to this one, in the order workers take them
# (services/jobs.py `claim_next`).
_POSITION = (
    select(func.count())
    .select_from(JobModel)
    .where(
        JobModel.endpoint_id == bindparam("endpoint_id"),
        JobModel.status == JobStatus.IN_QUEUE,
        or_(JobModel.created_at < _MINE, and_(JobModel.created_at == _MINE, JobModel.id <= bindparam("job_id"))),
    )
)


async def position(db: Database, endpoint_id: str, job_id: str) -> int:
    """The queued job's place in its endpoint's queue, 1 first (at least 1: a job taken meanwhile is not counted)."""
    found = await db.first(_POSITION, {"endpoint_id": endpoint_id, "job_id": job_id})
    return max(1, int(found[0]) if found is not None else 1)
