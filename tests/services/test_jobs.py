"""The shared job transitions of services/jobs.py as pure computations on in-memory rows: finishing, taking,
requeueing and retrying, the attempt history, and the status view the clients parse."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dockyard.config import Settings
from dockyard.core.status import JobStatus, WebhookState
from dockyard.db.models import JobModel
from dockyard.services import jobs

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def job(**fields: Any) -> JobModel:
    values: dict[str, Any] = {
        "id": "job-1",
        "endpoint_id": "ep-1",
        "org_id": "org-1",
        "status": JobStatus.IN_QUEUE,
        "input": "{}",
        "output": None,
        "error": "",
        "webhook": "",
        "execution_timeout_ms": 0,
        "ttl_ms": 60_000,
        "keep_ms": 30_000,
        "low_priority": False,
        "expires_at": T0 + timedelta(seconds=60),
        "worker_id": "",
        "attempts": 0,
        "retried": 0,
        "history": [],
        "started_at": None,
        "delay_ms": 0,
        "execution_ms": 0,
        "created_at": T0,
    }
    values.update(fields)
    return JobModel(**values)


def taken(row: JobModel, worker_id: str, at: datetime) -> JobModel:
    for name, value in jobs.start_attempt_values(row, worker_id, now=at, lease_seconds=30).items():
        setattr(row, name, value)
    return row


def test_start_attempt_opens_a_record_and_a_lease() -> None:
    row = taken(job(), "w1", T0 + timedelta(seconds=2))
    assert row.status == JobStatus.IN_PROGRESS
    assert (row.worker_id, row.attempts, row.delay_ms) == ("w1", 1, 2000)
    assert row.lease_expires_at == T0 + timedelta(seconds=32)
    assert row.history == [
        {
            "attempt": 1,
            "worker_id": "w1",
            "started_at": (T0 + timedelta(seconds=2)).isoformat(),
            "finished_at": None,
            "outcome": "",
        }
    ]


def test_finish_a_running_job_closes_its_attempt() -> None:
    row = taken(job(webhook="http://hook.test/"), "w1", T0)
    end = T0 + timedelta(seconds=3)
    values = jobs.finish_values(row, JobStatus.COMPLETED, output_json='{"a": 1}', now=end)
    assert values["status"] == JobStatus.COMPLETED
    assert (values["output"], values["execution_ms"], values["finished_at"]) == ('{"a": 1}', 3000, end)
    assert values["expires_at"] == end + timedelta(milliseconds=30_000)  # kept `keep_ms` once finished
    assert values["lease_expires_at"] is None
    assert (values["webhook_state"], values["webhook_next_at"]) == (WebhookState.PENDING, end)
    assert values["history"][-1]["finished_at"] == end.isoformat()
    assert values["history"][-1]["outcome"] == "completed"
    assert len(values["history"]) == 1


def test_finish_a_queued_job_records_no_attempt() -> None:
    values = jobs.finish_values(job(keep_ms=0), JobStatus.CANCELLED, now=T0)
    assert "history" not in values
    assert values["execution_ms"] == 0
    assert values["webhook_state"] == WebhookState.NONE
    default_ttl = Settings.model_fields["job_ttl_seconds"].default
    assert values["expires_at"] == T0 + timedelta(seconds=default_ttl)
    with pytest.raises(ValueError, match="not a final status"):
        jobs.finish_values(job(), JobStatus.IN_PROGRESS, now=T0)


async def test_finish_sets_the_row_and_flushes() -> None:
    flushed: list[bool] = []

    class Session:
        async def flush(self) -> None:
            flushed.append(True)

    row = taken(job(), "w1", T0)
    await jobs.finish(Session(), row, JobStatus.FAILED, error="boom", now=T0)  # type: ignore[arg-type]
    assert (row.status, row.error, flushed) == (JobStatus.FAILED, "boom", [True])


def test_requeue_then_retake_keeps_every_attempt() -> None:
    row = taken(job(), "w1", T0)
    for name, value in jobs.requeue_values(row, "lease expired on worker w1", now=T0 + timedelta(seconds=30)).items():
        setattr(row, name, value)
    assert (row.status, row.worker_id, row.started_at) == (JobStatus.IN_QUEUE, "", None)
    taken(row, "w2", T0 + timedelta(seconds=31))
    assert row.delay_ms == 1000  # counted from when it went back to the queue
    summary = jobs.history_summary(jobs.closed_history(row, "lease expired on worker w2", T0 + timedelta(minutes=1)))
    assert (
        summary
        == "attempt 1 on worker w1: lease expired on worker w1; attempt 2 on worker w2: lease expired on worker w2"
    )


def test_closed_history_appends_a_record_nobody_opened() -> None:
    row = job(status=JobStatus.IN_PROGRESS, attempts=1, worker_id="w9", started_at=T0)
    history = jobs.closed_history(row, "timed out", T0 + timedelta(seconds=5))
    assert history == [
        {
            "attempt": 1,
            "worker_id": "w9",
            "started_at": T0.isoformat(),
            "finished_at": (T0 + timedelta(seconds=5)).isoformat(),
            "outcome": "timed out",
        }
    ]
    assert row.history == []  # the row itself is not changed


def test_retry_resets_attempts_and_marks_history() -> None:
    row = taken(job(), "w1", T0)
    for name, value in jobs.finish_values(row, JobStatus.FAILED, error="boom", now=T0).items():
        setattr(row, name, value)
    values = jobs.retry_values(row, now=T0 + timedelta(seconds=10))
    assert (values["status"], values["retried"], values["attempts"], values["error"]) == (JobStatus.IN_QUEUE, 1, 0, "")
    assert values["history"][-1] == {"retried_at": (T0 + timedelta(seconds=10)).isoformat()}
    assert values["expires_at"] == T0 + timedelta(seconds=70)  # a fresh lifetime: a resubmission
    for name, value in values.items():
        setattr(row, name, value)
    assert taken(row, "w2", T0 + timedelta(seconds=12)).delay_ms == 2000


def test_job_view_shape() -> None:
    row = job(status=JobStatus.COMPLETED, output=json.dumps({"x": [1]}), delay_ms=5, execution_ms=7, worker_id="w1")
    assert jobs.job_view(row) == {
        "id": "job-1",
        "status": "COMPLETED",
        "delayTime": 5,
        "executionTime": 7,
        "output": {"x": [1]},
        "workerId": "w1",
    }
    failed = job(status=JobStatus.FAILED, error="boom", history=[{"attempt": 1}, {"attempt": 2}])
    view = jobs.job_view(failed, ['"a"', "2"])
    assert (view["error"], view["retries"], view["stream"]) == ("boom", 1, [{"output": "a"}, {"output": 2}])
    assert "output" not in view


def test_execution_deadline_uses_the_job_or_the_setting() -> None:
    settings = Settings(job_execution_timeout_seconds=60)
    assert jobs.execution_deadline(job(), settings) is None
    assert jobs.execution_deadline(job(started_at=T0), settings) == T0 + timedelta(seconds=60)
    assert jobs.execution_deadline(job(started_at=T0, execution_timeout_ms=1500), settings) == T0 + timedelta(
        milliseconds=1500
    )


def test_a_queued_job_past_its_ttl_is_discarded_as_timed_out() -> None:
    row = job()
    assert not jobs.expired(row, T0 + timedelta(seconds=59))
    assert jobs.expired(row, T0 + timedelta(seconds=60))
    values = jobs.expiry_values(row, now=T0 + timedelta(seconds=60))
    assert (values["status"], values["execution_ms"]) == (JobStatus.TIMED_OUT, 0)
    assert values["error"] == "expired in the queue: no worker took it within its ttl of 60 s from submission"
    assert "history" not in values  # it never ran
    assert not values.get("cancel_requested")
    assert values["expires_at"] == T0 + timedelta(seconds=90)  # then kept like any finished job


def test_a_running_job_past_its_ttl_times_out_and_its_worker_is_told_to_stop() -> None:
    row = taken(job(), "w1", T0 + timedelta(seconds=50))
    values = jobs.expiry_values(row, now=T0 + timedelta(seconds=60))
    assert (values["status"], values["cancel_requested"]) == (JobStatus.TIMED_OUT, True)
    assert values["error"] == "expired: its ttl of 60 s from submission ran out while worker w1 ran it"
    assert values["history"][-1]["outcome"] == "expired (ttl)"
    assert not jobs.expired(job(status=JobStatus.COMPLETED), T0 + timedelta(days=1))
    assert not jobs.expired(job(expires_at=None), T0 + timedelta(days=1))  # a row from before lifetimes
