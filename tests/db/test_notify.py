"""The bus on PostgreSQL: two buses on one real database deliver to each other, coalesce what was published in one
turn into few notifications, ignore their own echo, and tell every subscriber `EVERYTHING` after the listening
connection was lost, then go on delivering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from dockyard.core.bus import EVERYTHING, Topic
from dockyard.db.notify import CHANNEL, PAYLOAD_LIMIT, PostgresBus, asyncpg_dsn, parse, payloads
from tests.pg import PostgresServer, postgres_available

WAIT = 10.0  # a bound on a delivery that would otherwise hang; deliveries take milliseconds


@pytest.fixture
async def url(postgres: PostgresServer | None) -> str:
    if postgres is None:
        pytest.skip(f"PostgreSQL skipped: {postgres_available()}")
    return await postgres.create_database()


@pytest.fixture
async def buses(url: str) -> AsyncIterator[tuple[PostgresBus, PostgresBus]]:
    first, second = PostgresBus(url, check_interval=0.5), PostgresBus(url, check_interval=0.5)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


class Seen:
    """What a subscriber received, and a wait for the next key."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, key: str) -> None:
        self.keys.append(key)
        self._changed.set()

    async def until(self, key: str) -> None:
        async with asyncio.timeout(WAIT):
            while key not in self.keys:
                self._changed.clear()
                await self._changed.wait()


def test_signals_are_packed_into_payloads_under_the_limit_and_read_back() -> None:
    signals = [(Topic.JOB_CHANGED, f"job-{n:06d}") for n in range(2000)]
    packed = payloads("origin-1", signals)
    assert len(packed) > 1
    assert all(len(p.encode()) <= PAYLOAD_LIMIT for p in packed)
    read = [parse(p) for p in packed]
    assert {origin for origin, _ in read} == {"origin-1"}
    assert [signal for _, part in read for signal in part] == signals
    # A key too long for any payload is dropped rather than refused by PostgreSQL at every retry.
    assert payloads("o", [(Topic.ROUTES, "x" * PAYLOAD_LIMIT), (Topic.ROUTES, "e1")]) == ["o\nroutes e1"]
    # A topic this process does not know (a newer one's) is skipped, the rest kept.
    assert parse("o\nnot_a_topic k\nroutes e1") == ("o", [(Topic.ROUTES, "e1")])


def test_the_address_asyncpg_connects_to_drops_the_driver_name() -> None:
    dsn = asyncpg_dsn("postgresql+asyncpg://user:secret@db.example:5433/dockyard")
    assert dsn == "postgresql://user:secret@db.example:5433/dockyard"


async def test_a_publish_reaches_this_process_at_once_and_the_other_soon(
    buses: tuple[PostgresBus, PostgresBus],
) -> None:
    first, second = buses
    here, there = Seen(), Seen()
    first.subscribe(Topic.JOB_QUEUED, here)
    second.subscribe(Topic.JOB_QUEUED, there)
    first.subscribe(Topic.ROUTES, here)  # another topic: not told of job_queued

    first.publish(Topic.JOB_QUEUED, "endpoint-1")
    assert here.keys == ["endpoint-1"]  # within the call
    await there.until("endpoint-1")
    first.publish(Topic.JOB_QUEUED, "endpoint-2")
    await there.until("endpoint-2")
    # The first bus heard its own notifications come back and ignored them: each key reached it once.
    assert here.keys == ["endpoint-1", "endpoint-2"]
    assert there.keys == ["endpoint-1", "endpoint-2"]


async def test_what_is_published_in_one_turn_goes_in_few_notifications(
    url: str, buses: tuple[PostgresBus, PostgresBus]
) -> None:
    first, second = buses
    received: list[str] = []
    all_heard = asyncio.Event()

    def heard(*args: Any) -> None:
        received.append(args[-1])
        if sum(len(parse(p)[1]) for p in received) >= len(keys):
            all_heard.set()

    keys = [f"job-{n:06d}" for n in range(1000)]
    listener = await asyncpg.connect(asyncpg_dsn(url))
    await listener.add_listener(CHANNEL, heard)
    there = Seen()
    second.subscribe(Topic.JOB_CHANGED, there)
    try:
        for key in keys:
            first.publish(Topic.JOB_CHANGED, key)
        first.publish(Topic.JOB_CHANGED, keys[0])  # the same signal again: sent once
        await there.until(keys[-1])
        await asyncio.wait_for(all_heard.wait(), WAIT)
    finally:
        await listener.close()
    # 1000 keys of 20 bytes a line fit in 3 payloads; one notification each would be 1000.
    assert len(received) <= 3
    assert sorted(there.keys) == keys


async def test_a_lost_listening_connection_tells_everything_and_delivery_goes_on(
    url: str, buses: tuple[PostgresBus, PostgresBus]
) -> None:
    first, second = buses
    jobs, routes = Seen(), Seen()
    second.subscribe(Topic.JOB_QUEUED, jobs)
    second.subscribe(Topic.ROUTES, routes)
    listener: Any = second._listener
    assert listener is not None
    admin = await asyncpg.connect(asyncpg_dsn(url))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", listener.get_server_pid())
    finally:
        await admin.close()

    await jobs.until(EVERYTHING)
    await routes.until(EVERYTHING)
    assert second._listener is not listener
    first.publish(Topic.JOB_QUEUED, "after")
    await jobs.until("after")
