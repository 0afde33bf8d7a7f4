"""The server side of the worker webhook protocol that the `ppio-gpus` and `runpod` worker SDKs speak, so that an
unmodified worker image built on either runs on an async endpoint (docs/api.md, Worker webhooks; docs/architecture.md).

Who calls: each async worker, with the key the endpoint reconciler made for it when it created its container
(services/worker_runspec.py puts it in the environment; only its SHA-256 is on the worker row). `authenticate`
finds the worker by that hash; the worker and endpoint ids in the path must be that worker's, so a key opens
exactly one worker's webhooks and only its endpoint's jobs (an unknown key is 401, anything else 404).

- **job-take** (`take`): the oldest `IN_QUEUE` jobs of the endpoint whose lifetime (`ttl`) has not run out are moved
  to `IN_PROGRESS` under this worker, each by a guarded write (`WHERE id AND version`, after `SELECT ... FOR UPDATE
  SKIP LOCKED` on PostgreSQL so concurrent takers pick different rows), so two workers never take one job and a job
  cancelled meanwhile is skipped. A take records the attempt (`attempts`, an attempt record in `history`,
  `started_at`, `delay_ms`) and the lease (`job_lease_seconds` from now). With nothing queued the request is held
  open up to `job_take_wait_seconds`, woken by `job_signals.notify_queued`, and then answered 204: the SDKs poll
  again at once after a 204, so answering it at once would make every idle worker spin. A draining worker is held
  the same way and takes nothing. A held take whose worker has gone (`gone()`: its connection closed, a worker that
  died or was stopped mid-poll) takes nothing when woken, so the job goes to a live worker at once rather than
  waiting out a lease on a dead one.
- **job-done** (`done`): only the job's holder (`IN_PROGRESS`, its `worker_id`) records a result, through
  `services.jobs.finish`. A result from a worker that no longer holds the job (its lease expired and the job was
  re-queued or re-run) changes nothing but a note in the job's history, and is answered 409. A result for a job
  cancelled or timed out while this worker ran it is dropped with a note and answered 200 (the worker did
  nothing wrong); the same result posted again by the holder (the SDKs retry a post whose answer was lost) is
  answered 200. `stopPod` (the SDKs' `refresh_worker`) drains the worker, so it is replaced. A body with
  `"status": "IN_PROGRESS"` is not a result but a progress update (both SDKs' `progress_update` posts it here):
  the job stays IN_PROGRESS and `status` shows the value as its `output` until the result replaces it.
- **stream** (`stream`): the holder's partial outputs are appended as `JobStreamModel` rows, numbered from 0.
- **ping** (`ping`): renews the lease of each listed job the worker still holds and whose lease has not yet
  run out (an expired lease is the reaper's to take back; renewing it could race the re-queue). The renewal
  does not bump the job's version, so a ping never makes a concurrent client write (a cancel) stale. A job the
  worker holds but no longer lists was finished and its result never arrived (`_results_lost`): its attempt ends
  at once, named so, rather than as a lease expiry a lease later.
- **job-stop** (`stop_signals`, runpod only: the SDK derives it from the job-take URL): the jobs this worker
  holds whose `cancel_requested` is set (a client cancel or the reaper's timeout already made them `CANCELLED`
  or `TIMED_OUT`) are answered once as `{"jobsToStop": [...]}` and the flag is cleared (the SDK would otherwise
  poll again at once, forever). The poll is held open like a take, woken when one of its jobs is flagged. The
  `ppio-gpus` SDK has no stop channel: a cancelled job it runs stays `CANCELLED` and its late result is ignored
  as above.

Every call is proof the worker is alive: `last_seen_at` is stamped (at most once a second, `first_seen_at` on the
first call; without bumping the row's version or `modified_at`, which the reconciler's guarded writes and drain
timeout rely on), and a worker's first call wakes the endpoint reconciler, which records it `ready`
(reconcilers/endpoints_workers.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.orm.exc import StaleDataError

from dockyard.config import Settings, new_token
from dockyard.context import ServerContext
from dockyard.core.callers import presented_key
from dockyard.core.loops import LoopName
from dockyard.core.status import JobStatus, WorkerStatus
from dockyard.db.base import guarded_update, utcnow
from dockyard.db.models import JobModel, JobStreamModel, WorkerModel
from dockyard.errors import BadRequest, Conflict, NotFound, Unauthorized, Unavailable
from dockyard.job_queue.metrics import job_metrics
from dockyard.json_depth import too_deep, too_deep_message
from dockyard.schemas.worker_webhooks import TakenJob
from dockyard.secrets import hash_api_key
from dockyard.services import events, jobs
from dockyard.services.worker_runspec import ping_interval_ms

log = logging.getLogger(__name__)

# A worker in these statuses, not draining, may take jobs (one that calls before the reconciler has recorded it
# `starting` is already running).
TAKING = (WorkerStatus.PENDING, WorkerStatus.STARTING, WorkerStatus.READY)
SEEN_EVERY = timedelta(seconds=1)
RETRIES = 3  # writes that lost a race to a concurrent one are redone from fresh rows this often
KIND_ENDPOINT = "endpoint"
# A worker key's prefix: a key that reaches a log by mistake is recognized and masked (redaction.py), as an API
# key is by its `dy_`. Keys made before it had one still authenticate: only their hash is looked up.
WORKER_KEY_PREFIX = "dyw_"


def new_worker_key() -> str:
    return WORKER_KEY_PREFIX + new_token()


def worker_key(authorization: str | None) -> str:
    """The key in an Authorization header, `Bearer <key>` or bare (the SDKs send their env value as it is)."""
    key = presented_key(authorization)
    if key is None:
        raise Unauthorized("missing or malformed worker key; a worker sends its PPIO_AI_API_KEY or RUNPOD_AI_API_KEY")
    return key


async def authenticate(
    context: ServerContext, authorization: str | None, endpoint_id: str, worker_id: str
) -> WorkerModel:
    """The worker whose key the caller sent; 401 for no such key, 404 when the path names another worker or
    endpoint than the key's."""
    key_hash = hash_api_key(worker_key(authorization))
    async with context.db.read() as session:
        worker = await session.scalar(select(WorkerModel).where(WorkerModel.key_hash == key_hash))
    if worker is None:
        raise Unauthorized("unknown worker key: the worker was removed, or the key is not one Dockyard gave")
    if worker.id != worker_id or worker.endpoint_id != endpoint_id:
        raise NotFound(f"no worker {worker_id} of endpoint {endpoint_id} holds this key")
    await _seen(context, worker)
    return worker


async def _seen(context: ServerContext, worker: WorkerModel) -> None:
    now = utcnow()
    if worker.last_seen_at is not None and now - worker.last_seen_at < SEEN_EVERY:
        return
    async with context.db.write() as session:
        await session.execute(
            update(WorkerModel)
            .where(WorkerModel.id == worker.id)
            .values(
                last_seen_at=now,
                first_seen_at=func.coalesce(WorkerModel.first_seen_at, now),
                modified_at=WorkerModel.modified_at,
            )
            .execution_options(synchronize_session=False)
        )
    if worker.last_seen_at is None:
        context.wake(LoopName.ENDPOINTS)  # its first call: the reconciler records it ready
    worker.last_seen_at = now


def _input(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- job-take ---------------------------------------------------------------------------------------------------


async def take(
    context: ServerContext, worker: WorkerModel, count: int, gone: Callable[[], Awaitable[bool]] | None = None
) -> list[TakenJob]:
    """Up to `count` jobs, oldest first; empty after `job_take_wait_seconds` with none, or as
    soon as `gone()` says, on a wake-up, that nobody waits for the answer any more."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + context.settings.job_take_wait_seconds
    waited = False
    while True:
        if waited and gone is not None and await gone():
            return []
        # Watched before the read: a job queued while the read runs wakes the wait below at once.
        with context.job_signals.watch_queued(worker.endpoint_id) as queued:
            taken = await _take_now(context, worker, count)
            if taken:
                return taken
            left = deadline - loop.time()
            if left <= 0:
                return []
            await queued.wait(left)
        waited = True


async def _take_now(context: ServerContext, worker: WorkerModel, count: int) -> list[TakenJob]:
    now = utcnow()
    taken: list[TakenJob] = []
    async with context.db.write() as session:
        row = (
            await session.execute(select(WorkerModel.status, WorkerModel.drain).where(WorkerModel.id == worker.id))
        ).first()
        if row is None or row.drain or row.status not in TAKING:
            return []
        tried: set[str] = set()
        while len(taken) < count:
            query = select(JobModel).where(
                JobModel.endpoint_id == worker.endpoint_id, JobModel.status == JobStatus.IN_QUEUE, jobs.takeable(now)
            )
            if tried:
                query = query.where(JobModel.id.not_in(tried))
            query = query.order_by(JobModel.created_at, JobModel.id).limit(count - len(taken))
            candidates = list(await session.scalars(query.with_for_update(skip_locked=True)))
            if not candidates:
                break
            for job in candidates:
                tried.add(job.id)
                if await _claim(session, job, worker.id, now, context.settings.job_lease_seconds):
                    taken.append(TakenJob(id=job.id, input=_input(job.input)))
    return taken


async def _claim(session: AsyncSession, job: JobModel, worker_id: str, now: datetime, lease: float) -> bool:
    values = jobs.start_attempt_values(job, worker_id, now=now, lease_seconds=lease)
    return await guarded_update(session, JobModel, job.id, job.version, **values)


# -- job-done and stream ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerPost:
    """A job-done or job-stream body as read from the JSON object the SDKs post: internal, the keys this side
    acts on (the SDKs add others of their own, which are ignored)."""

    has_output: bool  # whether `output` was sent at all (a JSON null is an output)
    output: Any  # `output`, None when not sent
    error: Any  # `error` as sent (a string or any JSON); None when not sent
    progress: bool  # `"status": "IN_PROGRESS"`: a progress update (`progress_update`), not a result
    stop_pod: bool  # `"stopPod": true`: the worker asks to be replaced (`refresh_worker`)


def parse_result(body: bytes) -> WorkerPost:
    """The JSON object the SDKs post (as `application/x-www-form-urlencoded`, though it is JSON text)."""
    if too_deep(body):
        raise BadRequest(too_deep_message())
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON text ({exc}); post the result object as the SDKs do") from exc
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object with `output` or `error`")
    return WorkerPost(
        has_output="output" in payload,
        output=payload.get("output"),
        error=payload.get("error"),
        progress=payload.get("status") == JobStatus.IN_PROGRESS.value,
        stop_pod=payload.get("stopPod") is True,
    )


def _outcome(post: WorkerPost) -> tuple[JobStatus, str | None, str]:
    """(status, output JSON, error): an `error` fails the job (its `output`, if any, is kept), else it completed."""
    output = json.dumps(post.output, ensure_ascii=False) if post.has_output else None
    error = post.error
    if error:
        return JobStatus.FAILED, output, error if isinstance(error, str) else json.dumps(error, ensure_ascii=False)
    return JobStatus.COMPLETED, output, ""


async def _job(session: AsyncSession, worker: WorkerModel, job_id: str) -> JobModel:
    job = await session.get(JobModel, job_id, populate_existing=True)
    if job is None or job.endpoint_id != worker.endpoint_id:
        raise NotFound(f"no job {job_id} in endpoint {worker.endpoint_id}")
    return job


def _holds(job: JobModel, worker: WorkerModel) -> bool:
    return job.status == JobStatus.IN_PROGRESS and job.worker_id == worker.id


def _why_not_holder(job: JobModel, worker: WorkerModel) -> str:
    if job.status == JobStatus.IN_PROGRESS:
        return f"the job is held by worker {job.worker_id}, which took it after this worker's lease expired"
    if job.status == JobStatus.IN_QUEUE:
        return "the job went back to the queue after this worker's lease expired"
    if job.worker_id != worker.id:
        return f"the job is {job.status.value}, run by worker {job.worker_id or 'none'}"
    return f"the job is already {job.status.value}"


async def done(context: ServerContext, worker: WorkerModel, job_id: str, post: WorkerPost) -> None:
    """Record the holder's result, or its progress update (see the module docstring); Conflict when the worker does
    not hold the job."""
    if post.progress:
        await progress(context, worker, job_id, post.output)
        return
    status, output_json, error = _outcome(post)
    for _ in range(RETRIES):
        now = utcnow()
        try:
            async with context.db.write() as session:
                job = await _job(session, worker, job_id)
                webhook = bool(job.webhook)
                ended = _holds(job, worker)
                if ended:
                    await jobs.finish(session, job, status, output_json=output_json, error=error, now=now)
                    refused = ""
                    if post.stop_pod:
                        await _drain(session, worker.id, f"it asked to be replaced after job {job_id} (refresh_worker)")
                elif job.worker_id == worker.id and job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
                    return  # the same result again: the SDK retried a post whose answer it lost
                elif job.worker_id == worker.id and job.status in (JobStatus.CANCELLED, JobStatus.TIMED_OUT):
                    # Cancelled or timed out while this worker ran it: the worker did nothing wrong, so it gets
                    # 200 (a 409 would only make the SDK retry and log errors); the result is dropped, and said so.
                    dropped = f"late result of worker {worker.id} dropped: the job was already {job.status.value}"
                    job.history = [*job.history, {"note": dropped, "at": now.isoformat()}]
                    refused = ""
                else:
                    refused = _why_not_holder(job, worker)
                    note = {"note": f"result of worker {worker.id} ignored: {refused}", "at": now.isoformat()}
                    job.history = [*job.history, note]
        except StaleDataError:
            continue
        if refused:
            raise Conflict(f"result not recorded: {refused}")
        if ended:
            job_metrics(context.registry).ended(worker.endpoint_id, status)
        context.job_signals.notify_changed(job_id)
        if webhook:
            context.wake(LoopName.JOB_WEBHOOKS)
        if post.stop_pod:
            context.wake(LoopName.ENDPOINTS)
        return
    raise Unavailable(f"job {job_id} kept changing while its result was recorded; post it again")


async def progress(context: ServerContext, worker: WorkerModel, job_id: str, value: Any) -> None:
    """Show the holder's progress `value` as the running job's `output` (RunPod's `status` shows it so) until the
    result replaces it. One conditional write that leaves the row's version alone: a concurrent result or cancel
    loaded before it still applies, and one committed before it makes it a no-op. An update that arrives after the
    worker's own job ended (the SDKs post it from a thread of its own, so it may overtake nothing or come late) is
    dropped quietly; one from another worker is a Conflict, as its result would be."""
    value_json = json.dumps(value, ensure_ascii=False)
    async with context.db.write() as session:
        result = await session.execute(
            update(JobModel)
            .where(
                JobModel.id == job_id,
                JobModel.endpoint_id == worker.endpoint_id,
                JobModel.worker_id == worker.id,
                JobModel.status == JobStatus.IN_PROGRESS,
            )
            .values(output=value_json)
            .execution_options(synchronize_session=False)
        )
        if int(getattr(result, "rowcount", 0)):
            return
        job = await _job(session, worker, job_id)
        if job.worker_id == worker.id and job.status.final:
            return
        refused = _why_not_holder(job, worker)
    raise Conflict(f"progress not recorded: {refused}")


async def _drain(session: AsyncSession, worker_id: str, why: str) -> None:
    row = await session.get(WorkerModel, worker_id, populate_existing=True)
    if row is None or row.drain or row.status not in TAKING:
        return
    if await guarded_update(
        session, WorkerModel, row.id, row.version, status=WorkerStatus.DRAINING, drain=True, reason=f"draining: {why}"
    ):
        events.record(
            session,
            org_id=row.org_id,
            object_kind=KIND_ENDPOINT,
            object_id=row.endpoint_id,
            type="WorkerDraining",
            message=f"worker {row.id}: {why}",
        )


async def stream(context: ServerContext, worker: WorkerModel, job_id: str, post: WorkerPost) -> int:
    """Append the holder's partial output (`{"output": ...}`); its sequence number. Conflict for a non-holder."""
    if not post.has_output:
        raise BadRequest("a stream part is a JSON object with `output`")
    part = json.dumps(post.output, ensure_ascii=False)
    for _ in range(RETRIES):
        try:
            async with context.db.write() as session:
                job = await _job(session, worker, job_id)
                if not _holds(job, worker):
                    refused = _why_not_holder(job, worker)
                    break
                last = await session.scalar(select(func.max(JobStreamModel.seq)).where(JobStreamModel.job_id == job_id))
                seq = 0 if last is None else last + 1
                session.add(JobStreamModel(job_id=job_id, seq=seq, output=part))
        except IntegrityError:  # a concurrent part took the number
            continue
        context.job_signals.notify_changed(job_id)
        return seq
    else:
        raise Unavailable(f"job {job_id} kept changing while its stream part was stored; post it again")
    raise Conflict(f"stream part not recorded: {refused}")


# -- ping and job-stop ------------------------------------------------------------------------------------------


def job_ids(values: Iterable[str]) -> list[str]:
    """The `job_id` query values: one comma-separated list (the SDKs) or the parameter repeated."""
    return [job_id for value in values for job_id in value.split(",") if job_id]


async def ping(
    context: ServerContext, worker: WorkerModel, held: list[str], *, unhealthy: tuple[str, str] | None = None
) -> int:
    """Renew the leases of the listed jobs the worker holds; how many were renewed. The jobs it holds and no longer
    lists lost their result (`_results_lost`). `unhealthy` (check, reason) is runpod's report of a failed start-up
    fitness check, recorded as an event (the worker exits next)."""
    now = utcnow()
    async with context.db.write() as session:
        renewed = 0
        if held:
            result = await session.execute(
                update(JobModel)
                .where(
                    JobModel.id.in_(held),
                    JobModel.endpoint_id == worker.endpoint_id,
                    JobModel.worker_id == worker.id,
                    JobModel.status == JobStatus.IN_PROGRESS,
                    JobModel.lease_expires_at > now,
                )
                .values(lease_expires_at=now + timedelta(seconds=context.settings.job_lease_seconds))
                .execution_options(synchronize_session=False)
            )
            renewed = int(getattr(result, "rowcount", 0))
        lost = await _results_lost(session, context.settings, worker, held, now)
        if unhealthy is not None:
            check, reason = unhealthy
            events.record(
                session,
                org_id=worker.org_id,
                object_kind=KIND_ENDPOINT,
                object_id=worker.endpoint_id,
                type="WorkerUnhealthy",
                message=f"worker {worker.id}: its start-up fitness check {check} failed: {reason}",
            )
    signals = context.job_signals
    for job_id, status, webhook in lost:
        if status == JobStatus.IN_QUEUE:
            signals.notify_queued(worker.endpoint_id)
        else:
            job_metrics(context.registry).ended(worker.endpoint_id, status)
            signals.notify_changed(job_id)
            if webhook:
                context.wake(LoopName.JOB_WEBHOOKS)
    return renewed


async def _results_lost(
    session: AsyncSession, settings: Settings, worker: WorkerModel, held: list[str], now: datetime
) -> list[tuple[str, JobStatus, bool]]:
    """End the attempts of the jobs `worker` holds but no longer lists in its ping, as (job, new status, has a
    webhook): back to the queue, or FAILED after `job_max_attempts` (`jobs.lost_attempt_values`).

    Both SDKs list every job they run in each ping and drop a job from the list only once their post of its result
    is over, answered or failed (runpod `rp_scale.handle_job`, ppio-gpus `scale._handle_job`). So a held job that a
    ping leaves out was finished and its result never reached the server: the post failed (the SDK logs "Failed to
    return job results"; a synchronous handler that outlasts the server's keep-alive loses its pooled connection
    so). Waiting out the lease would only delay the same re-queue and name it "lease expired"; this ends the attempt
    at the worker's next ping and says what happened. Only attempts started at least one ping interval before are
    judged: a ping's list is read when it is sent, so one that left just as the worker took a job does not list it
    yet."""
    judged_before = now - timedelta(milliseconds=ping_interval_ms(settings))
    query = (
        select(JobModel)
        .options(defer(JobModel.input), defer(JobModel.output))
        .where(
            JobModel.endpoint_id == worker.endpoint_id,
            JobModel.status == JobStatus.IN_PROGRESS,
            JobModel.worker_id == worker.id,
            JobModel.started_at <= judged_before,
        )
    )
    if held:
        query = query.where(JobModel.id.not_in(held))
    outcome = f"result lost: worker {worker.id} finished the job but its result never reached the server"
    lost: list[tuple[str, JobStatus, bool]] = []
    for job in list(await session.scalars(query)):
        values = jobs.lost_attempt_values(job, outcome, now=now, max_attempts=settings.job_max_attempts)
        if await guarded_update(session, JobModel, job.id, job.version, **values):
            log.warning("job %s of endpoint %s: %s; now %s", job.id, job.endpoint_id, outcome, values["status"])
            lost.append((job.id, values["status"], bool(job.webhook)))
    return lost


async def stop_signals(context: ServerContext, worker: WorkerModel) -> list[str]:
    """The ids of the jobs the worker must stop, each answered once; empty after `job_take_wait_seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + context.settings.job_take_wait_seconds
    while True:
        # Watched before the read: a job flagged while the read runs wakes the wait below at once.
        with context.job_signals.watch_worker(worker.id) as flagged:
            try:
                stop = await _stops_now(context, worker)
            except StaleDataError:  # a flagged job changed under the write: read again while there is time
                stop = []
                if loop.time() < deadline:
                    continue
            if stop:
                for job_id in stop:
                    context.job_signals.notify_changed(job_id)
                return stop
            left = deadline - loop.time()
            if left <= 0:
                return []
            await flagged.wait(left)


async def _stops_now(context: ServerContext, worker: WorkerModel) -> list[str]:
    """The jobs to stop, now cleared of their flag. A flagged job was already made CANCELLED or TIMED_OUT by
    whoever flagged it (services/job_requests.py, reconcilers/jobs.py), who then notified the worker."""
    async with context.db.write() as session:
        flagged = list(
            await session.scalars(
                select(JobModel).where(
                    JobModel.endpoint_id == worker.endpoint_id,
                    JobModel.worker_id == worker.id,
                    JobModel.cancel_requested.is_(True),
                )
            )
        )
        for job in flagged:
            job.cancel_requested = False
    return [job.id for job in flagged]


async def held_jobs(session: AsyncSession, worker_id: str) -> int:
    """How many jobs the worker holds now (a draining async worker is retired once it holds none)."""
    count = await session.scalar(
        select(func.count())
        .select_from(JobModel)
        .where(JobModel.worker_id == worker_id, JobModel.status == JobStatus.IN_PROGRESS)
    )
    return int(count or 0)
