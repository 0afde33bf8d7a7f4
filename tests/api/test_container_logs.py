"""`GET /api/v1/containers/{id}/logs` through the in-memory runtime: tail, follow, since, and the errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from dockyard.db.models import ContainerModel
from dockyard.errors import InvalidField
from dockyard.runtimes.base import RunSpec, RuntimeUnavailable
from dockyard.services.container_logs import parse_since
from tests.api.test_containers import create_one, make_template
from tests.conftest import Harness
from tests.fakes import FakeRuntime


async def started_container(harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime) -> str:
    """A container row whose runtime object exists in the fake runtime with three lines of output."""
    container_id = await create_one(client, await make_template(client))
    obj = await fake_runtime.create(
        RunSpec(name=f"dockyard-{container_id}", image="localhost/busybox:latest", labels={})
    )
    fake_runtime.output[obj.id] = [b"one\n", b"two\n", b"three\n"]
    async with harness.context.db.write() as session:
        row = await session.get(ContainerModel, container_id)
        assert row is not None
        row.runtime_id = obj.id
    return container_id


async def test_logs_whole_and_tail(harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime) -> None:
    container_id = await started_container(harness, client, fake_runtime)
    whole = await client.get(f"/api/v1/containers/{container_id}/logs")
    assert whole.status_code == 200, whole.text
    assert whole.headers["content-type"].startswith("text/plain")
    assert whole.text == "one\ntwo\nthree\n"
    tail = await client.get(f"/api/v1/containers/{container_id}/logs", params={"tail": 2})
    assert tail.text == "two\nthree\n"


async def test_logs_follow_streams(harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime) -> None:
    container_id = await started_container(harness, client, fake_runtime)
    received = b""
    async with client.stream(
        "GET", f"/api/v1/containers/{container_id}/logs", params={"follow": "true", "since": "1714564800"}
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        async for chunk in answer.aiter_bytes():
            received += chunk
    assert received == b"one\ntwo\nthree\n"


async def test_logs_errors(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_started = await create_one(client, await make_template(client))
    answer = await client.get(f"/api/v1/containers/{not_started}/logs")
    assert answer.status_code == 409
    assert "has not started yet" in answer.json()["message"]

    container_id = await started_container(harness, client, fake_runtime)
    url = f"/api/v1/containers/{container_id}/logs"
    for params, field in (({"tail": -1}, "tail"), ({"tail": 100_001}, "tail"), ({"since": "last week"}, "since")):
        bad = await client.get(url, params=params)
        assert bad.status_code == 422
        assert bad.json()["details"][0]["field"] == field

    async def unreachable(object_id: str, **_: object) -> AsyncIterator[bytes]:
        raise RuntimeUnavailable("engine socket refused the connection")
        yield b""  # makes this an async generator, as runtimes' logs are

    monkeypatch.setattr(fake_runtime, "logs", unreachable)
    down = await client.get(url)
    assert down.status_code == 503
    assert down.json()["reason"] == "UNAVAILABLE"
    assert "retry" in down.json()["message"]

    monkeypatch.undo()
    fake_runtime.vanish((await _row(harness, container_id)).runtime_id)
    gone = await client.get(url)
    assert gone.status_code == 409
    assert "not found" in gone.json()["message"]


async def _row(harness: Harness, container_id: str) -> ContainerModel:
    async with harness.context.db.read_session() as session:
        row = await session.get(ContainerModel, container_id)
        assert row is not None
        return row


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1714564800", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("", None),
        # At or before the epoch: from the beginning (the docker SDK refuses such a `since`).
        ("0", None),
        ("-1", None),
        ("-1e300", None),
        ("1970-01-01T00:00:00Z", None),
        ("0001-01-01T00:00:00", None),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),  # the future: nothing yet
    ],
)
def test_parse_since(text: str, expected: datetime | None) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "nan", "inf", "1e300", "10000-01-01T00:00:00Z"])
def test_parse_since_refuses_what_is_not_a_time(text: str) -> None:
    with pytest.raises(InvalidField) as caught:
        parse_since(text)
    assert caught.value.details[0]["field"] == "since"
