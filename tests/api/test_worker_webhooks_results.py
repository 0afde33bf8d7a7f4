"""What the worker SDKs post besides a plain result, over a real database (SQLite and PostgreSQL), called as the SDKs
call it: progress updates (`progress_update` posts `{"status": "IN_PROGRESS", "output": ...}` to job-done), and a
result that never arrived (the SDK's post failed, and its next ping no longer lists the job). The workers call with
their own key, which each call's Authorization header carries over the client's."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dockyard.core.status import JobStatus
from dockyard.db.base import utcnow
from dockyard.services.worker_runspec import ping_interval_ms
from tests.api.test_worker_webhooks import add_worker, async_endpoint, job, set_job, submit
from tests.conftest import Harness


@pytest.mark.parametrize("sdk", ["RUNPOD", "PPIO"])
async def test_progress_keeps_the_job_in_progress_shown_by_status_until_the_result(harness: Harness, sdk: str) -> None:
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, harness.client, endpoint_id, sdk=sdk)
    other = await add_worker(harness, harness.client, endpoint_id, sdk=sdk)
    [job_id] = await submit(harness, endpoint_id, 1)
    assert (await worker.take()).status_code == 200

    for value in ["Update 0/2", {"step": 1, "of": 2}]:
        answer = await worker.done(job_id, {"status": "IN_PROGRESS", "output": value})  # the SDKs' progress_update
        assert answer.status_code == 200, answer.text
        status = (await harness.client.get(f"/v2/{endpoint_id}/status/{job_id}")).json()
        assert (status["status"], status["output"]) == ("IN_PROGRESS", value)
    assert (await other.done(job_id, {"status": "IN_PROGRESS", "output": "not mine"})).status_code == 409

    assert (await worker.done(job_id, {"output": {"answer": 42}})).status_code == 200
    # A progress thread that posts after the result changes nothing.
    assert (await worker.done(job_id, {"status": "IN_PROGRESS", "output": "late"})).status_code == 200
    status = (await harness.client.get(f"/v1/{endpoint_id}/status/{job_id}")).json()
    assert (status["status"], status["output"]) == ("COMPLETED", {"answer": 42})
    row = await job(harness, job_id)
    assert [record["outcome"] for record in row.history if "attempt" in record] == ["completed"]


async def test_a_held_job_a_ping_leaves_out_lost_its_result_and_goes_back_to_the_queue(
    harness: Harness,
) -> None:
    settings = harness.context.settings
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, harness.client, endpoint_id, sdk="RUNPOD")
    lost, running, fresh = await submit(harness, endpoint_id, 3)
    taken = [item["id"] for item in (await worker.take(batch=3)).json()]
    assert taken == [lost, running, fresh]
    a_ping_ago = utcnow() - timedelta(milliseconds=ping_interval_ms(settings) + 1000)
    for job_id in (lost, running):
        await set_job(harness, job_id, started_at=a_ping_ago)

    # `running` is still listed; `fresh` was taken too recently for a ping sent meanwhile to list it.
    with harness.context.job_signals.watch_queued(endpoint_id) as queued:
        assert (await worker.ping(running)).status_code == 200
        assert await queued.wait(0)
    row = await job(harness, lost)
    assert (row.status, row.worker_id, row.attempts) == (JobStatus.IN_QUEUE, "", 1)
    [attempt] = [record for record in row.history if "attempt" in record]
    assert attempt["outcome"] == (
        f"result lost: worker {worker.id} finished the job but its result never reached the server"
    )
    assert (await job(harness, running)).status == JobStatus.IN_PROGRESS
    assert (await job(harness, fresh)).status == JobStatus.IN_PROGRESS


async def test_a_result_lost_on_the_last_attempt_fails_the_job_saying_so(
    harness: Harness,
) -> None:
    settings = harness.context.settings
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, harness.client, endpoint_id, sdk="PPIO")
    [job_id] = await submit(harness, endpoint_id, 1)
    assert (await worker.take()).status_code == 200
    started = utcnow() - timedelta(milliseconds=ping_interval_ms(settings) + 1000)
    await set_job(harness, job_id, started_at=started, attempts=settings.job_max_attempts)

    with harness.context.job_signals.watch_changed(job_id) as changed:
        assert (await worker.ping(None)).status_code == 200  # an SDK whose list is empty sends no job_id
        assert await changed.wait(0)
    status = (await harness.client.get(f"/v2/{endpoint_id}/status/{job_id}")).json()
    assert status["status"] == "FAILED"
    assert status["error"].startswith(f"no result arrived in {settings.job_max_attempts} attempts: ")
    assert "its result never reached the server" in status["error"]
    assert "output" not in status


async def test_a_job_past_its_ttl_is_not_taken(harness: Harness) -> None:
    endpoint_id = await async_endpoint(harness)
    worker = await add_worker(harness, harness.client, endpoint_id, sdk="RUNPOD")
    expired, alive = await submit(harness, endpoint_id, 2)
    await set_job(harness, expired, expires_at=utcnow() - timedelta(seconds=1))
    assert [item["id"] for item in (await worker.take(batch=2)).json()] == [alive]
    assert (await job(harness, expired)).status == JobStatus.IN_QUEUE  # the reaper's to time out
