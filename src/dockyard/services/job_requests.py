"""The client side of async jobs: what `run`, `runsync`, `status`, `stream`, `cancel`, `retry`, `purge-queue`
and `health` do (api/jobs.py serves them at `/v1/{endpoint_id}/...` and `/v2/{endpoint_id}/...`).

Jobs are durable (docs/architecture.md): `run` commits the row before it answers (without a key, in a group
commit with the jobs submitted at the same moment, job_queue/inserts.py). An `Idempotency-Key` makes
a submission happen once per endpoint: the job row carries the key under a unique (endpoint, key) constraint,
and the key is also recorded through `services.idempotency` for its 24 hours, because a finished job is purged
after its TTL (30 minutes by default) and a replay within the day must still not make a second job. Of
concurrent duplicates exactly one inserts the key (the others wait on it, see services/idempotency.py, and
then replay its answer); a job-key collision at commit, left over from a key older than a day, is answered
with the job that holds it.

Waits never poll the database in a tight loop: `runsync` sleeps on `job_signals.watch_changed`, registered
before each read so that a finish between the read and the wait is not missed (a finish on another server
reaches it through the bus), and re-reads at least every `_WAIT_SLICE` seconds in case the bus lost a signal.

`stream/{id}` is RunPod's consuming read: each call answers the parts streamed since the previous call and
deletes them (`DELETE ... RETURNING`, so two concurrent readers never get the same part), which is what makes
the runpod client's loop yield every part once, in order, and stop at the first empty read of a finished job.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from dockyard import outbound
from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.core.callers import Principal
from dockyard.core.loops import LoopName
from dockyard.core.status import DesiredState, EndpointType, JobStatus, WorkerStatus
from dockyard.db.base import guarded_update, new_id, retry_stale, utcnow
from dockyard.db.models import EndpointModel, JobModel, JobStreamModel, WorkerModel
from dockyard.errors import ApiError, Conflict, InvalidField, NotFound, PayloadTooLarge
from dockyard.job_queue.inserts import Limit
from dockyard.job_queue.metrics import job_metrics
from dockyard.schemas.jobs import (
    EndpointHealth,
    JobAccepted,
    JobCounts,
    JobList,
    JobListItem,
    JobPolicy,
    JobView,
    JobViewBody,
    PurgeAnswer,
    RunRequest,
    WorkerCounts,
)
from dockyard.schemas.waits import WaitCode
from dockyard.services import endpoints, idempotency, quotas, waits
from dockyard.services.jobs import VIEW_COLUMNS, finish_values, job_view, retry_values

_WAIT_SLICE = 5.0  # seconds between database reads while waiting, for a signal the bus lost
_MAX_INT_MS = 2**31 - 1  # the job's millisecond columns are 32-bit integers
_RETRYABLE = (JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED)
_INITIALIZING = (WorkerStatus.PENDING, WorkerStatus.STARTING)


async def async_endpoint(session: AsyncSession, principal: Principal, endpoint_id: str) -> EndpointModel:
    """The caller's async endpoint `endpoint_id`; another organization's, or a sync one, is NotFound."""
    row = await endpoints.get_row(session, principal, endpoint_id)
    if row.type != EndpointType.ASYNC:
        raise NotFound(
            f"endpoint {endpoint_id} is a sync endpoint and has no job API; call it at its url instead "
            "(GET /gpus/v2/endpoints/{id} shows it)"
        )
    return row


async def _job(session: AsyncSession, endpoint_id: str, job_id: str) -> JobModel:
    """The job `job_id` of the (already authorized) endpoint; read afresh, so a retry after a rollback sees
    the row as it is now."""
    job = await session.get(JobModel, job_id, populate_existing=True)
    if job is None or job.endpoint_id != endpoint_id:
        raise NotFound(f"job {job_id} not found on endpoint {endpoint_id}; finished jobs are kept only for their ttl")
    return job


def _resolved_ms(given: int | None, default_seconds: float) -> int:
    return min(given if given is not None else int(default_seconds * 1000), _MAX_INT_MS)


def _same_request(job: JobModel, row: dict[str, Any]) -> bool:
    """Whether the job `row` (a submission's column values) asks what `job` was asked."""
    return json.loads(job.input) == json.loads(row["input"]) and all(
        getattr(job, name) == row[name] for name in ("webhook", "execution_timeout_ms", "ttl_ms", "low_priority")
    )


async def _by_key(session: AsyncSession, endpoint_id: str, key: str) -> JobModel | None:
    return await session.scalar(
        select(JobModel)
        .options(defer(JobModel.output))
        .where(JobModel.endpoint_id == endpoint_id, JobModel.idempotency_key == key)
        .execution_options(populate_existing=True)
    )


def _key_slot(endpoint_id: str, key: str) -> str:
    """The idempotency-store key of a job key: per endpoint, and within the store's 255 characters."""
    return f"job {endpoint_id} {hashlib.sha256(key.encode()).hexdigest()}"


async def submit(
    context: ServerContext,
    principal: Principal,
    endpoint_id: str,
    request: RunRequest,
    idempotency_key: str | None = None,
) -> idempotency.Answer:
    """Commit a new IN_QUEUE job and answer `{"id", "status"}`; with an Idempotency-Key, a repeat of the same
    request answers the job the first one made (its current status), a different request with the key is a
    422. An input over `job_max_payload_bytes` is a 413; a webhook that can be seen to go where webhooks may not
    (a literal loopback, private, link-local ... address, outbound.py) is a 422.

    The endpoint is checked in the write transaction that inserts the job, so an endpoint being deleted never
    gets one. Without a key that transaction is a group commit shared with the jobs submitted at the same
    moment (job_queue/inserts.py)."""
    settings = context.settings
    input_json = json.dumps(request.input, separators=(",", ":"))
    size = len(input_json.encode())
    if size > settings.job_max_payload_bytes:
        raise PayloadTooLarge(
            f"input is {size} bytes, over the job limit of {settings.job_max_payload_bytes} bytes; "
            "pass large data by reference (a URL, or a path on a network storage)"
        )
    allowed_hosts = outbound.host_policy(settings.webhook_allowed_hosts)
    if request.webhook and (refused := outbound.url_refusal(request.webhook, allowed_hosts)):
        raise InvalidField("webhook", refused)
    policy = request.policy or JobPolicy()
    now = utcnow()
    ttl_ms = _resolved_ms(policy.ttl, settings.job_lifetime_seconds)
    row: dict[str, Any] = {
        "endpoint_id": endpoint_id,
        "org_id": principal.org_id,
        "input": input_json,
        "webhook": request.webhook or "",
        "execution_timeout_ms": _resolved_ms(policy.execution_timeout, settings.job_execution_timeout_seconds),
        "ttl_ms": ttl_ms,
        "keep_ms": _resolved_ms(None, settings.job_ttl_seconds),
        "low_priority": policy.low_priority,
        "idempotency_key": idempotency_key,
        "created_at": now,
        "expires_at": now + timedelta(milliseconds=ttl_ms),
    }

    async def open_endpoint(session: AsyncSession) -> bool:
        """Refuse an endpoint that takes no jobs; whether the autoscaler should start a worker now (an endpoint
        at zero workers that may have one starts it at once rather than at the autoscaler's next tick)."""
        endpoint = await async_endpoint(session, principal, endpoint_id)
        if endpoint.desired == DesiredState.DELETED:
            raise Conflict(f"endpoint {endpoint.id} is being deleted and takes no new jobs")
        return endpoint.desired_replicas == 0 and int(endpoint.worker_config.get("max_replicas", 0)) > 0

    if idempotency_key is None:
        job_id = new_id()
        check_key = (principal.org_id, endpoint_id)
        limit = _queue_limit(context, principal.org_id)
        at_zero = bool(await context.job_inserts.insert({**row, "id": job_id}, open_endpoint, check_key, limit))
        answer = idempotency.Answer(200, {"id": job_id, "status": JobStatus.IN_QUEUE.value})
    else:
        async with context.db.write_session() as session:
            at_zero = await open_endpoint(session)
            queued = {quotas.Resource.QUEUED_JOBS: 1}
            answer = await _submit_once(
                session,
                principal,
                request,
                row,
                idempotency_key,
                lambda: quotas.admit(session, principal.org_id, queued, settings=settings),
            )
        if answer.replayed:
            return answer
    context.job_signals.notify_queued(endpoint_id)
    if at_zero and not policy.low_priority:  # a low-priority job waits for a worker the endpoint has anyway
        context.wake(LoopName.AUTOSCALER)
    return answer


def _queue_limit(context: ServerContext, org_id: str) -> Limit:
    """The organization's `queued_jobs` quota, as the batched insert admits rows against it."""

    name = org_id  # until the lock reads the organization's name

    async def usage(session: AsyncSession) -> tuple[int, int]:
        nonlocal name
        name = await quotas.lock(session, org_id)
        limits, _ = await quotas.limits(session, org_id, settings=context.settings)
        return await quotas.queued_jobs(session, org_id), limits[quotas.Resource.QUEUED_JOBS]

    def refusal(used: int, allowed: int) -> ApiError:
        return quotas.refusal(quotas.Resource.QUEUED_JOBS, allowed, used, 1, name, org_id)

    return Limit(org_id, usage, refusal)


async def _submit_once(
    session: AsyncSession,
    principal: Principal,
    request: RunRequest,
    row: dict[str, Any],
    key: str,
    admit: Callable[[], Awaitable[None]],
) -> idempotency.Answer:
    """Commit the job `row` once per Idempotency-Key `key` (see the module docstring), after `admit` (the quota
    check) let it in; a replay answers the job the key made, with its current status."""
    owner = row["endpoint_id"]

    def replay(job: JobModel) -> idempotency.Answer:
        if not _same_request(job, row):
            raise InvalidField(
                idempotency.HEADER, "this key was used with a different request; send a new key for a new job"
            )
        return idempotency.Answer(200, {"id": job.id, "status": job.status.value}, replayed=True)

    async def add_job() -> dict[str, str]:
        await admit()
        job = JobModel(**row)
        session.add(job)
        await session.flush()
        return {"id": job.id, "status": JobStatus.IN_QUEUE.value}

    if (existing := await _by_key(session, owner, key)) is not None:
        return replay(existing)
    body = {
        "input": request.input,
        "webhook": row["webhook"],
        "timeout_ms": row["execution_timeout_ms"],
        "ttl_ms": row["ttl_ms"],
        "low_priority": row["low_priority"],
    }
    try:
        answer = await idempotency.once(session, principal.org_id, _key_slot(owner, key), f"run {owner}", body, add_job)
        await session.commit()
    except IntegrityError:
        # The job's own (endpoint, key) constraint: a job holds this key, its store entry past its day.
        await session.rollback()
        if (existing := await _by_key(session, owner, key)) is None:
            raise Conflict("a job with this Idempotency-Key is being submitted; retry in a moment") from None
        return replay(existing)
    if answer.replayed:
        job = await _by_key(session, owner, key)
        current = job.status.value if job is not None else answer.body["status"]
        return idempotency.Answer(200, {**answer.body, "status": current}, replayed=True)
    return answer


_VIEW = select(*VIEW_COLUMNS).where(JobModel.id == bindparam("job_id"))  # built once (Database.first)


async def _read_view(context: ServerContext, job_id: str) -> JobViewBody | None:
    job = await context.db.first(_VIEW, {"job_id": job_id})
    return job_view(job) if job is not None else None


async def wait_for(context: ServerContext, job_id: str, wait_seconds: float) -> JobViewBody | None:
    """The job's view once it is final, or as it is after `wait_seconds`; None when it was purged meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        remaining = deadline - loop.time()
        # Watched before the read: a finish committed after the read still wakes this wait.
        with context.job_signals.watch_changed(job_id) as changed:
            view = await _read_view(context, job_id)
            if view is None or JobStatus(view["status"]).final or remaining <= 0:
                return view
            await changed.wait(min(remaining, _WAIT_SLICE))


async def run_sync(
    context: ServerContext,
    principal: Principal,
    endpoint_id: str,
    request: RunRequest,
    idempotency_key: str | None = None,
    *,
    wait_seconds: float,
) -> JobView:
    """Submit like `submit`, then answer the job's status view once it is final or `wait_seconds` have passed
    (RunPod's `runsync`: an unfinished job is answered IN_QUEUE or IN_PROGRESS, to be polled with `status`). On an
    endpoint marked failed it answers at once: the job stays queued, and its view says why."""
    answer = await submit(context, principal, endpoint_id, request, idempotency_key)
    job_id = str(answer.body["id"])
    found = await waits.snapshot(context, endpoint_id)
    failed = found.blocking is not None and found.blocking.code == WaitCode.ENDPOINT_FAILED
    view = await wait_for(context, job_id, 0.0 if failed else wait_seconds)
    if view is None:
        raise NotFound(f"job {job_id} finished and its result has already expired; give it a longer ttl")
    if view["status"] == JobStatus.IN_QUEUE:
        view = await _queued(context, endpoint_id, view)
    return JobView.model_validate(view)


async def _queued(context: ServerContext, endpoint_id: str, view: JobViewBody) -> JobViewBody:
    """A queued job's view with where it stands: `position`, `estimatedStartAt` and the blocking `reason`. The
    explanation is the endpoint's, cached for a second (services/waits.py); the position is one count."""
    found = await waits.snapshot(context, endpoint_id)
    place = await waits.position(context.db, endpoint_id, view["id"])
    reason = found.blocking.model_dump(mode="json") if found.blocking is not None else None
    return {**view, "position": place, "estimatedStartAt": waits.estimated_start(found, place), "reason": reason}


# Built once (Database.first): the job of the caller's async endpoint, the columns of its status view.
_STATUS = (
    select(*VIEW_COLUMNS)
    .join(EndpointModel, EndpointModel.id == JobModel.endpoint_id)
    .where(
        JobModel.id == bindparam("job_id"),
        JobModel.endpoint_id == bindparam("endpoint_id"),
        EndpointModel.org_id == bindparam("org_id"),
        EndpointModel.type == EndpointType.ASYNC,
    )
)


async def status(context: ServerContext, principal: Principal, endpoint_id: str, job_id: str) -> JobView:
    """The job's status view. One point read on the hot path (`Database.first`); when it finds nothing, the
    endpoint is looked up on its own so the 404 says what is missing. A queued job's view also says where it
    stands (`_queued`): reads made for IN_QUEUE jobs alone."""
    db = context.db
    job = await db.first(_STATUS, {"job_id": job_id, "endpoint_id": endpoint_id, "org_id": principal.org_id})
    if job is None:
        async with db.read() as session:
            endpoint = await async_endpoint(session, principal, endpoint_id)
            view = job_view(await _job(session, endpoint.id, job_id))
    else:
        view = job_view(job)
    if view["status"] == JobStatus.IN_QUEUE:
        view = await _queued(context, endpoint_id, view)
    return JobView.model_validate(view)


async def stream(session: AsyncSession, principal: Principal, endpoint_id: str, job_id: str) -> JobView:
    """The job's status view with `stream`: the parts streamed since the last call, in order, now consumed."""
    endpoint = await async_endpoint(session, principal, endpoint_id)
    job = await _job(session, endpoint.id, job_id)
    rows = await session.execute(
        delete(JobStreamModel)
        .where(JobStreamModel.job_id == job.id)
        .returning(JobStreamModel.seq, JobStreamModel.output)
    )
    parts = [output for _, output in sorted((row.seq, row.output) for row in rows)]
    view = JobView.model_validate(job_view(job, parts))
    await session.commit()
    return view


async def cancel(
    session: AsyncSession, principal: Principal, endpoint_id: str, job_id: str, *, context: ServerContext
) -> JobView:
    """CANCELLED now: a queued job never runs; a running one is flagged `cancel_requested`, so its worker is told
    to stop at its next ping or job-done; a finished one is answered unchanged."""
    owner = (await async_endpoint(session, principal, endpoint_id)).id  # a string: a rollback expires rows

    async def change() -> tuple[JobView, bool, str, bool]:
        job = await _job(session, owner, job_id)
        if job.status.final:
            return JobView.model_validate(job_view(job)), False, "", False
        holder = job.worker_id if job.status == JobStatus.IN_PROGRESS else ""
        values = finish_values(job, JobStatus.CANCELLED, now=utcnow(), outcome="cancelled by the client")
        for name, value in {**values, "cancel_requested": bool(holder)}.items():
            setattr(job, name, value)
        await session.flush()
        view = JobView.model_validate(job_view(job))
        await session.commit()
        return view, bool(job.webhook), holder, True

    view, changed, holder, ended = await retry_stale(session, change)
    if ended:
        job_metrics(context.registry).ended(owner, JobStatus.CANCELLED)
    context.job_signals.notify_changed(job_id)
    if holder:
        context.job_signals.notify_worker(holder)  # its held job-stop poll answers now
    if changed:
        context.wake(LoopName.JOB_WEBHOOKS)
    return view


async def retry(
    session: AsyncSession, principal: Principal, endpoint_id: str, job_id: str, *, context: ServerContext
) -> JobAccepted:
    """Send a FAILED, TIMED_OUT or CANCELLED job back to the queue (`retried` + 1, a fresh set of attempts, its
    previous stream parts dropped); any other status is a 409."""
    owner = (await async_endpoint(session, principal, endpoint_id)).id  # a string: a rollback expires rows

    async def change() -> JobAccepted:
        job = await _job(session, owner, job_id)
        if job.status not in _RETRYABLE:
            raise Conflict(
                f"job {job_id} is {job.status.value}; only FAILED, TIMED_OUT or CANCELLED jobs can be retried"
            )
        await quotas.admit(session, principal.org_id, {quotas.Resource.QUEUED_JOBS: 1}, settings=context.settings)
        for name, value in retry_values(job, now=utcnow()).items():
            setattr(job, name, value)
        await session.flush()
        await session.execute(delete(JobStreamModel).where(JobStreamModel.job_id == job.id))
        await session.commit()
        return JobAccepted(id=job.id, status=job.status)

    answer = await retry_stale(session, change)
    context.job_signals.notify_queued(owner)
    return answer


async def purge_queue(
    session: AsyncSession, principal: Principal, endpoint_id: str, *, context: ServerContext
) -> PurgeAnswer:
    """Cancel every IN_QUEUE job of the endpoint (none of them will run); `removed` counts them. A job a worker
    takes meanwhile is not counted: its guarded write loses."""
    endpoint = await async_endpoint(session, principal, endpoint_id)
    queued = list(
        await session.scalars(
            select(JobModel)
            .options(defer(JobModel.input), defer(JobModel.output))
            .where(JobModel.endpoint_id == endpoint.id, JobModel.status == JobStatus.IN_QUEUE)
        )
    )
    now = utcnow()
    removed: list[JobModel] = []
    for job in queued:
        values = finish_values(job, JobStatus.CANCELLED, error="removed from the queue by purge-queue", now=now)
        if await guarded_update(session, JobModel, job.id, job.version, **values):
            removed.append(job)
    await session.commit()
    job_metrics(context.registry).ended(endpoint.id, JobStatus.CANCELLED, len(removed))
    for job in removed:
        context.job_signals.notify_changed(job.id)
    if any(job.webhook for job in removed):
        context.wake(LoopName.JOB_WEBHOOKS)
    return PurgeAnswer(removed=len(removed), status="completed")


async def health(
    session: AsyncSession, principal: Principal, endpoint_id: str, *, settings: Settings
) -> EndpointHealth:
    """Job counts by status, worker counts in RunPod's states (`WorkerCounts`), and why its queued jobs are not
    moving (`reason`, services/waits.py), all from the database."""
    endpoint = await async_endpoint(session, principal, endpoint_id)
    of_endpoint = JobModel.endpoint_id == endpoint.id
    by_status = await session.execute(
        select(JobModel.status, func.count()).where(of_endpoint).group_by(JobModel.status)
    )
    counts: dict[JobStatus, int] = {row[0]: row[1] for row in by_status}
    retried = (
        await session.scalar(select(func.count()).select_from(JobModel).where(of_endpoint, JobModel.retried > 0)) or 0
    )
    busy = set(
        await session.scalars(
            select(JobModel.worker_id)
            .distinct()
            .where(of_endpoint, JobModel.status == JobStatus.IN_PROGRESS, JobModel.worker_id != "")
        )
    )
    workers = (
        await session.execute(
            select(WorkerModel.id, WorkerModel.status, WorkerModel.drain).where(WorkerModel.endpoint_id == endpoint.id)
        )
    ).all()
    ready = {worker.id for worker in workers if worker.status == WorkerStatus.READY and not worker.drain}
    return EndpointHealth(
        reason=await waits.explain(session, endpoint, settings=settings),
        jobs=JobCounts(
            completed=counts.get(JobStatus.COMPLETED, 0),
            failed=counts.get(JobStatus.FAILED, 0) + counts.get(JobStatus.TIMED_OUT, 0),
            in_progress=counts.get(JobStatus.IN_PROGRESS, 0),
            in_queue=counts.get(JobStatus.IN_QUEUE, 0),
            retried=retried,
        ),
        # RunPod's worker states, from ours: a worker being placed or started is initializing, a failed one
        # unhealthy; Dockyard has no throttled worker (one waiting for room on a node is initializing).
        workers=WorkerCounts(
            idle=len(ready - busy),
            initializing=sum(worker.status in _INITIALIZING for worker in workers),
            ready=len(ready),
            running=len(busy),
            throttled=0,
            unhealthy=sum(worker.status == WorkerStatus.FAILED for worker in workers),
        ),
    )


async def list_jobs(
    session: AsyncSession, principal: Principal, endpoint_id: str, *, status: JobStatus | None, limit: int
) -> JobList:
    """The endpoint's jobs newest first (any endpoint type; a sync one has none), each as its status view with
    `created_at` (unix seconds), `attempts` and `history`."""
    endpoint = await endpoints.get_row(session, principal, endpoint_id)
    conditions: list[Any] = [JobModel.endpoint_id == endpoint.id]
    if status is not None:
        conditions.append(JobModel.status == status)
    rows = await session.scalars(
        select(JobModel)
        .options(defer(JobModel.input))
        .where(*conditions)
        .order_by(JobModel.created_at.desc(), JobModel.id.desc())
        .limit(limit)
    )
    return JobList(
        data=[
            JobListItem.model_validate(
                {
                    **job_view(job),
                    "created_at": int(job.created_at.timestamp()),
                    "attempts": job.attempts,
                    "history": job.history,
                }
            )
            for job in rows
        ]
    )
