"""`run` and `status` served without FastAPI (api/jobs_lean.py), on SQLite and PostgreSQL: the common case is
served there and answers the bytes FastAPI's routes answer; every other case reaches FastAPI with its body
intact and gets FastAPI's answer; both record the same request metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from starlette.types import Receive, Scope, Send

from dockyard.api.jobs_lean import LeanJobs
from dockyard.core.status import JobStatus
from dockyard.db.models import JobModel
from tests.api.test_jobs import make_endpoint, submit
from tests.conftest import Harness


class Passed:
    """Records the job API requests `LeanJobs` passes on to FastAPI."""

    def __init__(self, lean: LeanJobs) -> None:
        self.api = lean.api
        self.paths: list[str] = []
        lean.api = self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(("/v1/", "/v2/")):
            self.paths.append(scope["path"])
        await self.api(scope, receive, send)


@pytest.fixture
def passed(harness: Harness) -> Passed:
    lean = harness.app.front.api  # type: ignore[attr-defined]
    assert isinstance(lean, LeanJobs)
    return Passed(lean)


@pytest.fixture
async def fastapi_only(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    """A client of FastAPI itself, behind neither the gateway nor `LeanJobs`, with the harness client's key."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=harness.app.serve_api),  # type: ignore[attr-defined]
        base_url="http://dockyard.test",
        headers={"Authorization": harness.client.headers["Authorization"]},
    ) as client:
        yield client


async def test_run_and_status_are_served_without_fastapi(harness: Harness, passed: Passed) -> None:
    endpoint_id = await make_endpoint(harness.client)
    for base in ("/v1", "/v2"):
        job_id = await submit(harness.client, endpoint_id, base=base)
        answer = await harness.client.get(f"{base}/{endpoint_id}/status/{job_id}")
        assert answer.status_code == 200
        assert answer.json()["id"] == job_id
        assert answer.json()["status"] == "IN_QUEUE"
    assert passed.paths == []


async def test_status_answers_the_bytes_fastapi_answers(
    harness: Harness, passed: Passed, fastapi_only: httpx.AsyncClient
) -> None:
    endpoint_id = await make_endpoint(harness.client)
    queued = await submit(harness.client, endpoint_id)
    done = await submit(harness.client, endpoint_id)
    output = {"text": "naïve café ✓", "score": 0.1 + 0.2, "big": 10**20, "none": None, "list": [1.5e-7, True]}
    history = [
        {"attempt": 1, "worker_id": "w1", "started_at": None, "finished_at": "x", "outcome": "lease expired"},
        {"attempt": 2, "worker_id": "w2", "started_at": None, "finished_at": "y", "outcome": "completed"},
    ]
    async with harness.context.db.write() as session:
        await session.execute(
            update(JobModel)
            .where(JobModel.id == done)
            .values(
                status=JobStatus.COMPLETED,
                output=json.dumps(output),
                error="",
                worker_id="w2",
                history=history,
                delay_ms=12,
                execution_ms=345,
            )
        )
    for job_id in (queued, done):
        lean = await harness.client.get(f"/v2/{endpoint_id}/status/{job_id}")
        routed = await fastapi_only.get(f"/v2/{endpoint_id}/status/{job_id}")
        assert lean.status_code == routed.status_code == 200
        assert lean.content == routed.content
        assert lean.headers["content-type"] == routed.headers["content-type"]
    view = (await harness.client.get(f"/v2/{endpoint_id}/status/{done}")).json()
    assert view["output"] == output
    assert view["retries"] == 1
    assert view["workerId"] == "w2"
    assert "error" not in view  # absent, not null, as RunPod answers
    assert passed.paths == []


async def test_refusals_by_the_services_are_answered_as_fastapi_answers_them(
    harness: Harness, passed: Passed, fastapi_only: httpx.AsyncClient
) -> None:
    endpoint_id = await make_endpoint(harness.client)
    harness.context.settings.job_max_payload_bytes = 100
    cases: list[tuple[str, str, Any]] = [
        ("POST", "/v1/no-such-endpoint/run", {"input": {}}),
        ("GET", f"/v1/{endpoint_id}/status/no-such-job", None),
        ("GET", "/v1/no-such-endpoint/status/no-such-job", None),
        ("POST", f"/v1/{endpoint_id}/run", {"input": "x" * 200}),  # over the job payload limit, not the body's
    ]
    for method, path, body in cases:
        lean = await harness.client.request(method, path, json=body)
        routed = await fastapi_only.request(method, path, json=body)
        assert lean.status_code == routed.status_code, path
        assert lean.status_code in (404, 413), lean.text
        assert lean.json() == routed.json()
    assert passed.paths == []  # each was refused by the service, on the lean path


async def test_every_other_case_reaches_fastapi_with_its_body(harness: Harness, passed: Passed) -> None:
    endpoint_id = await make_endpoint(harness.client)
    run = f"/v1/{endpoint_id}/run"
    anonymous = httpx.AsyncClient(transport=harness.client._transport, base_url="http://dockyard.test")
    async with anonymous:
        missing_key = await anonymous.post(run, json={"input": {}})
        bad_key = await anonymous.post(run, json={"input": {}}, headers={"Authorization": "Bearer dy_nope"})
    assert missing_key.status_code == bad_key.status_code == 401
    assert "Authorization" in missing_key.json()["message"]

    invalid = await harness.client.post(run, json={"webhook": "ftp://x"})
    assert invalid.status_code == 422
    assert {detail["field"] for detail in invalid.json()["details"]} >= {"input", "webhook"}

    not_json = await harness.client.post(run, content=b"input=1", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 422

    keyed = [
        await harness.client.post(run, json={"input": {"k": 1}}, headers={"Idempotency-Key": "same"}) for _ in (1, 2)
    ]
    assert [answer.status_code for answer in keyed] == [200, 200]
    assert keyed[0].json()["id"] == keyed[1].json()["id"]  # FastAPI's route read the replayed body both times
    assert keyed[1].headers["Idempotent-Replayed"] == "true"

    limit = harness.context.settings.max_body_bytes
    too_big = await harness.client.post(run, content=b"{" + b" " * limit + b"}")
    assert too_big.status_code == 413

    assert passed.paths == [run] * 7


async def test_lean_answers_are_counted_under_the_route_templates(harness: Harness) -> None:
    endpoint_id = await make_endpoint(harness.client)
    job_id = await submit(harness.client, endpoint_id, base="/v1")
    await harness.client.get(f"/v1/{endpoint_id}/status/{job_id}")
    await harness.client.get(f"/v1/{endpoint_id}/status/nope")
    registry = harness.context.registry

    def count(method: str, route: str, code: str) -> float:
        labels = {"method": method, "route": route, "code": code}
        return registry.get_sample_value("dockyard_http_requests_total", labels) or 0.0

    assert count("POST", "/v1/{endpoint_id}/run", "200") == 1
    assert count("GET", "/v1/{endpoint_id}/status/{job_id}", "200") == 1
    assert count("GET", "/v1/{endpoint_id}/status/{job_id}", "404") == 1
