"""The load of async endpoints, read from the durable queue, on both databases."""

from __future__ import annotations

from datetime import timedelta

from dockyard.control.load import job_figures, load_figures
from dockyard.core.loops import LoopName
from dockyard.core.status import JobStatus, WorkerStatus
from dockyard.db.base import utcnow
from dockyard.db.models import JobModel, WorkerModel
from dockyard.gateway.routes import RouteTable
from tests.conftest import Harness

BODY = {
    "type": "async",
    "name": "jobs",
    "product_id": "serverless.cpu",
    "image": "localhost/dockyard-worker:1",
    "worker_config": {"min_replicas": 0, "max_replicas": 3},
}


async def test_queued_and_held_jobs_are_the_endpoints_load(harness: Harness) -> None:
    created = await harness.client.post("/gpus/v2/endpoints", json=BODY)
    assert created.status_code == 200, created.text
    endpoint_id = created.json()["id"]
    sync = await harness.client.post("/gpus/v2/endpoints", json={**BODY, "type": "sync", "ports": [8080]})
    now = utcnow()
    async with harness.context.db.write() as session:
        ready_since = now - timedelta(seconds=100)
        for worker_id in ("busy", "idle"):
            session.add(
                WorkerModel(
                    id=worker_id,
                    endpoint_id=endpoint_id,
                    org_id="org",
                    generation=1,
                    status=WorkerStatus.READY,
                    created_at=ready_since,
                    modified_at=ready_since,
                )
            )
        for age in (30, 20, 10):
            session.add(
                JobModel(endpoint_id=endpoint_id, org_id="org", input="{}", created_at=now - timedelta(seconds=age))
            )
        for _ in range(2):
            session.add(
                JobModel(
                    endpoint_id=endpoint_id,
                    org_id="org",
                    input="{}",
                    status=JobStatus.IN_PROGRESS,
                    worker_id="busy",
                    started_at=now - timedelta(seconds=5),
                )
            )
        # The idle worker finished a job 40 s ago: it has been idle since then, not since it became ready.
        session.add(
            JobModel(
                endpoint_id=endpoint_id,
                org_id="org",
                input="{}",
                status=JobStatus.COMPLETED,
                worker_id="idle",
                started_at=now - timedelta(seconds=50),
                finished_at=now - timedelta(seconds=40),
            )
        )
    async with harness.context.db.read() as session:
        (figures,) = await job_figures(session, now)
        merged = await load_figures(session, RouteTable(), 0.5)
        again = await job_figures(session, now)
    assert figures.endpoint_id == endpoint_id
    assert (figures.queued, figures.in_flight) == (3, 2)
    assert 29.0 <= figures.oldest_wait <= 31.0
    workers = {w.worker_id: w for w in figures.workers}
    assert (workers["busy"].in_flight, workers["busy"].idle_for) == (2, 0.0)
    assert workers["idle"].in_flight == 0
    assert 39.0 <= workers["idle"].idle_for <= 41.0
    assert again == [figures]  # the same instant reads the same figures
    assert (merged[endpoint_id].queued, merged[endpoint_id].in_flight) == (3, 2)
    assert sync.json()["id"] not in merged  # a sync endpoint with no traffic has no durable load


async def test_low_priority_queued_jobs_never_ask_for_a_worker(harness: Harness) -> None:
    # RunPod's `policy.lowPriority`: "when true, job won't trigger worker scaling".
    created = await harness.client.post("/gpus/v2/endpoints", json=BODY)
    endpoint_id = created.json()["id"]
    woken: list[str] = []
    harness.context.wake = woken.append  # type: ignore[method-assign]
    low = {"input": {"n": 1}, "policy": {"lowPriority": True}}
    answer = await harness.client.post(f"/v2/{endpoint_id}/run", json=low)
    assert answer.status_code == 200, answer.text
    assert LoopName.AUTOSCALER not in woken  # the endpoint is at zero, and stays there
    async with harness.context.db.read() as session:
        (figures,) = await job_figures(session)
    assert (figures.queued, figures.oldest_wait) == (0, 0.0)

    assert (await harness.client.post(f"/v2/{endpoint_id}/run", json={"input": {"n": 2}})).status_code == 200
    assert LoopName.AUTOSCALER in woken
    async with harness.context.db.read() as session:
        (figures,) = await job_figures(session)
    assert figures.queued == 1
