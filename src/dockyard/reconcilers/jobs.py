"""The job reaper: what keeps async jobs moving when nobody calls (docs/architecture.md).

Each pass, in order:
1. Running jobs past their execution timeout (the job's `executionTimeout`, counted from the attempt's start)
   become TIMED_OUT with `cancel_requested`, so the worker side tells their worker to stop; so do jobs, queued or
   running, past the end of their lifetime (their `ttl` from submission): a queued one never runs.
2. Running jobs whose lease expired (their worker stopped pinging: it died or lost the network) go back to
   the queue, their attempt closed as "lease expired on worker W" (at-least-once delivery); a job that has
   been taken `job_max_attempts` times FAILS instead, its error naming every attempt.
3. Finished jobs past `expires_at` are deleted with their stream parts, unless their webhook is still due.
4. The queue's gauges are set: each endpoint's queued jobs and the age of its oldest (job_queue/metrics.py).

Every step is load → decide outside any transaction → guarded apply (`guarded_update` on the version loaded),
so a job that a worker or a client changed meanwhile is left alone and judged afresh next pass. Webhooks are
not the reaper's: their own pool delivers them (reconcilers/job_webhooks.py), which a job finished here wakes,
so no receiver, however slow, delays a timeout or a lease.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import defer

from dockyard.context import ServerContext
from dockyard.core.loops import LoopName
from dockyard.core.status import JobStatus, WebhookState
from dockyard.db.base import guarded_update, utcnow
from dockyard.db.models import JobModel
from dockyard.job_queue.metrics import job_metrics
from dockyard.services.jobs import (
    JobColumns,
    execution_deadline,
    expired,
    expiry_values,
    finish_values,
    lost_attempt_values,
)

log = logging.getLogger(__name__)


class JobReaper:
    name = LoopName.JOBS

    def __init__(self, context: ServerContext, interval: float | None = None) -> None:
        self.context = context
        self.interval = interval if interval is not None else context.settings.job_reap_interval
        self._metrics = job_metrics(context.registry)

    async def reconcile_once(self) -> None:
        await self._running(utcnow())
        await self._purge(utcnow())
        await self._export(utcnow())

    async def _export(self, now: datetime) -> None:
        """The queue gauges (job_queue/metrics.py): every endpoint with a queued job, the others' taken away."""
        async with self.context.db.read() as session:
            rows = (
                await session.execute(
                    select(JobModel.endpoint_id, func.count(), func.min(JobModel.created_at))
                    .where(JobModel.status == JobStatus.IN_QUEUE)
                    .group_by(JobModel.endpoint_id)
                )
            ).all()
        self._metrics.queued.clear()
        self._metrics.oldest_queued.clear()
        for endpoint_id, count, oldest in rows:
            self._metrics.queued.labels(endpoint_id).set(count)
            self._metrics.oldest_queued.labels(endpoint_id).set(max(0.0, (now - oldest).total_seconds()))

    async def _running(self, now: datetime) -> None:
        """Steps 1 and 2: timeouts first, since a job both late and unpinged ran out of time by its own fault."""
        expired_queued = and_(JobModel.status == JobStatus.IN_QUEUE, JobModel.expires_at <= now)
        async with self.context.db.read() as session:
            jobs = list(
                await session.scalars(
                    select(JobModel)
                    .options(defer(JobModel.input), defer(JobModel.output))
                    .where(or_(JobModel.status == JobStatus.IN_PROGRESS, expired_queued))
                )
            )
        settings = self.context.settings
        decided: list[tuple[JobModel, JobColumns]] = []
        for job in jobs:
            deadline = execution_deadline(job, settings)
            if deadline is not None and deadline <= now:
                limit = (deadline - job.started_at).total_seconds() if job.started_at else 0
                error = f"ran past its execution timeout of {limit:g} s on worker {job.worker_id}"
                values = finish_values(job, JobStatus.TIMED_OUT, error=error, now=now, outcome="timed out")
                decided.append((job, {**values, "cancel_requested": True}))
            elif expired(job, now):
                decided.append((job, expiry_values(job, now=now)))
            elif job.lease_expires_at is not None and job.lease_expires_at <= now:
                outcome = f"lease expired on worker {job.worker_id}"
                values = lost_attempt_values(job, outcome, now=now, max_attempts=settings.job_max_attempts)
                decided.append((job, values))
        if not decided:
            return
        changed: list[str] = []
        flagged: set[str] = set()  # workers told to stop a job they hold
        requeued: set[str] = set()
        wake = False
        async with self.context.db.write() as session:
            for job, values in decided:
                if not await guarded_update(session, JobModel, job.id, job.version, **values):
                    continue
                log.info("job %s of endpoint %s: %s", job.id, job.endpoint_id, values["status"])
                if values["status"] == JobStatus.IN_QUEUE:
                    requeued.add(job.endpoint_id)
                else:
                    changed.append(job.id)
                    self._metrics.ended(job.endpoint_id, values["status"])
                    wake = wake or bool(job.webhook)
                    if values.get("cancel_requested") and job.worker_id:
                        flagged.add(job.worker_id)
        signals = self.context.job_signals
        for job_id in changed:
            signals.notify_changed(job_id)
        for worker_id in flagged:
            signals.notify_worker(worker_id)
        for endpoint_id in requeued:
            signals.notify_queued(endpoint_id)
        if wake:
            self.context.wake(LoopName.JOB_WEBHOOKS)

    async def _purge(self, now: datetime) -> None:
        """Step 3; the delete's own conditions guard it (a job retried meanwhile is no longer final)."""
        async with self.context.db.write() as session:
            await session.execute(
                delete(JobModel).where(
                    JobModel.expires_at <= now,
                    JobModel.status.in_([status for status in JobStatus if status.final]),
                    JobModel.webhook_state != WebhookState.PENDING,
                )
            )
