"""An async job's life cycle, shared by the client API (services/job_requests.py), the worker webhooks and the
job reaper (reconcilers/jobs.py), so that every side moves a `JobModel` through its states the same way.

A job is IN_QUEUE when committed, IN_PROGRESS while a worker holds it under a lease its pings renew, and
ends COMPLETED, FAILED, CANCELLED or TIMED_OUT. Every transition here is a pure computation of column values
from the row as loaded (`*_values`), so the same rule serves two kinds of writer:
- request handlers, which hold the row in their session and let the ORM's version counter guard the write
  (`finish`, `start_attempt` set the values on the row);
- the reaper, which loads, decides outside any transaction, and applies with `guarded_update` (a row changed
  meanwhile is left for its next pass).

`history` holds one record per attempt, `{"attempt", "worker_id", "started_at", "finished_at", "outcome"}`
(times ISO 8601), plus `{"retried_at"}` marks where a client sent the job back (and the worker side's
`{"note", "at"}` remarks). A record is opened (`finished_at` null) when a worker takes the job and closed when
the attempt ends; a record that no writer opened is appended closed, so the history stays complete. The column
is plain JSON, so every change assigns a new list (an in-place mutation would not be seen by the ORM).

The job row carries its effective execution timeout, lifetime (`ttl`) and result retention (`keep_ms`), resolved at
submission from the job's policy or the settings, so finishing a job needs no settings. `expires_at` is the end of
the job's lifetime until it finishes (the reaper times it out then, and no worker takes it after), and when it is
purged once finished.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, TypedDict

from sqlalchemy import ColumnElement, Row, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.config import Settings
from dockyard.core.status import JobStatus, WebhookState
from dockyard.db.models import JobModel
from dockyard.schemas.jobs import JobViewBody

_DEFAULT_KEEP_SECONDS = float(Settings.model_fields["job_ttl_seconds"].default)


class JobColumns(TypedDict, total=False):
    """The columns of a `JobModel` that one transition sets, by name, with their new values: internal, never on
    the wire. A typed mapping rather than a dataclass because it is applied as it is, as the keyword arguments of
    `guarded_update` or `update(JobModel).values(...)` and by `setattr` on a loaded row, with no conversion on the
    take and finish paths."""

    status: JobStatus
    output: str | None
    error: str
    worker_id: str
    lease_expires_at: datetime | None
    attempts: int
    retried: int
    history: list[dict[str, Any]]
    cancel_requested: bool
    started_at: datetime | None
    finished_at: datetime | None
    delay_ms: int
    execution_ms: int
    expires_at: datetime | None
    webhook_state: WebhookState
    webhook_attempts: int
    webhook_next_at: datetime | None
    webhook_error: str


def _ms(later: datetime, earlier: datetime | None) -> int:
    return max(0, int((later - earlier).total_seconds() * 1000)) if earlier is not None else 0


def _open_record(job: JobModel) -> int | None:
    """The index in `history` of the attempt in progress, if a writer opened its record."""
    for index in range(len(job.history) - 1, -1, -1):
        record = job.history[index]
        if "attempt" in record:
            return index if record["attempt"] == job.attempts and not record.get("finished_at") else None
    return None


def closed_history(job: JobModel, outcome: str, now: datetime) -> list[dict[str, Any]]:
    """`job.history` with the current attempt closed as `outcome` (a new list; the row is not changed)."""
    ended = {"finished_at": now.isoformat(), "outcome": outcome}
    if (index := _open_record(job)) is not None:
        return [*job.history[:index], {**job.history[index], **ended}, *job.history[index + 1 :]]
    started = job.started_at.isoformat() if job.started_at else None
    record = {"attempt": job.attempts, "worker_id": job.worker_id, "started_at": started}
    return [*job.history, {**record, **ended}]


def history_summary(history: list[dict[str, Any]]) -> str:
    """`attempt 1 on worker W: lease expired; attempt 2 ...`: the attempts in words, for an error message."""
    parts = [
        f"attempt {record['attempt']} on worker {record.get('worker_id') or '?'}: {record.get('outcome') or 'running'}"
        for record in history
        if "attempt" in record
    ]
    return "; ".join(parts) or "no attempt recorded"


def _keep_ms(job: JobModel) -> int:
    """How long the finished job is kept: its own, or the default for a row from before it carried one."""
    return job.keep_ms if job.keep_ms > 0 else int(_DEFAULT_KEEP_SECONDS * 1000)


def takeable(now: datetime) -> ColumnElement[bool]:
    """The condition a queued job must meet to be taken at `now`: its lifetime has not run out."""
    return or_(JobModel.expires_at.is_(None), JobModel.expires_at > now)


def execution_deadline(job: JobModel, settings: Settings) -> datetime | None:
    """When the running attempt times out: its start plus the job's execution timeout (or the setting's)."""
    if job.started_at is None:
        return None
    timeout_ms = job.execution_timeout_ms or int(settings.job_execution_timeout_seconds * 1000)
    return job.started_at + timedelta(milliseconds=timeout_ms)


def expired(job: JobModel, now: datetime) -> bool:
    """Whether the unfinished `job`'s lifetime (its `ttl` from submission) has run out at `now`."""
    return not job.status.final and job.expires_at is not None and job.expires_at <= now


def expiry_values(job: JobModel, *, now: datetime) -> JobColumns:
    """The column values that end an `expired` job as TIMED_OUT, as RunPod's "expired before it was picked up by a
    worker": a queued one is discarded and never runs; a running one is flagged, so its worker is told to stop."""
    ttl = f"{job.ttl_ms / 1000:g} s"
    if job.status == JobStatus.IN_QUEUE:
        error = f"expired in the queue: no worker took it within its ttl of {ttl} from submission"
        return finish_values(job, JobStatus.TIMED_OUT, error=error, now=now)
    error = f"expired: its ttl of {ttl} from submission ran out while worker {job.worker_id} ran it"
    values = finish_values(job, JobStatus.TIMED_OUT, error=error, now=now, outcome="expired (ttl)")
    return {**values, "cancel_requested": True}


def finish_values(
    job: JobModel,
    status: JobStatus,
    *,
    output_json: str | None = None,
    error: str = "",
    now: datetime,
    outcome: str = "",
) -> JobColumns:
    """The column values that end `job` as `status` (a final one) at `now`.

    Sets output (JSON text, or None) and error, `finished_at`, `execution_ms` (from the attempt's start; 0 for
    a job that never ran), `expires_at` (now + how long it is kept), drops the lease, and schedules the webhook
    (PENDING, due now) when the job has one. A job that was taken gets its current attempt closed in `history`
    (`outcome`, default the status in lower case); a queued one never ran and gets no record.
    """
    if not status.final:
        raise ValueError(f"{status} is not a final status")
    values: JobColumns = {
        "status": status,
        "output": output_json,
        "error": error,
        "finished_at": now,
        "execution_ms": _ms(now, job.started_at) if job.status == JobStatus.IN_PROGRESS else 0,
        "expires_at": now + timedelta(milliseconds=_keep_ms(job)),
        "lease_expires_at": None,
        "webhook_state": WebhookState.PENDING if job.webhook else WebhookState.NONE,
        "webhook_attempts": 0,
        "webhook_next_at": now if job.webhook else None,
        "webhook_error": "",
    }
    if job.status == JobStatus.IN_PROGRESS:
        values["history"] = closed_history(job, outcome or status.value.lower(), now)
    return values


def _apply(job: JobModel, values: JobColumns) -> None:
    for name, value in values.items():
        setattr(job, name, value)


async def finish(
    session: AsyncSession,
    job: JobModel,
    status: JobStatus,
    *,
    output_json: str | None = None,
    error: str = "",
    now: datetime,
) -> None:
    """End `job` (a row of `session`) as `status`; see `finish_values`. Flushes; the caller commits, then calls
    `context.job_signals.notify_changed(job.id)` and, when `job.webhook`, `context.wake(LoopName.JOB_WEBHOOKS)`.

    The flush is guarded by the row's version: a job changed since it was loaded raises `StaleDataError`.
    """
    _apply(job, finish_values(job, status, output_json=output_json, error=error, now=now))
    await session.flush()


def start_attempt_values(job: JobModel, worker_id: str, *, now: datetime, lease_seconds: float) -> JobColumns:
    """The column values with which `worker_id` takes the queued `job` at `now`: IN_PROGRESS under a lease of
    `lease_seconds`, `attempts` + 1, `delay_ms` from when it last entered the queue, an open history record."""
    queued_since = job.created_at
    for record in job.history:
        for key in ("finished_at", "retried_at"):
            if record.get(key):
                queued_since = max(queued_since, datetime.fromisoformat(record[key]))
    attempt = job.attempts + 1
    record = {"attempt": attempt, "worker_id": worker_id, "started_at": now.isoformat()}
    return {
        "status": JobStatus.IN_PROGRESS,
        "worker_id": worker_id,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "attempts": attempt,
        "started_at": now,
        "delay_ms": _ms(now, queued_since),
        "cancel_requested": False,
        "history": [*job.history, {**record, "finished_at": None, "outcome": ""}],
    }


async def claim_next(
    session: AsyncSession, endpoint_id: str, worker_id: str, *, now: datetime, lease_seconds: float
) -> JobModel | None:
    """Take the oldest queued job of `endpoint_id` for `worker_id`, or None when the queue is empty.

    Run it in a write session and commit. On PostgreSQL the row is locked with SKIP LOCKED, so concurrent
    takers each get a different job without waiting; on SQLite the write session's `BEGIN IMMEDIATE` already
    serializes them. Either way the version-guarded flush makes a double take impossible.
    """
    query = (
        select(JobModel)
        .where(JobModel.endpoint_id == endpoint_id, JobModel.status == JobStatus.IN_QUEUE, takeable(now))
        .order_by(JobModel.created_at, JobModel.id)
        .limit(1)
    )
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)
    job = await session.scalar(query)
    if job is None:
        return None
    _apply(job, start_attempt_values(job, worker_id, now=now, lease_seconds=lease_seconds))
    await session.flush()
    return job


def requeue_values(job: JobModel, outcome: str, *, now: datetime) -> JobColumns:
    """The column values that put an IN_PROGRESS `job` back in the queue after its attempt ended as `outcome`
    (the worker stopped pinging); the caller notifies `notify_queued(job.endpoint_id)` after committing. A
    progress value the lost attempt reported (shown as `output` while it ran) goes with it."""
    return {
        "status": JobStatus.IN_QUEUE,
        "worker_id": "",
        "lease_expires_at": None,
        "started_at": None,
        "cancel_requested": False,
        "output": None,
        "history": closed_history(job, outcome, now),
    }


def lost_attempt_values(job: JobModel, outcome: str, *, now: datetime, max_attempts: int) -> JobColumns:
    """The column values for an IN_PROGRESS `job` whose attempt ended as `outcome` without a result (its lease
    expired, or its worker finished it and the result never arrived): back to the queue (at least once), or FAILED
    once it has been taken `max_attempts` times, its error naming every attempt. The caller notifies as for
    `requeue_values` or `finish_values`, by the status the values set."""
    if job.attempts < max_attempts:
        return requeue_values(job, outcome, now=now)
    history = closed_history(job, outcome, now)
    error = f"no result arrived in {job.attempts} attempts: {history_summary(history)}"
    return finish_values(job, JobStatus.FAILED, error=error, now=now, outcome=outcome)


def retry_values(job: JobModel, *, now: datetime) -> JobColumns:
    """The column values that send a finished `job` back to the queue for a client's `retry`: a fresh set of
    attempts and a fresh lifetime from now (a resubmission), the result and its webhook cleared, the history kept
    and marked."""
    return {
        "status": JobStatus.IN_QUEUE,
        "retried": job.retried + 1,
        "attempts": 0,
        "output": None,
        "error": "",
        "worker_id": "",
        "lease_expires_at": None,
        "started_at": None,
        "finished_at": None,
        "delay_ms": 0,
        "execution_ms": 0,
        "expires_at": now + timedelta(milliseconds=job.ttl_ms) if job.ttl_ms > 0 else None,
        "cancel_requested": False,
        "webhook_state": WebhookState.NONE,
        "webhook_attempts": 0,
        "webhook_next_at": None,
        "webhook_error": "",
        "history": [*job.history, {"retried_at": now.isoformat()}],
    }


# The columns `job_view` reads, for a point read that selects no more (services/job_requests.py).
VIEW_COLUMNS = (
    JobModel.id,
    JobModel.status,
    JobModel.delay_ms,
    JobModel.execution_ms,
    JobModel.output,
    JobModel.error,
    JobModel.history,
    JobModel.worker_id,
)


def job_view(job: JobModel | Row[Any], streams: list[str] | None = None) -> JobViewBody:
    """The status JSON the clients parse, of a job or of a row of its `VIEW_COLUMNS`: `{id, status, delayTime,
    executionTime}` plus, when they apply, `output` (a finished job's result), `error`, `retries` (runs beyond
    the first), `workerId`, and `stream` (`[{"output": part}, ...]` from the given JSON texts, for
    `stream/{id}`)."""
    view: JobViewBody = {
        "id": job.id,
        "status": job.status.value,
        "delayTime": job.delay_ms,
        "executionTime": job.execution_ms,
    }
    if job.output is not None:
        view["output"] = json.loads(job.output)
    if job.error:
        view["error"] = job.error
    runs = sum(1 for record in job.history if "attempt" in record)
    if runs > 1:
        view["retries"] = runs - 1
    if job.worker_id:
        view["workerId"] = job.worker_id
    if streams is not None:
        view["stream"] = [{"output": json.loads(part)} for part in streams]
    return view
