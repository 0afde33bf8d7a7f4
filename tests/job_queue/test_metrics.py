"""The job queue in `/metrics`, over a real database: the reaper's gauges (each endpoint's depth and the age of its
oldest queued job) and the outcomes counted where jobs end (a cancel, a purge-queue, the reaper's timeout)."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import update

from dockyard.db.base import utcnow
from dockyard.db.models import JobModel
from dockyard.reconcilers.jobs import JobReaper
from tests.api.test_jobs import job_routes, make_endpoint, submit
from tests.conftest import Harness

__all__ = ["job_routes"]  # the API tests' autouse fixture, so that `run` is served here too


def sample(harness: Harness, name: str, **labels: str) -> float | None:
    return harness.context.registry.get_sample_value(name, labels)


async def test_queue_depth_oldest_age_and_outcomes(harness: Harness, client: httpx.AsyncClient) -> None:
    reaper = JobReaper(harness.context)
    endpoint_id = await make_endpoint(client)
    ids = [await submit(client, endpoint_id) for _ in range(4)]
    async with harness.context.db.write() as session:  # the oldest has waited a minute
        await session.execute(
            update(JobModel).where(JobModel.id == ids[0]).values(created_at=utcnow() - timedelta(minutes=1))
        )
    await reaper.reconcile_once()
    assert sample(harness, "dockyard_jobs_queued", endpoint=endpoint_id) == 4
    oldest = sample(harness, "dockyard_jobs_oldest_queued_seconds", endpoint=endpoint_id)
    assert oldest is not None
    assert 60 <= oldest < 3600

    assert (await client.post(f"/v2/{endpoint_id}/cancel/{ids[0]}")).status_code == 200
    assert (await client.post(f"/v2/{endpoint_id}/cancel/{ids[0]}")).status_code == 200  # already ended: not again
    async with harness.context.db.write() as session:  # one outlives its lifetime in the queue
        await session.execute(update(JobModel).where(JobModel.id == ids[1]).values(expires_at=utcnow()))
    await reaper.reconcile_once()
    assert sample(harness, "dockyard_jobs_finished_total", endpoint=endpoint_id, outcome="cancelled") == 1
    assert sample(harness, "dockyard_jobs_finished_total", endpoint=endpoint_id, outcome="timed_out") == 1
    assert sample(harness, "dockyard_jobs_queued", endpoint=endpoint_id) == 2

    assert (await client.post(f"/v2/{endpoint_id}/purge-queue")).json()["removed"] == 2
    await reaper.reconcile_once()
    assert sample(harness, "dockyard_jobs_finished_total", endpoint=endpoint_id, outcome="cancelled") == 3
    assert sample(harness, "dockyard_jobs_queued", endpoint=endpoint_id) is None  # an empty queue is no series
