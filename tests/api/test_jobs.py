"""The async job API over a real database (SQLite and PostgreSQL), at both client bases (`/v1`, the ppio-gpus
client's; `/v2`, the runpod client's): run/status, cancel, retry, purge-queue, health, stream, runsync,
idempotency under concurrency, and the refusals (401, 404, 413, 422)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import ppio_gpus  # type: ignore[import-untyped]
import pytest
import runpod  # type: ignore[import-untyped]
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import func, select

from dockyard.api import jobs as jobs_api
from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.core.status import EndpointStatus, JobStatus, WorkerStatus
from dockyard.db.base import utcnow
from dockyard.db.models import EndpointModel, JobModel, JobStreamModel, WorkerModel
from dockyard.db.session import Database
from dockyard.services import jobs
from tests.api.test_admin import assert_error
from tests.conftest import ADMIN_TOKEN, Harness
from tests.fakes import FakeRuntime
from tests.live import serving

ASYNC_ENDPOINT: dict[str, Any] = {
    "type": "async",
    "name": "jobs",
    "product_id": "serverless.cpu",
    "image": "localhost/worker:1",
    "worker_config": {"max_replicas": 2},
}


def include_job_routes(app: FastAPI) -> None:
    """Serve the job API whether or not the app already includes its router."""
    paths = {route.path for route in app.routes if isinstance(route, APIRoute)}
    if "/v1/{endpoint_id}/run" not in paths:
        app.include_router(jobs_api.router)


@pytest.fixture(autouse=True)
def job_routes(request: pytest.FixtureRequest) -> None:
    if "harness" in request.fixturenames:
        include_job_routes(request.getfixturevalue("harness").app)


async def make_endpoint(client: httpx.AsyncClient, type_: str = "async") -> str:
    answer = await client.post("/gpus/v2/endpoints", json={**ASYNC_ENDPOINT, "type": type_})
    assert answer.status_code == 200, answer.text
    endpoint_id: str = answer.json()["id"]
    return endpoint_id


async def submit(client: httpx.AsyncClient, endpoint_id: str, body: Any = None, base: str = "/v2", **kw: Any) -> str:
    answer = await client.post(f"{base}/{endpoint_id}/run", json=body or {"input": {"n": 1}}, **kw)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "IN_QUEUE"
    job_id: str = answer.json()["id"]
    return job_id


async def job_row(harness: Harness, job_id: str) -> JobModel | None:
    async with harness.context.db.read() as session:
        return await session.get(JobModel, job_id)


async def must_job(harness: Harness, job_id: str) -> JobModel:
    row = await job_row(harness, job_id)
    assert row is not None, f"job {job_id} has no row"
    return row


async def take(harness: Harness, endpoint_id: str, worker_id: str = "w1") -> JobModel | None:
    """What a worker's job-take does: the oldest queued job, now IN_PROGRESS under a lease."""
    async with harness.context.db.write() as session:
        return await jobs.claim_next(session, endpoint_id, worker_id, now=utcnow(), lease_seconds=30)


async def finish(harness: Harness, job_id: str, status: JobStatus, output: Any = None, error: str = "") -> None:
    """What a worker's job-done does, through the shared helper."""
    async with harness.context.db.write() as session:
        job = await session.get(JobModel, job_id)
        assert job is not None
        output_json = None if output is None else json.dumps(output)
        await jobs.finish(session, job, status, output_json=output_json, error=error, now=utcnow())
    harness.context.job_signals.notify_changed(job_id)


async def test_run_commits_and_status_answers_on_both_bases(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    job_id = await submit(client, endpoint_id, {"input": {"prompt": "hi"}}, base="/v1")
    row = await must_job(harness, job_id)
    assert (row.status, json.loads(row.input), row.endpoint_id) == (JobStatus.IN_QUEUE, {"prompt": "hi"}, endpoint_id)
    for base in ("/v1", "/v2"):
        answer = await client.get(f"{base}/{endpoint_id}/status/{job_id}")
        assert answer.status_code == 200, answer.text
        view = answer.json()
        reason = view.pop("reason")
        assert view == {
            "id": job_id,
            "status": "IN_QUEUE",
            "delayTime": 0,
            "executionTime": 0,
            "position": 1,
            "estimatedStartAt": None,  # no job was taken yet: nothing to estimate from
        }
        assert reason["code"] == "SCALING_FROM_ZERO"

    await take(harness, endpoint_id)
    await finish(harness, job_id, JobStatus.COMPLETED, output={"text": "hello"})
    body = (await client.get(f"/v1/{endpoint_id}/status/{job_id}")).json()
    assert body["status"] == "COMPLETED"
    assert body["output"] == {"text": "hello"}
    assert body["workerId"] == "w1"
    assert isinstance(body["delayTime"], int)
    assert isinstance(body["executionTime"], int)
    assert "error" not in body


async def test_policy_and_webhook_are_recorded(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    body = {"input": 1, "webhook": "http://hooks.test/x", "policy": {"executionTimeout": 5000, "ttl": 60000}}
    row = await must_job(harness, await submit(client, endpoint_id, body))
    assert (row.webhook, row.execution_timeout_ms, row.ttl_ms) == ("http://hooks.test/x", 5000, 60000)
    defaults = await must_job(harness, await submit(client, endpoint_id))
    settings = harness.context.settings
    assert defaults.execution_timeout_ms == int(settings.job_execution_timeout_seconds * 1000)
    assert defaults.ttl_ms == int(settings.job_lifetime_seconds * 1000)
    assert defaults.keep_ms == int(settings.job_ttl_seconds * 1000)


async def test_an_async_endpoints_url_is_the_base_its_clients_call(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    url = (await client.get(f"/gpus/v2/endpoints/{endpoint_id}")).json()["url"]
    assert url == f"{harness.context.settings.resolved_public_url}/v1/{endpoint_id}"  # ppio-gpus's base, and the id
    answer = await client.post(f"{url}/run", json={"input": {"n": 1}})
    assert answer.status_code == 200, answer.text
    status = await client.get(f"{url}/status/{answer.json()['id']}")
    assert status.json()["status"] == "IN_QUEUE"
    sync_id = await make_endpoint(client, "sync")
    sync_url = (await client.get(f"/gpus/v2/endpoints/{sync_id}")).json()["url"]
    assert sync_url == f"{harness.context.settings.resolved_gateway_url}/{sync_id}"  # any path, to a worker


async def test_bare_key_is_accepted_and_bad_keys_refused(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    key = client.headers["Authorization"].removeprefix("Bearer ")
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dockyard.test") as bare:
        answer = await bare.post(f"/v2/{endpoint_id}/run", json={"input": {}}, headers={"Authorization": key})
        assert answer.status_code == 200, answer.text
        assert_error(await bare.post(f"/v2/{endpoint_id}/run", json={"input": {}}), 401)
        wrong = {"Authorization": "Bearer dy_wrong"}
        assert_error(await bare.get(f"/v1/{endpoint_id}/health", headers=wrong), 401)


async def test_other_org_and_sync_endpoints_are_not_found(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    job_id = await submit(client, endpoint_id)
    other = await harness.new_client("globex")
    try:
        assert_error(await other.post(f"/v2/{endpoint_id}/run", json={"input": 1}), 404)
        assert_error(await other.get(f"/v2/{endpoint_id}/status/{job_id}"), 404)
        assert_error(await other.post(f"/v2/{endpoint_id}/cancel/{job_id}"), 404)
        assert_error(await other.get(f"/gpus/v2/endpoints/{endpoint_id}/jobs"), 404)
        other_endpoint = await make_endpoint(other)
        # A job id of another endpoint is as missing as a wrong one.
        assert_error(await other.get(f"/v2/{other_endpoint}/status/{job_id}"), 404)
    finally:
        await other.aclose()
    sync_id = await make_endpoint(client, "sync")
    body = assert_error(await client.post(f"/v1/{sync_id}/run", json={"input": 1}), 404)
    assert "sync endpoint" in body["message"]
    assert_error(await client.get("/v1/no-such-endpoint/health"), 404)


async def test_payload_bound_and_validation(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    harness.context.settings.job_max_payload_bytes = 100
    body = assert_error(await client.post(f"/v2/{endpoint_id}/run", json={"input": "x" * 200}), 413)
    assert "over the job limit of 100 bytes" in body["message"]
    assert await submit(client, endpoint_id, {"input": "x" * 50})
    assert_error(await client.post(f"/v2/{endpoint_id}/run", json={"prompt": 1}), 422, "input")
    assert_error(await client.post(f"/v2/{endpoint_id}/run", json={"input": 1, "webhook": "ftp://x"}), 422, "webhook")
    # RunPod's documented bounds: executionTimeout at least 5 s, ttl at least 10 s, both at most a week.
    for policy, field in [
        ({"ttl": 9_999}, "policy.ttl"),
        ({"ttl": 7 * 24 * 3600 * 1000 + 1}, "policy.ttl"),
        ({"executionTimeout": 4_999}, "policy.executionTimeout"),
        ({"lowPriority": "yes"}, "policy.lowPriority"),
    ]:
        assert_error(await client.post(f"/v2/{endpoint_id}/run", json={"input": 1, "policy": policy}), 422, field)
    async with harness.context.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(JobModel)) == 1
    least = {"input": 1, "policy": {"ttl": 10_000, "executionTimeout": 5_000, "lowPriority": True}}
    row = await must_job(harness, await submit(client, endpoint_id, least))
    assert (row.ttl_ms, row.execution_timeout_ms, row.low_priority) == (10_000, 5_000, True)


async def test_cancel_queued_never_runs(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    job_id = await submit(client, endpoint_id)
    answer = await client.post(f"/v1/{endpoint_id}/cancel/{job_id}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "CANCELLED"
    assert await take(harness, endpoint_id) is None
    row = await must_job(harness, job_id)
    assert (row.status, row.attempts, row.cancel_requested, row.history) == (JobStatus.CANCELLED, 0, False, [])
    assert row.expires_at is not None


async def test_cancel_running_tells_the_worker_and_final_is_unchanged(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    endpoint_id = await make_endpoint(client)
    running = await submit(client, endpoint_id)
    taken = await take(harness, endpoint_id)
    assert taken is not None
    assert taken.id == running
    with harness.context.job_signals.watch_worker("w1") as told:
        answer = await client.post(f"/v2/{endpoint_id}/cancel/{running}")
        assert await told.wait(0)  # the worker's held job-stop poll is woken
    assert answer.json()["status"] == "CANCELLED"
    row = await must_job(harness, running)
    assert row.cancel_requested is True
    assert row.history[-1]["outcome"] == "cancelled by the client"
    assert row.history[-1]["finished_at"]

    done = await submit(client, endpoint_id)
    await take(harness, endpoint_id)
    await finish(harness, done, JobStatus.COMPLETED, output=[1, 2])
    answer = await client.post(f"/v2/{endpoint_id}/cancel/{done}")
    assert (answer.json()["status"], answer.json()["output"]) == ("COMPLETED", [1, 2])


async def test_retry(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    job_id = await submit(client, endpoint_id)
    await take(harness, endpoint_id)
    assert_error(await client.post(f"/v2/{endpoint_id}/retry/{job_id}"), 409)  # still running
    await finish(harness, job_id, JobStatus.FAILED, error="boom")
    answer = await client.post(f"/v2/{endpoint_id}/retry/{job_id}")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"id": job_id, "status": "IN_QUEUE"}
    row = await must_job(harness, job_id)
    assert (row.status, row.retried, row.attempts, row.error) == (JobStatus.IN_QUEUE, 1, 0, "")
    assert row.expires_at is not None  # a fresh lifetime
    assert row.expires_at - utcnow() > timedelta(milliseconds=row.ttl_ms - 60_000)
    again = await take(harness, endpoint_id, "w2")
    assert again is not None
    assert again.id == job_id
    await finish(harness, job_id, JobStatus.COMPLETED, output="ok")
    body = (await client.get(f"/v2/{endpoint_id}/status/{job_id}")).json()
    assert (body["status"], body["output"], body["retries"]) == ("COMPLETED", "ok", 1)
    assert_error(await client.post(f"/v2/{endpoint_id}/retry/{job_id}"), 409)  # completed
    assert (await client.get(f"/v2/{endpoint_id}/health")).json()["jobs"]["retried"] == 1


async def test_purge_queue(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    running = await submit(client, endpoint_id)
    await take(harness, endpoint_id)
    queued = [await submit(client, endpoint_id) for _ in range(3)]
    answer = await client.post(f"/v1/{endpoint_id}/purge-queue")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"removed": 3, "status": "completed"}
    assert await take(harness, endpoint_id) is None
    assert (await must_job(harness, running)).status == JobStatus.IN_PROGRESS
    for job_id in queued:
        assert (await must_job(harness, job_id)).status == JobStatus.CANCELLED
    assert (await client.post(f"/v2/{endpoint_id}/purge-queue")).json() == {"removed": 0, "status": "completed"}


async def test_health_counts(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    async with harness.context.db.write() as session:
        workers = [
            WorkerModel(endpoint_id=endpoint_id, org_id="", generation=1, status=status)
            for status in (
                WorkerStatus.READY,
                WorkerStatus.READY,
                WorkerStatus.STARTING,
                WorkerStatus.PENDING,
                WorkerStatus.FAILED,
                WorkerStatus.DRAINING,
            )
        ]
        session.add_all(workers)
        await session.flush()
        ready_a, ready_b = workers[0].id, workers[1].id
    ids = [await submit(client, endpoint_id) for _ in range(5)]
    await take(harness, endpoint_id, ready_a)  # ids[0] runs on ready_a
    await take(harness, endpoint_id, ready_a)
    await finish(harness, ids[1], JobStatus.COMPLETED, output=1)
    await take(harness, endpoint_id, ready_a)
    await finish(harness, ids[2], JobStatus.TIMED_OUT)
    answer = await client.get(f"/v1/{endpoint_id}/health")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "jobs": {"completed": 1, "failed": 1, "inProgress": 1, "inQueue": 2, "retried": 0},
        # RunPod's six worker states, from ours.
        "workers": {"idle": 1, "initializing": 2, "ready": 2, "running": 1, "throttled": 0, "unhealthy": 1},
        "reason": None,  # two ready workers of the two it may have: the queue moves, nothing blocks it
    }
    await take(harness, endpoint_id, ready_b)
    workers_now = (await client.get(f"/v2/{endpoint_id}/health")).json()["workers"]
    assert (workers_now["idle"], workers_now["ready"], workers_now["running"]) == (0, 2, 2)


async def _add_part(harness: Harness, job_id: str, seq: int, output: Any) -> None:
    async with harness.context.db.write() as session:
        session.add(JobStreamModel(job_id=job_id, seq=seq, output=json.dumps(output)))
    harness.context.job_signals.notify_changed(job_id)


async def runpod_stream(client: httpx.AsyncClient, url: str, between: list[Any]) -> list[Any]:
    """The runpod client's `Job.stream()` loop, without its one-second sleeps; `between` are callables run
    after each read (a worker streaming and finishing meanwhile)."""
    final = ["COMPLETED", "FAILED", "TIMED_OUT"]
    parts: list[Any] = []
    for reads in range(20):
        partial = (await client.get(url)).json()
        if partial["status"] not in final or len(partial["stream"]) > 0:
            parts.extend(chunk["output"] for chunk in partial["stream"])
        elif partial["status"] in final:
            return parts
        if reads < len(between):
            await between[reads]()
    raise AssertionError(f"the stream loop did not end; parts so far: {parts}")


async def test_stream_yields_every_part_once_in_order(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    job_id = await submit(client, endpoint_id)
    await take(harness, endpoint_id)
    await _add_part(harness, job_id, 1, "a")
    await _add_part(harness, job_id, 0, {"token": "first"})

    async def more() -> None:
        await _add_part(harness, job_id, 2, "b")

    async def nothing() -> None:
        return None

    async def last_and_finish() -> None:
        await _add_part(harness, job_id, 3, "c")
        await finish(harness, job_id, JobStatus.COMPLETED, output=["first", "a", "b", "c"])

    url = f"/v2/{endpoint_id}/stream/{job_id}"
    first = (await client.get(url)).json()
    assert first["status"] == "IN_PROGRESS"
    assert first["stream"] == [{"output": {"token": "first"}}, {"output": "a"}]
    assert (await client.get(url)).json()["stream"] == []  # consumed
    parts = await runpod_stream(client, url, [more, nothing, last_and_finish])
    assert parts == ["b", "c"]


async def test_runsync_answers_when_finished_elsewhere(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)

    async def worker() -> None:
        while True:
            with harness.context.job_signals.watch_queued(endpoint_id) as queued:
                if (job := await take(harness, endpoint_id)) is not None:
                    break
                await queued.wait(1.0)
        await finish(harness, job.id, JobStatus.COMPLETED, output={"sum": 3})

    worker_task = asyncio.create_task(worker())
    body = {"input": {"a": 1, "b": 2}}
    # Within one database-read slice (5 s): only the finish signal can have woken it this soon.
    answer = await asyncio.wait_for(client.post(f"/v2/{endpoint_id}/runsync?wait=60000", json=body), 4.0)
    await worker_task
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "COMPLETED"
    assert answer.json()["output"] == {"sum": 3}


async def test_runsync_answers_in_queue_when_not_done(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    answer = await client.post(f"/v1/{endpoint_id}/runsync?wait=100", json={"input": 1})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "IN_QUEUE"
    assert (await must_job(harness, answer.json()["id"])).status == JobStatus.IN_QUEUE
    assert_error(await client.post(f"/v1/{endpoint_id}/runsync?wait=-1", json={"input": 1}), 422, "wait")


async def test_a_queued_job_says_its_place_and_when_it_should_start(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    endpoint_id = await make_endpoint(client)
    async with harness.context.db.write() as session:
        ready = WorkerModel(endpoint_id=endpoint_id, org_id="", generation=1, status=WorkerStatus.READY)
        session.add(ready)
        await session.flush()
        worker_id = ready.id
    ids = [await submit(client, endpoint_id) for _ in range(3)]
    third = (await client.get(f"/v2/{endpoint_id}/status/{ids[2]}")).json()
    assert third["position"] == 3
    assert third["estimatedStartAt"] is None  # nothing taken yet: no throughput to go by
    assert third["reason"] is None  # a ready worker with room: the queue moves
    await take(harness, endpoint_id, worker_id)
    harness.context.waits.entries.clear()  # the explanation is reused for a second; read it afresh
    third = (await client.get(f"/v1/{endpoint_id}/status/{ids[2]}")).json()
    assert third["position"] == 2
    assert third["estimatedStartAt"] >= int(utcnow().timestamp())
    # Only a queued job carries them.
    running = (await client.get(f"/v1/{endpoint_id}/status/{ids[0]}")).json()
    assert running["status"] == "IN_PROGRESS"
    assert {"position", "estimatedStartAt", "reason"}.isdisjoint(running)


async def test_a_failed_endpoint_says_so_in_its_jobs_and_runsync_answers_at_once(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    endpoint_id = await make_endpoint(client)
    queued = await submit(client, endpoint_id)
    failure = "3 workers in a row failed before becoming ready; the last: exited with code 1"
    async with harness.context.db.write() as session:
        row = await session.get(EndpointModel, endpoint_id)
        assert row is not None
        row.status, row.reason = EndpointStatus.FAILED, failure
    harness.context.waits.entries.clear()
    view = (await client.get(f"/v2/{endpoint_id}/status/{queued}")).json()
    assert view["reason"]["code"] == "ENDPOINT_FAILED"
    assert failure in view["reason"]["message"]
    loop = asyncio.get_running_loop()
    began = loop.time()
    answer = await client.post(f"/v2/{endpoint_id}/runsync?wait=60000", json={"input": 1})
    took = loop.time() - began
    print(f"runsync on a failed endpoint answered in {took * 1000:.0f} ms")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "IN_QUEUE"  # RunPod's answer: accepted, and why it waits
    assert answer.json()["position"] == 2
    assert answer.json()["reason"]["code"] == "ENDPOINT_FAILED"
    assert took < 30  # it did not hold the call for its 60 s wait
    health = (await client.get(f"/v1/{endpoint_id}/health")).json()
    assert health["reason"]["code"] == "ENDPOINT_FAILED"
    endpoint = (await client.get(f"/gpus/v2/endpoints/{endpoint_id}")).json()
    assert endpoint["blocking"]["code"] == "ENDPOINT_FAILED"


async def test_idempotency_key_same_job_per_endpoint(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    key = {"Idempotency-Key": "order-1"}
    first = await submit(client, endpoint_id, {"input": {"a": 1, "b": 2}}, headers=key)
    replay = await client.post(f"/v1/{endpoint_id}/run", json={"input": {"b": 2, "a": 1}}, headers=key)
    assert replay.status_code == 200, replay.text
    assert replay.json() == {"id": first, "status": "IN_QUEUE"}
    assert replay.headers.get("Idempotent-Replayed") == "true"
    different = await client.post(f"/v2/{endpoint_id}/run", json={"input": {"a": 2}}, headers=key)
    assert_error(different, 422, "Idempotency-Key")
    other_endpoint = await make_endpoint(client)
    assert await submit(client, other_endpoint, {"input": {"a": 1, "b": 2}}, headers=key) != first

    # The result is purged after its TTL; within the key's 24 hours a replay still makes no second job.
    async with harness.context.db.write() as session:
        job = await session.get(JobModel, first)
        await session.delete(job)
    again = await client.post(f"/v2/{endpoint_id}/run", json={"input": {"a": 1, "b": 2}}, headers=key)
    assert again.json()["id"] == first
    async with harness.context.db.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(JobModel).where(JobModel.endpoint_id == endpoint_id)
        )
    assert count == 0


async def test_idempotency_under_concurrency(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    keys, duplicates = 50, 20

    async def post(index: int) -> tuple[int, httpx.Response]:
        answer = await client.post(
            f"/v2/{endpoint_id}/run", json={"input": {"i": index}}, headers={"Idempotency-Key": f"key-{index}"}
        )
        return index, answer

    answers = await asyncio.gather(*(post(index) for index in range(keys) for _ in range(duplicates)))
    ids: dict[int, set[str]] = {}
    for index, answer in answers:
        assert answer.status_code == 200, answer.text
        ids.setdefault(index, set()).add(answer.json()["id"])
    assert all(len(found) == 1 for found in ids.values()), ids
    async with harness.context.db.read() as session:
        rows = list(await session.scalars(select(JobModel).where(JobModel.endpoint_id == endpoint_id)))
    assert len(rows) == keys
    assert {row.id for row in rows} == {next(iter(found)) for found in ids.values()}


async def test_list_jobs_newest_first(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await make_endpoint(client)
    ids = [await submit(client, endpoint_id) for _ in range(3)]
    await take(harness, endpoint_id)  # the oldest
    url = f"/gpus/v2/endpoints/{endpoint_id}/jobs"
    answer = await client.get(url)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [item["id"] for item in data] == ids[::-1]
    assert [item["attempts"] for item in data] == [0, 0, 1]
    assert all(isinstance(item["created_at"], int) for item in data)
    queued = (await client.get(url, params={"status": "IN_QUEUE", "limit": 1})).json()["data"]
    assert [item["id"] for item in queued] == [ids[2]]
    assert_error(await client.get(url, params={"status": "DONE"}), 422, "status")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A live server (SQLite) with the job API: its URL, its database URL, and a user key."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'live.db'}"
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        public_address="127.0.0.1",
        run_reconcilers=False,
        engine_url="unix:///nonexistent.sock",
    )
    app = create_app(settings, runtime_factory=lambda idc, context: FakeRuntime())
    include_job_routes(app)
    with serving(app) as url:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        org = httpx.post(f"{url}/admin/v1/organizations", json={"name": "sdk"}, headers=admin).json()
        key = httpx.post(f"{url}/admin/v1/organizations/{org['id']}/keys", json={}, headers=admin).json()["key"]
        yield url, database_url, key


async def test_the_sdk_clients_work_unchanged(served: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The runpod and ppio-gpus clients themselves, over HTTP, against a worker simulated on the database."""
    url, database_url, key = served
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
        created = await http.post(f"{url}/gpus/v2/endpoints", json=ASYNC_ENDPOINT)
    endpoint_id = created.json()["id"]
    db = Database(database_url)

    async def work(worker_id: str, parts: list[Any], output: Any) -> None:
        async with db.write() as session:
            job = await jobs.claim_next(session, endpoint_id, worker_id, now=utcnow(), lease_seconds=30)
            assert job is not None
            session.add_all(JobStreamModel(job_id=job.id, seq=seq, output=json.dumps(p)) for seq, p in enumerate(parts))
            await jobs.finish(session, job, JobStatus.COMPLETED, output_json=json.dumps(output), now=utcnow())

    try:
        monkeypatch.setattr(runpod, "api_key", key)
        monkeypatch.setattr(runpod, "endpoint_url_base", f"{url}/v2")
        endpoint = runpod.Endpoint(endpoint_id)
        job = await asyncio.to_thread(endpoint.run, {"prompt": "hi"})
        assert await asyncio.to_thread(job.status) == "IN_QUEUE"
        await work("w1", ["a", {"b": 2}], {"text": "a b"})
        assert await asyncio.to_thread(job.output, 10) == {"text": "a b"}
        assert await asyncio.to_thread(lambda: list(job.stream())) == ["a", {"b": 2}]
        health = await asyncio.to_thread(endpoint.health)
        assert health["jobs"]["completed"] == 1
        queued = await asyncio.to_thread(endpoint.run, {"input": {"n": 2}})
        cancelled = await asyncio.to_thread(queued.cancel)
        assert cancelled["status"] == "CANCELLED"
        await asyncio.to_thread(endpoint.run, {"n": 3})
        assert await asyncio.to_thread(endpoint.purge_queue) == {"removed": 1, "status": "completed"}

        ppio = ppio_gpus.Endpoint(endpoint_id, api_key=key, endpoint_url_base=f"{url}/v1")
        task = await asyncio.to_thread(ppio.run, {"prompt": "yo"})
        assert await asyncio.to_thread(task.status) == "IN_QUEUE"
        await work("w2", [], [1, 2, 3])
        assert await asyncio.to_thread(task.output, 10) == [1, 2, 3]
        assert set((await asyncio.to_thread(ppio.health))["workers"].values()) == {0}
        assert (await asyncio.to_thread(ppio.purge_queue))["removed"] == 0
    finally:
        await db.dispose()
