"""The job reaper over a real database: lost leases requeue (then FAIL once attempts run out, with the
history), execution timeouts, lifetimes (`ttl`) and result purges. Webhook deliveries are their own pool's
(test_job_webhooks.py)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import runpod  # type: ignore[import-untyped]
from sqlalchemy import select, update

from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.core.status import JobStatus, WebhookState
from dockyard.db.base import utcnow
from dockyard.db.models import JobModel, JobStreamModel
from dockyard.reconcilers.jobs import JobReaper
from tests.api.test_jobs import ASYNC_ENDPOINT, finish, job_routes, job_row, make_endpoint, must_job, submit, take
from tests.conftest import ADMIN_TOKEN, Harness
from tests.fakes import FakeRuntime
from tests.live import serving
from tests.servers import new_key, wait_for

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
        "no result arrived in 2 attempts: attempt 1 on worker w1: lease expired on worker w1; "
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
    job_id = await submit(client, endpoint_id, {"input": 1, "policy": {"executionTimeout": 5000}})
    await take(harness, endpoint_id, "w1")
    await set_job(harness, job_id, started_at=utcnow() - timedelta(seconds=6))
    signals = harness.context.job_signals
    with signals.watch_changed(job_id) as changed, signals.watch_worker("w1") as told:
        await reaper.reconcile_once()
        assert await changed.wait(0)
        assert await told.wait(0)  # its worker's held job-stop poll is woken
    row = await must_job(harness, job_id)
    assert (row.status, row.cancel_requested) == (JobStatus.TIMED_OUT, True)
    assert row.error == "ran past its execution timeout of 5 s on worker w1"
    assert row.history[-1]["outcome"] == "timed out"


async def test_a_job_past_its_ttl_is_timed_out_queued_or_running(
    harness: Harness, client: httpx.AsyncClient, reaper: JobReaper
) -> None:
    endpoint_id = await make_endpoint(client)
    body = {"input": 1, "policy": {"ttl": 10_000}}
    running, queued, alive = [await submit(client, endpoint_id, body) for _ in range(3)]
    assert (await take(harness, endpoint_id, "w1")) is not None
    past = utcnow() - timedelta(seconds=1)
    for job_id in (running, queued):
        await set_job(harness, job_id, expires_at=past)
    assert await take(harness, endpoint_id, "w2") is not None  # the live one, not the expired one before it
    signals = harness.context.job_signals
    with signals.watch_changed(queued) as changed, signals.watch_worker("w1") as told:
        await reaper.reconcile_once()
        assert await changed.wait(0)
        assert await told.wait(0)
    row = await must_job(harness, queued)
    assert (row.status, row.attempts) == (JobStatus.TIMED_OUT, 0)
    assert row.error == "expired in the queue: no worker took it within its ttl of 10 s from submission"
    row = await must_job(harness, running)
    assert (row.status, row.cancel_requested) == (JobStatus.TIMED_OUT, True)
    assert row.error == "expired: its ttl of 10 s from submission ran out while worker w1 ran it"
    assert (await must_job(harness, alive)).status == JobStatus.IN_PROGRESS


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


def test_the_runpod_client_sees_a_job_no_worker_took_within_its_ttl_timed_out(tmp_path: Path) -> None:
    # RunPod's `policy.ttl` is the job's whole life from submission: an endpoint with no worker never runs it, and the
    # client reads it TIMED_OUT once the ttl (at least 10 s) has run out, with the reason.
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'live.db'}",
        admin_token=ADMIN_TOKEN,
        public_address="127.0.0.1",
        engine_url="unix:///nonexistent.sock",
        job_reap_interval=0.2,
    )
    app = create_app(settings, runtime_factory=lambda idc, context: FakeRuntime())
    with serving(app) as url:
        key = new_key(url, "ttl")
        no_workers = {**ASYNC_ENDPOINT, "worker_config": {"max_replicas": 0}}
        created = httpx.post(f"{url}/gpus/v2/endpoints", json=no_workers, headers={"Authorization": key})
        assert created.status_code == 200, created.text
        endpoint = runpod.Endpoint(created.json()["id"], api_key=key)
        endpoint.rp_client.endpoint_url_base = f"{url}/v2"
        with pytest.raises(requests.HTTPError, match="422"):
            endpoint.run({"input": {"n": 0}, "policy": {"ttl": 9_999}})  # under RunPod's minimum

        submitted = time.monotonic()
        job = endpoint.run({"input": {"n": 1}, "policy": {"ttl": 10_000}})
        assert job.status() == "IN_QUEUE"
        wait_for("the job to expire", lambda: job.status() != "IN_QUEUE", deadline=30)
        assert time.monotonic() - submitted >= 9.5
        state = job._fetch_job()
        assert state["status"] == "TIMED_OUT"
        assert state["error"] == "expired in the queue: no worker took it within its ttl of 10 s from submission"
