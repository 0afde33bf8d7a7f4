"""The job reaper over a real database: lost leases requeue (then FAIL once attempts run out, with the
history), execution timeouts and TTL purges. Webhook deliveries are their own pool's (test_job_webhooks.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from dockyard.core.status import JobStatus, WebhookState
from dockyard.db.base import utcnow
from dockyard.db.models import JobModel, JobStreamModel
from dockyard.reconcilers.jobs import JobReaper
from tests.api.test_jobs import finish, job_routes, job_row, make_endpoint, must_job, submit, take
from tests.conftest import Harness

__all__ = ["job_routes"]  # the API tests' autouse fixture, so that `run` is served here too


@pytest.fixture
def reaper(harness: Harness) -> JobReaper:
    return JobReaper(harness.context)


async def set_job(harness: Harness, job_id: str, **values: Any) -> None:
    async with harness.context.db.write() as session:
        await session.execute(update(JobModel).where(JobModel.id == job_id).values(**values))


async def test_lost_lease_requeues_then_fails_when_attempts_run_out(
    harness: Harness, client: httpx.AsyncClient, reaper: JobReaper
) -> None:
    harness.context.settings.job_max_attempts = 2
    endpoint_id = await make_endpoint(client)
    job_id = await submit(client, endpoint_id)
    for attempt, worker in enumerate(("w1", "w2"), start=1):
        assert (await take(harness, endpoint_id, worker)) is not None
        await set_job(harness, job_id, lease_expires_at=utcnow() - timedelta(seconds=1))
        with harness.context.job_signals.watch_queued(endpoint_id) as queued:
            await reaper.reconcile_once()
            requeued = await queued.wait(0)
        row = await must_job(harness, job_id)
        assert row.history[-1]["outcome"] == f"lease expired on worker {worker}"
        if attempt == 1:
            assert (row.status, row.worker_id, row.lease_expires_at) == (JobStatus.IN_QUEUE, "", None)
            assert requeued is True
        else:
            assert requeued is False  # out of attempts: failed, not queued again
    row = await must_job(harness, job_id)
    assert row.status == JobStatus.FAILED
    assert row.error == (
        "no worker finished it in 2 attempts: attempt 1 on worker w1: lease expired on worker w1; "
        "attempt 2 on worker w2: lease expired on worker w2"
    )
    assert row.expires_at is not None
    assert await take(harness, endpoint_id) is None


async def test_live_lease_is_left_alone(harness: Harness, client: httpx.AsyncClient, reaper: JobReaper) -> None:
    endpoint_id = await make_endpoint(client)
    job_id = await submit(client, endpoint_id)
    await take(harness, endpoint_id)
    before = await must_job(harness, job_id)
    await reaper.reconcile_once()
    after = await must_job(harness, job_id)
    assert (after.status, after.version) == (JobStatus.IN_PROGRESS, before.version)


async def test_execution_timeout(harness: Harness, client: httpx.AsyncClient, reaper: JobReaper) -> None:
    endpoint_id = await make_endpoint(client)
    job_id = await submit(client, endpoint_id, {"input": 1, "policy": {"executionTimeout": 2000}})
    await take(harness, endpoint_id, "w1")
    await set_job(harness, job_id, started_at=utcnow() - timedelta(seconds=3))
    signals = harness.context.job_signals
    with signals.watch_changed(job_id) as changed, signals.watch_worker("w1") as told:
        await reaper.reconcile_once()
        assert await changed.wait(0)
        assert await told.wait(0)  # its worker's held job-stop poll is woken
    row = await must_job(harness, job_id)
    assert (row.status, row.cancel_requested) == (JobStatus.TIMED_OUT, True)
    assert row.error == "ran past its execution timeout of 2 s on worker w1"
    assert row.history[-1]["outcome"] == "timed out"


async def test_ttl_purge(harness: Harness, client: httpx.AsyncClient, reaper: JobReaper) -> None:
    endpoint_id = await make_endpoint(client)
    expired, fresh, hooked, queued = [await submit(client, endpoint_id) for _ in range(4)]
    for job_id in (expired, fresh, hooked):
        await take(harness, endpoint_id)
        await finish(harness, job_id, JobStatus.COMPLETED, output=1)
    async with harness.context.db.write() as session:
        session.add(JobStreamModel(job_id=expired, seq=0, output="1"))
    past = utcnow() - timedelta(seconds=1)
    await set_job(harness, expired, expires_at=past)
    await set_job(harness, hooked, expires_at=past, webhook="http://127.0.0.1:9/", webhook_state=WebhookState.PENDING)
    await set_job(harness, hooked, webhook_next_at=utcnow() + timedelta(hours=1))
    await set_job(harness, queued, expires_at=past)  # not finished: never purged
    await reaper.reconcile_once()
    assert await job_row(harness, expired) is None
    async with harness.context.db.read() as session:
        assert list(await session.scalars(select(JobStreamModel).where(JobStreamModel.job_id == expired))) == []
    for job_id in (fresh, hooked, queued):
        assert await job_row(harness, job_id) is not None
