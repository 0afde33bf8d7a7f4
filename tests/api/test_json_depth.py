"""JSON nested too deeply, sent over a real socket to a served Dockyard as found (a worker webhook's body 1,000
deep was a 500 or a reset connection): every route that parses JSON answers 400 naming the bound, and a document
as deep as the bound is accepted, stored and served back (serializing it again cannot fail either)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.core.status import WorkerStatus
from dockyard.db.models import EndpointModel, WorkerModel
from dockyard.db.session import Database
from dockyard.json_depth import MAX_JSON_DEPTH, nesting_depth, too_deep
from dockyard.secrets import hash_api_key
from dockyard.services.worker_runspec import WEBHOOK_PREFIX
from dockyard.services.worker_webhooks import new_worker_key
from tests.api.test_jobs import ASYNC_ENDPOINT
from tests.conftest import ADMIN_TOKEN
from tests.fakes import FakeRuntime
from tests.live import serving

FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # how the worker SDKs post their JSON text


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value `depth` levels deep, alternating lists and objects."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def deep_text(depth: int) -> str:
    """JSON text `depth` levels deep, written without `json.dumps`, which cannot write what is too deep."""
    return '{"k":' * depth + "1" + "}" * depth


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[str, dict[str, str]]]:
    settings.job_take_wait_seconds = 0.2
    with serving(create_app(settings, runtime_factory=lambda idc, context: FakeRuntime())) as url:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        org = httpx.post(f"{url}/admin/v1/organizations", json={"name": "deep"}, headers=admin).json()
        key = httpx.post(f"{url}/admin/v1/organizations/{org['id']}/keys", json={}, headers=admin).json()["key"]
        yield url, {"Authorization": f"Bearer {key}"}


async def add_worker(settings: Settings, endpoint_id: str) -> tuple[str, str]:
    """A worker row of the endpoint, and its key, written as the endpoint reconciler writes them."""
    db = Database(settings.resolved_database_url)
    key = new_worker_key()
    try:
        async with db.write() as session:
            endpoint = await session.get(EndpointModel, endpoint_id)
            assert endpoint is not None
            worker = WorkerModel(
                endpoint_id=endpoint_id,
                org_id=endpoint.org_id,
                generation=endpoint.generation,
                status=WorkerStatus.STARTING,
                key_hash=hash_api_key(key),
            )
            session.add(worker)
            await session.flush()
            return worker.id, key
    finally:
        await db.dispose()


def assert_too_deep(answer: httpx.Response) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.json()["reason"] == "BAD_REQUEST"
    assert f"deeper than {MAX_JSON_DEPTH} levels" in answer.json()["message"]


async def test_deep_bodies_are_400_and_bodies_as_deep_as_the_bound_go_through(
    served: tuple[str, dict[str, str]], settings: Settings
) -> None:
    url, user = served
    async with httpx.AsyncClient(base_url=url, headers=user, timeout=30) as client:
        endpoint_id = (await client.post("/gpus/v2/endpoints", json=ASYNC_ENDPOINT)).json()["id"]
        worker_id, worker_key = await add_worker(settings, endpoint_id)
        worker = {"Authorization": worker_key}
        done = f"{WEBHOOK_PREFIX}/{endpoint_id}/job-done/{worker_id}"

        for depth in (MAX_JSON_DEPTH + 1, 1000, 100_000):
            body = deep_text(depth)
            run = await client.post(f"/v2/{endpoint_id}/run", content=f'{{"input": {body}}}', headers=JSON)
            assert_too_deep(run)  # the job API's lean route, then FastAPI's
            assert_too_deep(await client.post("/api/v1/templates", content=body, headers=JSON))  # any FastAPI body
            assert_too_deep(await client.post("/gpus/v2/endpoints", content=f'{{"name": {body}}}', headers=JSON))
            result = await client.post(f"{done}/any-job", content=f'{{"output": {body}}}', headers={**worker, **FORM})
            assert_too_deep(result)
            stream = f"{WEBHOOK_PREFIX}/{endpoint_id}/job-stream/{worker_id}/any-job"
            assert_too_deep(await client.post(stream, content=f'{{"output": {body}}}', headers={**worker, **FORM}))

        # As deep as the bound, whole bodies included: accepted, stored, handed to the worker and served back.
        job_input = nested(MAX_JSON_DEPTH - 1)
        run = await client.post(f"/v2/{endpoint_id}/run", json={"input": job_input})
        assert run.status_code == 200, run.text
        job_id = run.json()["id"]
        taken = await client.get(f"{WEBHOOK_PREFIX}/{endpoint_id}/job-take/{worker_id}", headers=worker)
        assert taken.status_code == 200, taken.text
        assert taken.json() == {"id": job_id, "input": job_input}
        output = nested(MAX_JSON_DEPTH - 1, leaf="done")
        posted = await client.post(
            f"{done}/{job_id}", content=json.dumps({"output": output}), headers={**worker, **FORM}
        )
        assert posted.status_code == 200, posted.text
        status = await client.get(f"/v2/{endpoint_id}/status/{job_id}")
        assert status.status_code == 200, status.text
        assert status.json()["output"] == output


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "text",
    [
        '{"a": "[[[[{{{{", "b": [1, [2, [3]]]}',  # brackets inside strings do not count
        r'{"a": "say \"[[[\" twice", "b": {"c": []}}',
        "[]",
        "7",
        json.dumps([[0.5] * 8] * 500),  # wide, not deep
    ],
)
def test_depth_is_that_of_the_document(text: str) -> None:
    assert nesting_depth(text.encode()) == _depth(json.loads(text))
    assert nesting_depth(text.encode("utf-16")) == _depth(json.loads(text))
    assert not too_deep(text.encode())


def test_the_bound_is_exact() -> None:
    assert not too_deep(json.dumps(nested(MAX_JSON_DEPTH)).encode())
    assert too_deep(json.dumps(nested(MAX_JSON_DEPTH + 1)).encode())
    assert too_deep(b"[" * 10_000)  # not JSON at all, and deep: refused before a parser recurses into it


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0
