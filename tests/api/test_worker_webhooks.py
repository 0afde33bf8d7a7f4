"""The worker webhooks over a real database (SQLite and PostgreSQL), called exactly as the `ppio-gpus` and `runpod`
worker SDKs call them: URLs expanded from the env templates with the SDKs' own substitutions and suffixes, the
key as the bare Authorization value, results posted as JSON text under `application/x-www-form-urlencoded`."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select, update

from dockyard.config import Settings, new_token
from dockyard.core.status import JobStatus, WorkerStatus
from dockyard.db.base import utcnow
from dockyard.db.models import JobModel, JobStreamModel, WorkerModel
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.secrets import hash_api_key
from dockyard.services import jobs
from dockyard.services import worker_webhooks as service
from dockyard.services.worker_runspec import WEBHOOK_PREFIX, WebhookAccess, webhook_base_url, webhook_env
from tests.api.test_endpoints import create, endpoint_row
from tests.conftest import Harness
from tests.fakes import FakeRuntime

BASE = "http://dockyard.test"
FORM = {"charset": "utf-8", "Content-Type": "application/x-www-form-urlencoded"}  # the SDKs' _transmit headers


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.job_take_wait_seconds = 0.3
    return settings


@pytest.fixture(autouse=True)
def routed(harness: Harness) -> None:
    """Serve the router on the test app when app.py does not yet include it."""
    from dockyard.api import worker_webhooks

    paths = {route.path for route in harness.app.routes if isinstance(route, APIRoute)}
    if f"{WEBHOOK_PREFIX}/{{endpoint_id}}/ping/{{worker_id}}" not in paths:
        harness.app.include_router(worker_webhooks.router)


@pytest.fixture
async def raw(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no credentials of its own: each call sends the worker's key, as the SDKs do."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=harness.app), base_url=BASE) as client:
        yield client


@dataclass
class Worker:
    """A worker row with its key and the env its container would get, and the SDKs' way of calling."""

    id: str
    endpoint_id: str
    key: str
    env: dict[str, str]
    http: httpx.AsyncClient
    sdk: str = "PPIO"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": self.key}

    def take_url(self, batch: int = 1, in_progress: bool = False) -> str:
        url = self.env[f"{self.sdk}_WEBHOOK_GET_JOB"].replace("$ID", self.id)
        if batch > 1:
            url = url.replace("/job-take/", "/job-take-batch/") + f"&batch_size={batch}"
        return url + f"&job_in_progress={'1' if in_progress else '0'}"

    def result_url(self, kind: str, job_id: str, is_stream: bool = False) -> str:
        template = self.env[f"{self.sdk}_WEBHOOK_POST_{kind}"].replace(f"${self.sdk}_POD_ID", self.id)
        return template.replace("$ID", job_id) + f"&isStream={'true' if is_stream else 'false'}"

    async def take(self, batch: int = 1) -> httpx.Response:
        return await self.http.get(self.take_url(batch), headers=self.auth)

    async def done(self, job_id: str, result: dict[str, Any], is_stream: bool = False) -> httpx.Response:
        body = json.dumps(result, ensure_ascii=False)  # the SDKs post the JSON text itself as the form body
        return await self.http.post(
            self.result_url("OUTPUT", job_id, is_stream), content=body.encode(), headers={**self.auth, **FORM}
        )

    async def stream(self, job_id: str, part: Any) -> httpx.Response:
        body = json.dumps({"output": part}, ensure_ascii=False)
        return await self.http.post(
            self.result_url("STREAM", job_id), content=body.encode(), headers={**self.auth, **FORM}
        )

    async def ping(self, job_ids: str | None) -> httpx.Response:
        url = self.env[f"{self.sdk}_WEBHOOK_PING"].replace(f"${self.sdk}_POD_ID", self.id)
        return await self.http.get(url, params={"job_id": job_ids}, headers=self.auth)

    async def stop_signals(self) -> httpx.Response:
        job_take = self.env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", self.id)
        return await self.http.get(job_take.replace("/job-take/", "/job-stop/"), headers=self.auth)


async def async_endpoint(harness: Harness) -> str:
    return await create(harness.client, type="async")


async def add_worker(
    harness: Harness, raw: httpx.AsyncClient, endpoint_id: str, *, sdk: str = "PPIO", drain: bool = False
) -> Worker:
    endpoint = await endpoint_row(harness, endpoint_id)
    key = new_token()
    async with harness.context.db.write() as session:
        row = WorkerModel(
            endpoint_id=endpoint_id,
            org_id=endpoint.org_id,
            generation=endpoint.generation,
            status=WorkerStatus.STARTING,
            key_hash=hash_api_key(key),
            drain=drain,
        )
        session.add(row)
        await session.flush()
    env = webhook_env(endpoint, row, WebhookAccess(BASE, key, 10000))
    return Worker(row.id, endpoint_id, key, env, raw, sdk)


async def submit(harness: Harness, endpoint_id: str, count: int) -> list[str]:
    """`count` queued jobs, oldest first, committed and announced as the client API does."""
    endpoint = await endpoint_row(harness, endpoint_id)
    base = utcnow()
    rows = [
        JobModel(
            endpoint_id=endpoint_id,
            org_id=endpoint.org_id,
            input=json.dumps({"n": n, "text": "héllo"}, ensure_ascii=False),
            created_at=base + timedelta(milliseconds=n),
        )
        for n in range(count)
    ]
    async with harness.context.db.write() as session:
        session.add_all(rows)
        await session.flush()
        ids = [row.id for row in rows]
    harness.context.job_signals.notify_queued(endpoint_id)
    return ids


async def job(harness: Harness, job_id: str) -> JobModel:
    async with harness.context.db.read() as session:
        row = await session.get(JobModel, job_id)
        assert row is not None
        return row


async def set_job(harness: Harness, job_id: str, **values: Any) -> None:
    async with harness.context.db.write() as session:
        await session.execute(update(JobModel).where(JobModel.id == job_id).values(**values))


async def test_take_single_then_batch_oldest_first(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    ids = await submit(harness, endpoint_id, 5)
    before = utcnow()

    first = await worker.take()
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "application/json"
    assert first.json() == {"id": ids[0], "input": {"n": 0, "text": "héllo"}}
    batch = await worker.take(batch=3)
    assert batch.status_code == 200, batch.text
    assert [item["id"] for item in batch.json()] == ids[1:4]
    assert all(set(item) == {"id", "input"} for item in batch.json())

    row = await job(harness, ids[0])
    assert row.status == JobStatus.IN_PROGRESS
    assert row.worker_id == worker.id
    assert row.attempts == 1
    assert row.started_at is not None
    assert row.started_at >= before
    assert row.lease_expires_at is not None
    assert row.lease_expires_at - row.started_at == timedelta(seconds=harness.context.settings.job_lease_seconds)
    assert row.delay_ms >= 0
    assert [record["worker_id"] for record in row.history if "attempt" in record] == [worker.id]
    assert (await job(harness, ids[4])).status == JobStatus.IN_QUEUE


async def test_empty_take_is_held_then_204(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await worker.take()
    assert answer.status_code == 204
    assert answer.content == b""
    assert loop.time() - started >= harness.context.settings.job_take_wait_seconds * 0.9


async def test_held_take_is_woken_by_a_queued_job(harness: Harness, raw: httpx.AsyncClient) -> None:
    harness.context.settings.job_take_wait_seconds = 30.0
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    held = asyncio.create_task(worker.take())
    await asyncio.sleep(0.3)
    assert not held.done()
    [job_id] = await submit(harness, endpoint_id, 1)
    answer = await asyncio.wait_for(held, timeout=10)  # well inside the 30 s wait: woken, not timed out
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == job_id


async def test_a_job_queued_while_a_take_reads_the_queue_wakes_it(
    harness: Harness, raw: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake-up that comes between the take's read (an empty queue) and its wait is not lost."""
    harness.context.settings.job_take_wait_seconds = 30.0
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    read_queue = service._take_now
    submitted: list[str] = []

    async def read_then_submit(context: Any, taker: WorkerModel, count: int) -> list[dict[str, Any]]:
        taken = await read_queue(context, taker, count)
        if not submitted:
            submitted.extend(await submit(harness, endpoint_id, 1))  # committed and announced before the wait
        return taken

    monkeypatch.setattr(service, "_take_now", read_then_submit)
    answer = await asyncio.wait_for(worker.take(), timeout=10)  # well inside the 30 s wait: woken, not timed out
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == submitted[0]


async def test_concurrent_takers_never_share_a_job(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    workers = [await add_worker(harness, raw, endpoint_id) for _ in range(5)]
    ids = await submit(harness, endpoint_id, 30)
    taken: dict[str, list[str]] = {worker.id: [] for worker in workers}

    async def drain(worker: Worker) -> None:
        while True:
            answer = await worker.take(batch=random.randint(1, 4))
            if answer.status_code == 204:
                return
            assert answer.status_code == 200, answer.text
            body = answer.json()
            taken[worker.id] += [item["id"] for item in (body if isinstance(body, list) else [body])]

    await asyncio.gather(*(drain(worker) for worker in workers))
    everything = [job_id for got in taken.values() for job_id in got]
    assert sorted(everything) == sorted(ids)  # each job exactly once
    for worker in workers:
        for job_id in taken[worker.id]:
            row = await job(harness, job_id)
            assert (row.worker_id, row.attempts) == (worker.id, 1)


async def test_done_as_the_sdk_posts_it_completes_the_job(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id, sdk="RUNPOD")
    [job_id] = await submit(harness, endpoint_id, 1)
    assert (await worker.take()).status_code == 200
    with harness.context.job_signals.watch_changed(job_id) as changed:
        answer = await worker.done(job_id, {"output": {"answer": "généré", "n": [1, 2]}})
        assert answer.status_code == 200, answer.text
        assert await changed.wait(0)
    row = await job(harness, job_id)
    assert row.status == JobStatus.COMPLETED
    assert row.output is not None
    assert json.loads(row.output) == {"answer": "généré", "n": [1, 2]}
    assert row.finished_at is not None
    assert row.lease_expires_at is None
    [attempt] = [record for record in row.history if "attempt" in record]
    assert attempt["outcome"] == "completed"
    assert attempt["finished_at"] is not None
    # The SDK retries a post whose answer it lost: the same result again is accepted and changes nothing.
    assert (await worker.done(job_id, {"output": {"answer": "généré", "n": [1, 2]}})).status_code == 200
    assert (await job(harness, job_id)).version == row.version


async def test_done_with_error_fails_the_job(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    [job_id] = await submit(harness, endpoint_id, 1)
    await worker.take()
    error = json.dumps({"error_type": "<class 'ValueError'>", "error_message": "boom"})
    assert (await worker.done(job_id, {"error": error})).status_code == 200
    row = await job(harness, job_id)
    assert (row.status, row.error, row.output) == (JobStatus.FAILED, error, None)


async def test_stale_worker_result_is_refused_and_noted(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    first, second = await add_worker(harness, raw, endpoint_id), await add_worker(harness, raw, endpoint_id)
    [job_id] = await submit(harness, endpoint_id, 1)
    await first.take()
    # The first worker's lease expires and the reaper puts the job back; the second takes it.
    row = await job(harness, job_id)
    await set_job(harness, job_id, **jobs.requeue_values(row, f"lease expired on worker {first.id}", now=utcnow()))
    assert (await second.take()).json()["id"] == job_id

    late = await first.done(job_id, {"output": "late"})
    assert late.status_code == 409, late.text
    row = await job(harness, job_id)
    assert (row.status, row.worker_id, row.output) == (JobStatus.IN_PROGRESS, second.id, None)
    assert any(first.id in record.get("note", "") for record in row.history)

    assert (await second.done(job_id, {"output": "fresh"})).status_code == 200
    row = await job(harness, job_id)
    assert row.output == json.dumps("fresh")
    attempts = [record for record in row.history if "attempt" in record]
    assert [(r["attempt"], r["worker_id"], r["outcome"]) for r in attempts] == [
        (1, first.id, f"lease expired on worker {first.id}"),
        (2, second.id, "completed"),
    ]


async def test_a_late_result_for_a_cancelled_job_is_dropped_and_the_job_stays_cancelled(
    harness: Harness, raw: httpx.AsyncClient
) -> None:
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    [job_id] = await submit(harness, endpoint_id, 1)
    await worker.take()
    row = await job(harness, job_id)
    cancelled = jobs.finish_values(row, JobStatus.CANCELLED, now=utcnow(), outcome="cancelled by the client")
    await set_job(harness, job_id, **cancelled, cancel_requested=True)
    other = await add_worker(harness, raw, endpoint_id)
    assert (await other.done(job_id, {"output": 2})).status_code == 409  # never its job
    # Its own worker did nothing wrong: 200 (a 409 would only make the SDK retry), the result dropped, and said so.
    assert (await worker.done(job_id, {"output": 1})).status_code == 200
    row = await job(harness, job_id)
    assert (row.status, row.output) == (JobStatus.CANCELLED, None)
    assert any("late result" in record.get("note", "") for record in row.history), row.history


async def test_stream_parts_then_aggregate_done(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    other = await add_worker(harness, raw, endpoint_id)
    [job_id] = await submit(harness, endpoint_id, 1)
    await worker.take()
    for n, part in enumerate(["a", {"b": 2}, [3]]):
        answer = await worker.stream(job_id, part)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"seq": n}
    assert (await other.stream(job_id, "intruder")).status_code == 409
    async with harness.context.db.read() as session:
        parts = list(await session.scalars(select(JobStreamModel).where(JobStreamModel.job_id == job_id)))
    assert [(p.seq, json.loads(p.output)) for p in sorted(parts, key=lambda p: p.seq)] == [
        (0, "a"),
        (1, {"b": 2}),
        (2, [3]),
    ]
    # Without return_aggregate_stream the SDKs end a generator job with an empty aggregate.
    assert (await worker.done(job_id, {"output": []}, is_stream=True)).status_code == 200
    row = await job(harness, job_id)
    assert (row.status, row.output) == (JobStatus.COMPLETED, "[]")
    assert (await worker.stream(job_id, "after the end")).status_code == 409


async def test_ping_renews_only_the_callers_live_leases(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    worker, other = await add_worker(harness, raw, endpoint_id), await add_worker(harness, raw, endpoint_id)
    await submit(harness, endpoint_id, 3)
    mine = [item["id"] for item in (await worker.take(batch=3)).json()]
    await submit(harness, endpoint_id, 1)
    theirs_taken = (await other.take()).json()["id"]
    soon = utcnow() + timedelta(seconds=2)
    for job_id in [*mine[:2], theirs_taken]:
        await set_job(harness, job_id, lease_expires_at=soon)
    expired = utcnow() - timedelta(seconds=1)
    await set_job(harness, mine[2], lease_expires_at=expired)

    answer = await worker.ping(",".join([*mine, theirs_taken]))  # one comma list, as requests encodes it
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"renewed": 2}
    for job_id in mine[:2]:
        lease = (await job(harness, job_id)).lease_expires_at
        assert lease is not None
        assert lease > soon + timedelta(seconds=5)
    assert (await job(harness, theirs_taken)).lease_expires_at == soon
    assert (await job(harness, mine[2])).lease_expires_at == expired  # the reaper's to take back
    assert (await worker.ping(None)).status_code == 200  # an idle worker's ping has no job_id


async def test_stop_signal_for_a_cancelled_job_is_answered_once(harness: Harness, raw: httpx.AsyncClient) -> None:
    harness.context.settings.job_take_wait_seconds = 30.0
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id, sdk="RUNPOD")
    [job_id] = await submit(harness, endpoint_id, 1)
    await worker.take()
    held = asyncio.create_task(worker.stop_signals())
    await asyncio.sleep(0.3)
    assert not held.done()
    cancelled = await harness.client.post(f"/v2/{endpoint_id}/cancel/{job_id}")  # the client API's cancel
    assert cancelled.json()["status"] == "CANCELLED", cancelled.text
    answer = await asyncio.wait_for(held, timeout=10)  # well inside the 30 s wait: woken, not timed out
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"jobsToStop": [job_id]}
    assert not (await job(harness, job_id)).cancel_requested
    harness.context.settings.job_take_wait_seconds = 0.2
    assert (await worker.stop_signals()).status_code == 204


async def test_a_job_cancelled_while_a_stop_poll_reads_wakes_it(
    harness: Harness, raw: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake-up that comes between the job-stop poll's read (nothing flagged) and its wait is not lost."""
    harness.context.settings.job_take_wait_seconds = 30.0
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id, sdk="RUNPOD")
    [job_id] = await submit(harness, endpoint_id, 1)
    await worker.take()
    read_flags = service._stops_now

    async def read_then_cancel(context: Any, holder: WorkerModel) -> list[str]:
        stop = await read_flags(context, holder)
        if not stop and (await job(harness, job_id)).status == JobStatus.IN_PROGRESS:
            await harness.client.post(f"/v2/{endpoint_id}/cancel/{job_id}")  # committed and announced
        return stop

    monkeypatch.setattr(service, "_stops_now", read_then_cancel)
    answer = await asyncio.wait_for(worker.stop_signals(), timeout=10)  # inside the 30 s wait: woken
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"jobsToStop": [job_id]}


async def test_keys_open_only_their_own_worker(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    other_endpoint = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    neighbour = await add_worker(harness, raw, endpoint_id)
    stranger = await add_worker(harness, raw, other_endpoint)
    [foreign_job] = await submit(harness, other_endpoint, 1)
    await stranger.take()
    url = worker.take_url()

    assert (await raw.get(url)).status_code == 401
    assert (await raw.get(url, headers={"Authorization": "Bearer " + new_token()})).status_code == 401
    assert (await raw.get(url, headers=neighbour.auth)).status_code == 404  # another worker's key
    assert (await raw.get(url.replace(endpoint_id, other_endpoint), headers=worker.auth)).status_code == 404
    assert (await worker.done(foreign_job, {"output": 1})).status_code == 404  # another endpoint's job
    assert (await job(harness, foreign_job)).status == JobStatus.IN_PROGRESS
    bearer = await raw.get(
        worker.env["PPIO_WEBHOOK_PING"].replace("$PPIO_POD_ID", worker.id),
        headers={"Authorization": f"Bearer {worker.key}"},
    )
    assert bearer.status_code == 200, bearer.text


async def test_draining_worker_takes_nothing(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id, drain=True)
    [job_id] = await submit(harness, endpoint_id, 1)
    assert (await worker.take()).status_code == 204
    assert (await job(harness, job_id)).status == JobStatus.IN_QUEUE


async def test_oversized_result_is_413(harness: Harness, raw: httpx.AsyncClient) -> None:
    harness.context.settings.job_max_payload_bytes = 1000
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    [job_id] = await submit(harness, endpoint_id, 1)
    await worker.take()
    assert (await worker.done(job_id, {"output": "x" * 2000})).status_code == 413
    assert (await job(harness, job_id)).status == JobStatus.IN_PROGRESS
    assert (await worker.done(job_id, {"output": "x" * 10})).status_code == 200


async def test_first_call_marks_the_worker_seen_and_wakes_the_reconciler(
    harness: Harness, raw: httpx.AsyncClient
) -> None:
    woken: list[str] = []
    harness.context.waker = woken.append
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    woken.clear()
    assert (await worker.ping(None)).status_code == 200
    async with harness.context.db.read() as session:
        row = await session.get(WorkerModel, worker.id)
        assert row is not None
    assert row.last_seen_at is not None
    assert row.version == 1  # the stamp never makes the reconciler's guarded writes stale
    assert "endpoints" in woken


async def test_refresh_worker_result_drains_the_worker(harness: Harness, raw: httpx.AsyncClient) -> None:
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, raw, endpoint_id)
    [job_id, _] = await submit(harness, endpoint_id, 2)
    await worker.take()
    assert (await worker.done(job_id, {"output": 1, "stopPod": True})).status_code == 200
    async with harness.context.db.read() as session:
        row = await session.get(WorkerModel, worker.id)
        assert row is not None
    assert (row.status, row.drain) == (WorkerStatus.DRAINING, True)
    assert (await worker.take()).status_code == 204


async def test_reconciler_gives_each_async_worker_its_key_and_readies_it_on_its_first_call(
    harness: Harness, raw: httpx.AsyncClient, fake_runtime: FakeRuntime
) -> None:
    reconciler = EndpointReconciler(harness.context, harness.routes)
    try:
        endpoint_id = await create(
            harness.client,
            type="async",
            image="localhost/busybox:latest",
            worker_config={"min_replicas": 1, "max_replicas": 1},
        )
        await reconciler.reconcile_once()
        async with harness.context.db.read() as session:
            [row] = list(await session.scalars(select(WorkerModel).where(WorkerModel.endpoint_id == endpoint_id)))
        assert row.status == WorkerStatus.STARTING
        [spec] = [spec for spec in fake_runtime.specs.values() if spec.env.get("PPIO_POD_ID") == row.id]
        key = spec.env["PPIO_AI_API_KEY"]
        assert spec.env["RUNPOD_AI_API_KEY"] == key
        assert row.key_hash == hash_api_key(key)  # only the hash is stored
        assert spec.ports == []  # an async worker serves nothing and is never probed

        # The templates name the host as a container sees it; the test app answers on BASE.
        env = {
            name: value.replace(webhook_base_url(harness.context.settings), BASE) for name, value in spec.env.items()
        }
        worker = Worker(row.id, endpoint_id, key, env, raw)
        assert (await worker.ping(None)).status_code == 200
        await reconciler.reconcile_once()
        async with harness.context.db.read() as session:
            ready = await session.get(WorkerModel, row.id)
            assert ready is not None
        assert ready.status == WorkerStatus.READY
    finally:
        await reconciler.close()


async def test_a_held_take_whose_worker_left_takes_nothing(harness: Harness, raw: httpx.AsyncClient) -> None:
    harness.context.settings.job_take_wait_seconds = 30.0
    endpoint_id = await async_endpoint(harness)
    leaving = await add_worker(harness, raw, endpoint_id)
    row = await service.authenticate(harness.context, leaving.key, endpoint_id, leaving.id)
    left = False

    async def gone() -> bool:
        return left

    held = asyncio.create_task(service.take(harness.context, row, 1, gone))
    await asyncio.sleep(0.2)
    left = True  # its connection closed while the take was held
    [job_id] = await submit(harness, endpoint_id, 1)
    assert await asyncio.wait_for(held, timeout=10) == []  # woken, and answered nobody
    assert (await job(harness, job_id)).status == JobStatus.IN_QUEUE
    live = await add_worker(harness, raw, endpoint_id)
    answer = await live.take()
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == job_id
    assert (await job(harness, job_id)).attempts == 1
