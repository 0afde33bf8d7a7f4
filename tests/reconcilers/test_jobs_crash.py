"""Acceptance: 1,000 async jobs queued or in progress, the server killed with SIGKILL and restarted on the same
database, and every job still ends COMPLETED, as the `runpod` client sees it. Real server process, real
Podman, the `runpod` worker SDK in its workers, SQLite.

Jobs are at-least-once: a job whose result was lost with the server (its worker's job-done post failed while
the server was down) runs again, its attempt ended at the worker's next ping ("result lost") or when its lease
expired. Such jobs are counted, and each one's history must say why it ran again."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest
import runpod
from runpod.endpoint.runner import Job, RunPodClient
from sqlalchemy import select

from dockyard.core.status import JobStatus
from dockyard.db.models import JobModel
from dockyard.db.session import Database
from dockyard.services.worker_runspec import CONTAINER_HOST
from tests.live import free_port
from tests.reconcilers.test_crash import create_key, installation_of
from tests.servers import ServerProcess, remove_installation

pytestmark = [pytest.mark.slow, pytest.mark.engine]

JOBS = 1000
WORKERS = 3
FINISH_SECONDS = 300.0


async def submit(url: str, key: str, endpoint_id: str) -> list[str]:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits) as client:

        async def one(n: int) -> str:
            answer = await client.post(f"/v2/{endpoint_id}/run", json={"input": {"n": n}}, timeout=60)
            assert answer.status_code == 200, answer.text
            job_id: str = answer.json()["id"]
            return job_id

        return list(await asyncio.gather(*(one(n) for n in range(JOBS))))


def test_every_job_completes_across_a_sigkill_of_the_server(
    tmp_path: Path, engine_url: str, sdk_worker_images: dict[str, str]
) -> None:
    port = free_port()
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'dockyard.db'}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKYARD_")}
    env.update(
        DOCKYARD_DATA_DIR=str(tmp_path / "data"),
        DOCKYARD_DATABASE_URL=database_url,
        DOCKYARD_ENGINE_URL=engine_url,
        DOCKYARD_PUBLIC_URL=f"http://127.0.0.1:{port}",
        DOCKYARD_WORKER_WEBHOOK_URL=f"http://{CONTAINER_HOST}:{port}",
        DOCKYARD_RECONCILE_INTERVAL="0.5",
        DOCKYARD_JOB_LEASE_SECONDS="6",
        DOCKYARD_JOB_MAX_ATTEMPTS="5",
        DOCKYARD_LOG_LEVEL="warning",
    )
    server = ServerProcess(env, tmp_path / "server.log", host="0.0.0.0", port=port)
    installation = ""
    try:
        server.start()
        key = create_key(env)
        installation = asyncio.run(installation_of(database_url))
        api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        body = {
            "type": "async",
            "name": "crash",
            "product_id": "serverless.cpu",
            "image": sdk_worker_images["runpod"],
            "envs": [{"key": "CONCURRENCY", "value": "50"}],
            # No worker yet: all 1,000 jobs are queued first, so the kill below finds most of them still queued
            # however fast the workers are.
            "worker_config": {"min_replicas": 0, "max_replicas": 0, "idle_timeout": 600},
        }
        endpoint_id = api.post("/gpus/v2/endpoints", json=body).json()["id"]
        job_ids = asyncio.run(submit(server.url, key, endpoint_id))
        assert len(set(job_ids)) == JOBS
        assert api.get(f"/v2/{endpoint_id}/health").json()["jobs"]["inQueue"] == JOBS
        workers = {"min_replicas": WORKERS, "max_replicas": WORKERS, "idle_timeout": 600}
        assert api.put(f"/gpus/v2/endpoints/{endpoint_id}", json={"worker_config": workers}).status_code == 200

        # Kill the server while the workers are busy: some jobs done, some in progress, most still queued.
        deadline = time.monotonic() + 120
        while api.get(f"/v2/{endpoint_id}/health").json()["jobs"]["completed"] < JOBS // 5:
            assert time.monotonic() < deadline, "the workers did not get through a fifth of the jobs"
            time.sleep(0.1)
        health = api.get(f"/v2/{endpoint_id}/health").json()["jobs"]
        assert health["inQueue"] > 0, health
        api.close()
        server.kill()
        time.sleep(1.0)  # the workers' posts fail meanwhile; the SDKs retry and give up on some
        server.start()

        runpod.api_key = key
        runpod.endpoint_url_base = f"{server.url}/v2"
        endpoint = runpod.Endpoint(endpoint_id)
        deadline = time.monotonic() + FINISH_SECONDS
        while (jobs := endpoint.health()["jobs"])["completed"] < JOBS:
            assert jobs["failed"] == 0, jobs
            assert time.monotonic() < deadline, f"not every job completed: {jobs}\n{server.log_tail()}"
            time.sleep(0.5)
        client = RunPodClient()
        statuses = [Job(endpoint_id, job_id, client).status() for job_id in job_ids]
        assert statuses == ["COMPLETED"] * JOBS

        async def rows() -> list[JobModel]:
            db = Database(database_url)
            try:
                async with db.read() as session:
                    return list(await session.scalars(select(JobModel).where(JobModel.endpoint_id == endpoint_id)))
            finally:
                await db.dispose()

        stored = asyncio.run(rows())
        assert len(stored) == JOBS
        assert all(job.status == JobStatus.COMPLETED and job.output is not None for job in stored)
        for job in stored:
            assert json.loads(job.output or "null")["input"] == {"n": job_ids.index(job.id)}
        ran_twice = [job for job in stored if job.attempts > 1]
        for job in ran_twice:
            outcomes = [record.get("outcome", "") for record in job.history if "attempt" in record]
            assert any("lease expired" in outcome or "result lost" in outcome for outcome in outcomes[:-1]), job.history
        print(f"{len(ran_twice)} of {JOBS} jobs ran more than once, each after a lost result or lease")
    finally:
        server.stop()
        if installation:
            remove_installation(engine_url, installation)
