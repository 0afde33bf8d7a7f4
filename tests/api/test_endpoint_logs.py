"""An endpoint's logs: its workers' output, running and removed, merged by time and tagged with each line's worker;
the removed workers' output is capped per worker and per endpoint and pruned after its retention; another
organization gets the 404 of an unknown id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from dockyard.db.models import WorkerLogModel, WorkerModel
from dockyard.services import endpoint_logs
from tests.api.test_admin import assert_error
from tests.api.test_endpoint_workers import URL, started_worker
from tests.api.test_endpoints import create, endpoint_row
from tests.conftest import Harness
from tests.fakes import FakeRuntime


async def removed(harness: Harness, endpoint_id: str, worker_id: str, output: bytes) -> None:
    """What the reconciler does as it removes a worker: its output is kept."""
    org_id = (await endpoint_row(harness, endpoint_id)).org_id
    worker = WorkerModel(id=worker_id, endpoint_id=endpoint_id, org_id=org_id, generation=1)
    await endpoint_logs.keep(harness.context.db, worker, output, settings=harness.context.settings)


async def test_running_and_removed_workers_merged_by_time_and_tagged(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime
) -> None:
    endpoint_id = await create(client)
    running = await started_worker(harness, endpoint_id, fake_runtime)  # its lines: 2026-01-01T00:00:00.000000Z
    await removed(
        harness,
        endpoint_id,
        "gone-1",
        b"2025-12-31T23:59:59.5Z before\n2026-01-01T00:00:01.123456789Z after\n",
    )
    answer = await client.get(f"{URL}/{endpoint_id}/logs")
    assert answer.status_code == 200, answer.text
    assert answer.text.splitlines() == [
        "2025-12-31T23:59:59.500000Z gone-1 before",
        f"2026-01-01T00:00:00.000000Z {running} one",
        f"2026-01-01T00:00:00.000000Z {running} two",
        f"2026-01-01T00:00:00.000000Z {running} three",
        "2026-01-01T00:00:01.123456Z gone-1 after",
    ]
    only = await client.get(f"{URL}/{endpoint_id}/logs", params={"worker": "gone-1", "since": "2026-01-01T00:00:00Z"})
    assert only.text == "2026-01-01T00:00:01.123456Z gone-1 after\n"
    window = await client.get(f"{URL}/{endpoint_id}/logs", params={"until": "2026-01-01T00:00:00Z", "limit": 5})
    assert window.text == "2025-12-31T23:59:59.500000Z gone-1 before\n"
    last = await client.get(f"{URL}/{endpoint_id}/logs", params={"limit": 1})
    assert last.text == "2026-01-01T00:00:01.123456Z gone-1 after\n"


async def test_bad_inputs_and_other_organizations(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime
) -> None:
    endpoint_id = await create(client)
    await started_worker(harness, endpoint_id, fake_runtime)
    url = f"{URL}/{endpoint_id}/logs"
    body = assert_error(await client.get(url, params={"worker": "nope"}), 422)
    assert f"`dockyard endpoints workers {endpoint_id}` lists them" in body["message"]
    assert "until" in assert_error(await client.get(url, params={"until": "soon"}), 422)["message"]
    async with await harness.new_client("globex") as stranger:
        theirs = assert_error(await stranger.get(url), 404)
        unknown = assert_error(await stranger.get(f"{URL}/nope/logs"), 404)
    assert theirs["message"].replace(endpoint_id, "ID") == unknown["message"].replace("nope", "ID")


async def test_kept_output_is_capped_per_worker_and_per_endpoint(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await create(client)
    settings = harness.context.settings
    settings.worker_log_bytes, settings.endpoint_log_bytes = 40, 50
    line = b"2026-01-01T00:00:00Z %d\n"  # 23 bytes a line
    for name in ("w-1", "w-2", "w-3"):
        await removed(harness, endpoint_id, name, b"".join(line % n for n in range(5)))
    async with harness.context.db.read() as session:
        rows = (await session.execute(WorkerLogModel.__table__.select())).all()
    kept = {row.worker_id: row.output for row in rows}
    assert set(kept.values()) == {b"2026-01-01T00:00:00Z 4\n"}  # the last 40 bytes, from the line they start in
    assert sorted(kept) == ["w-2", "w-3"]  # with the oldest the endpoint's would be 69 bytes, past its 50


async def test_prune_drops_what_is_past_its_retention(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await create(client)
    await removed(harness, endpoint_id, "w-1", b"2026-01-01T00:00:00Z kept\n")
    now = datetime.now(UTC)
    settings = harness.context.settings
    settings.worker_log_retention_seconds = 3600
    assert await endpoint_logs.prune(harness.context.db, endpoint_logs.retention_cutoff(settings, now)) == 0
    assert "kept" in (await client.get(f"{URL}/{endpoint_id}/logs")).text
    later = now + timedelta(seconds=3601)
    assert await endpoint_logs.prune(harness.context.db, endpoint_logs.retention_cutoff(settings, later)) == 1
    assert (await client.get(f"{URL}/{endpoint_id}/logs")).text == ""


def test_engine_times_parse_to_microseconds_in_utc() -> None:
    parse = endpoint_logs.parse_time
    assert parse(b"2026-12-06T11:30:00.123456789Z") == datetime(2026, 12, 6, 11, 30, 0, 123456, tzinfo=UTC)
    assert parse(b"2026-12-06T11:30:00.5Z") == datetime(2026, 12, 6, 11, 30, 0, 500000, tzinfo=UTC)
    assert parse(b"2026-12-06T13:30:00+02:00") == datetime(2026, 12, 6, 11, 30, tzinfo=UTC)
    assert parse(b"hello") is None
    assert endpoint_logs.last_bytes(b"aa\nbbb\ncc\n", 7) == b"cc\n"
    assert endpoint_logs.last_bytes(b"aa\n", 7) == b"aa\n"


async def test_follow_streams_the_running_workers_new_lines_after_the_window(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime
) -> None:
    """The window first; then each running worker followed from its end (the fake's follow ends with its output:
    nothing new), so the stream ends when they do."""
    endpoint_id = await create(client)
    running = await started_worker(harness, endpoint_id, fake_runtime)
    await removed(harness, endpoint_id, "gone-1", b"2025-12-31T23:59:59Z before\n")
    received = b""
    async with client.stream("GET", f"{URL}/{endpoint_id}/logs", params={"follow": "true"}) as answer:
        assert answer.status_code == 200
        async for chunk in answer.aiter_bytes():
            received += chunk
    assert received.decode().splitlines() == [
        "2025-12-31T23:59:59.000000Z gone-1 before",
        *(f"2026-01-01T00:00:00.000000Z {running} {word}" for word in ("one", "two", "three")),
    ]
