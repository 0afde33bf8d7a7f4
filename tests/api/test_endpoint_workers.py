"""`/gpus/v2/endpoints/{id}/workers`, `.../workers/{worker_id}/logs` and `.../events` over a real database, with
worker rows written as the endpoint reconciler writes them and their output in the in-memory runtime."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.routing import APIRoute

from dockyard.api import endpoint_workers
from dockyard.core.status import WorkerStatus
from dockyard.db.models import EventModel, IdcModel, NodeModel, WorkerModel
from dockyard.runtimes.base import RunSpec, RuntimeUnavailable
from dockyard.services import events
from tests.api.test_admin import assert_error
from tests.api.test_endpoints import create, endpoint_row, get
from tests.conftest import Harness
from tests.fakes import FakeRuntime

URL = "/gpus/v2/endpoints"


@pytest.fixture(autouse=True)
def routed(harness: Harness) -> None:
    """Serve the router on the test app when app.py does not yet include it."""
    paths = {route.path for route in harness.app.routes if isinstance(route, APIRoute)}
    if f"{URL}/{{endpoint_id}}/events" not in paths:
        harness.app.include_router(endpoint_workers.router)


async def add_worker(
    harness: Harness,
    endpoint_id: str,
    *,
    status: WorkerStatus = WorkerStatus.PENDING,
    runtime_id: str = "",
    node_id: str = "",
    generation: int = 1,
    reason: str = "",
) -> str:
    org_id = (await endpoint_row(harness, endpoint_id)).org_id
    async with harness.context.db.write() as session:
        worker = WorkerModel(
            endpoint_id=endpoint_id,
            org_id=org_id,
            generation=generation,
            status=status,
            reason=reason,
            runtime_id=runtime_id,
            node_id=node_id,
            health=status == WorkerStatus.READY,
        )
        session.add(worker)
        await session.flush()
        return worker.id


async def started_worker(harness: Harness, endpoint_id: str, fake_runtime: FakeRuntime) -> str:
    """A ready worker whose runtime object holds three lines of output."""
    obj = await fake_runtime.create(
        RunSpec(name=f"worker-{time.monotonic_ns()}", image="localhost/busybox:latest", labels={})
    )
    fake_runtime.output[obj.id] = [b"one\n", b"two\n", b"three\n"]
    return await add_worker(harness, endpoint_id, status=WorkerStatus.READY, runtime_id=obj.id)


async def test_logs_whole_tail_and_follow(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime
) -> None:
    endpoint_id = await create(client)
    worker_id = await started_worker(harness, endpoint_id, fake_runtime)
    url = f"{URL}/{endpoint_id}/workers/{worker_id}/logs"
    whole = await client.get(url)
    assert whole.status_code == 200, whole.text
    assert whole.headers["content-type"].startswith("text/plain")
    assert whole.text == "one\ntwo\nthree\n"
    assert (await client.get(url, params={"tail": 1})).text == "three\n"

    received = b""
    async with client.stream("GET", url, params={"follow": "true", "since": "1714564800"}) as answer:
        assert answer.status_code == 200
        async for chunk in answer.aiter_bytes():
            received += chunk
    assert received == b"one\ntwo\nthree\n"


async def test_the_log_url_of_the_endpoints_get_answers(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime
) -> None:
    endpoint_id = await create(client)
    await started_worker(harness, endpoint_id, fake_runtime)
    log_url = (await get(client, endpoint_id))["workers"][0]["log"]
    path = httpx.URL(log_url).path
    assert (await client.get(path, params={"tail": 2})).text == "two\nthree\n"


async def test_logs_of_a_worker_not_started_is_409_saying_so(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await create(client)
    worker_id = await add_worker(harness, endpoint_id)
    body = assert_error(await client.get(f"{URL}/{endpoint_id}/workers/{worker_id}/logs"), 409)
    assert body["reason"] == "CONFLICT"
    assert f"worker {worker_id} has not started yet (status pending)" in body["message"]
    assert "Retry once" in body["message"]


async def test_logs_are_404_for_another_org_or_an_unknown_worker(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime
) -> None:
    endpoint_id = await create(client)
    worker_id = await started_worker(harness, endpoint_id, fake_runtime)
    other_endpoint = await create(client, name="other")
    url = f"{URL}/{endpoint_id}/workers/{worker_id}/logs"
    async with await harness.new_client("globex") as stranger:
        body = assert_error(await stranger.get(url), 404)
        assert body["message"].startswith(f"endpoint {endpoint_id} not found")
        assert_error(await stranger.get(f"{URL}/{endpoint_id}/workers"), 404)
        assert_error(await stranger.get(f"{URL}/{endpoint_id}/events"), 404)
    unknown = assert_error(await client.get(f"{URL}/{endpoint_id}/workers/nope/logs"), 404)
    assert f"GET {URL}/{endpoint_id}/workers lists its workers" in unknown["message"]
    # A worker is reached only through its own endpoint.
    assert_error(await client.get(f"{URL}/{other_endpoint}/workers/{worker_id}/logs"), 404)


async def test_logs_errors_of_the_runtime(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint_id = await create(client)
    worker_id = await started_worker(harness, endpoint_id, fake_runtime)
    url = f"{URL}/{endpoint_id}/workers/{worker_id}/logs"
    assert_error(await client.get(url, params={"since": "last week"}), 422, "since")
    assert_error(await client.get(url, params={"tail": -1}), 422, "tail")

    async def unreachable(object_id: str, **_: object) -> AsyncIterator[bytes]:
        raise RuntimeUnavailable("engine socket refused the connection")
        yield b""  # makes this an async generator, as runtimes' logs are

    monkeypatch.setattr(fake_runtime, "logs", unreachable)
    down = assert_error(await client.get(url), 503)
    assert "cannot be reached right now; retry" in down["message"]
    monkeypatch.undo()

    async with harness.context.db.read_session() as session:
        worker = await session.get(WorkerModel, worker_id)
        assert worker is not None
        fake_runtime.vanish(worker.runtime_id)
    gone = assert_error(await client.get(url), 409)
    assert gone["message"].startswith(f"no logs for worker {worker_id}: container ")


async def test_logs_are_read_from_the_runtime_of_the_workers_node(harness: Harness, client: httpx.AsyncClient) -> None:
    """After a region change an old worker still runs where it was placed: its node's IDC is asked, here one
    whose runtime this process has not attached (503 naming it), not the endpoint's (which would say 409)."""
    endpoint_id = await create(client)
    async with harness.context.db.write() as session:
        session.add(IdcModel(id="far", name="Far away"))
        await session.flush()
        session.add(NodeModel(id="far-node", idc_id="far"))
    worker_id = await add_worker(
        harness, endpoint_id, status=WorkerStatus.READY, runtime_id="c-far", node_id="far-node"
    )
    body = assert_error(await client.get(f"{URL}/{endpoint_id}/workers/{worker_id}/logs"), 503)
    assert "the runtime of IDC far cannot be reached" in body["message"]


async def test_workers_list(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await create(client)
    before = int(time.time())
    ready = await add_worker(
        harness, endpoint_id, status=WorkerStatus.READY, runtime_id="c1", node_id="node-a", generation=1
    )
    failed = await add_worker(harness, endpoint_id, status=WorkerStatus.FAILED, reason="image not found", generation=2)
    answer = await client.get(f"{URL}/{endpoint_id}/workers")
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    public = harness.context.settings.resolved_public_url
    assert [w["id"] for w in data] == [ready, failed]
    first = data[0]
    assert set(first) == {
        *("id", "status", "log", "health", "drain", "generation", "node_id", "created_at", "updated_at"),
        *("last_probe", "first_call_at", "last_call_at"),
    }
    assert (first["last_probe"], first["first_call_at"], first["last_call_at"]) == (None, None, None)
    assert first["status"] == {"status": "ready", "error": "", "message": ""}
    assert (first["health"], first["drain"], first["generation"], first["node_id"]) == (True, False, 1, "node-a")
    assert first["log"] == f"{public}{URL}/{endpoint_id}/workers/{ready}/logs"
    assert before - 1 <= first["created_at"] <= first["updated_at"] <= int(time.time()) + 1
    assert data[1]["status"] == {"status": "failed", "error": "image not found", "message": "image not found"}
    assert (data[1]["generation"], data[1]["node_id"]) == (2, "")
    # The same workers, with the same fields, as the endpoint's GET shows them.
    shown = (await get(client, endpoint_id))["workers"]
    assert shown == [{k: w[k] for k in ("id", "status", "log", "health", "drain")} for w in data]

    empty = await create(client, name="empty")
    assert (await client.get(f"{URL}/{empty}/workers")).json() == {"data": []}


async def test_events_newest_first_and_limited(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await create(client)
    other = await create(client, name="other")
    org_id = (await endpoint_row(harness, endpoint_id)).org_id
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with harness.context.db.write() as session:
        for minute, kind in enumerate(("WorkerCreated", "WorkerReady", "ScaledUp")):
            session.add(
                EventModel(
                    org_id=org_id,
                    object_kind="endpoint",
                    object_id=endpoint_id,
                    type=kind,
                    message=f"{kind} because of reasons",
                    created_at=start + timedelta(minutes=minute),
                )
            )
        events.record(session, org_id=org_id, object_kind="endpoint", object_id=other, type="Other", message="x")
        events.record(session, org_id=org_id, object_kind="container", object_id=endpoint_id, type="Else", message="y")

    answer = await client.get(f"{URL}/{endpoint_id}/events")
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == [
        {"type": "ScaledUp", "message": "ScaledUp because of reasons", "created_at": int(start.timestamp()) + 120},
        {"type": "WorkerReady", "message": "WorkerReady because of reasons", "created_at": int(start.timestamp()) + 60},
        {"type": "WorkerCreated", "message": "WorkerCreated because of reasons", "created_at": int(start.timestamp())},
    ]
    limited = (await client.get(f"{URL}/{endpoint_id}/events", params={"limit": 2})).json()["data"]
    assert [e["type"] for e in limited] == ["ScaledUp", "WorkerReady"]
    assert_error(await client.get(f"{URL}/{endpoint_id}/events", params={"limit": 0}), 422, "limit")
    assert_error(await client.get(f"{URL}/nope/events"), 404)


async def test_workers_list_shows_the_last_probe_and_the_webhook_calls(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    """What the prober last saw of a starting worker, and an async worker's first and last webhook calls, as the
    reconciler and the webhooks record them on the row."""
    endpoint_id = await create(client)
    worker_id = await add_worker(harness, endpoint_id, status=WorkerStatus.STARTING, runtime_id="c1")
    probed, first, last = (datetime(2026, 1, 1, 0, 0, s, tzinfo=UTC) for s in (10, 20, 30))
    async with harness.context.db.write() as session:
        worker = await session.get(WorkerModel, worker_id)
        assert worker is not None
        worker.last_probe_at, worker.last_probe_result = probed, "connection refused"
        worker.first_seen_at, worker.last_seen_at = first, last
    shown = (await client.get(f"{URL}/{endpoint_id}/workers")).json()["data"][0]
    assert shown["last_probe"] == {"at": int(probed.timestamp()), "result": "connection refused"}
    assert (shown["first_call_at"], shown["last_call_at"]) == (int(first.timestamp()), int(last.timestamp()))
