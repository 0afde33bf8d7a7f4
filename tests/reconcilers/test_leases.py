"""The control lease on SQLite and PostgreSQL: one leader among supervisors sharing a database, a holder that
cannot renew stops leading within the lease, a takeover raises the token, and a write fenced with a token that is
no longer the lease's is refused."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url

from dockyard.core.loops import LoopName
from dockyard.core.status import ProcessKind
from dockyard.db.fence import CURRENT_FENCE, Fence, LeaseLost
from dockyard.db.models import LeaseModel, OrganizationModel
from dockyard.db.session import Database, is_sqlite
from dockyard.reconcilers.supervisor import LEASE_NAME, Supervisor
from dockyard.services.processes import ProcessRecord
from tests.conftest import Harness

LEASE = 2.0  # renewals and tries every 0.4 s


class Counting:
    name = LoopName.JOBS
    interval = 0.05

    def __init__(self) -> None:
        self.passes = 0
        self.ran = asyncio.Event()

    async def reconcile_once(self) -> None:
        self.passes += 1
        self.ran.set()


class Writing(Counting):
    """Each pass writes an organization row, as a reconciler writes what it observed."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db

    async def reconcile_once(self) -> None:
        await super().reconcile_once()
        async with self.db.write() as session:
            session.add(OrganizationModel(name=f"pass-{id(self)}-{self.passes}"))


@asynccontextmanager
async def supervisors(url: str, count: int) -> AsyncIterator[list[tuple[Supervisor, Counting]]]:
    """`count` supervisors, each on a database connection of its own as separate servers would be, with a process
    row it heartbeats, each running one counting loop."""
    made: list[tuple[Supervisor, Counting, Database]] = []
    try:
        for _ in range(count):
            db = Database(url)
            process = ProcessRecord(db, ProcessKind.SERVER, "127.0.0.1:0", lease_seconds=LEASE)
            supervisor = Supervisor(db, CollectorRegistry(), lease_seconds=LEASE, process=process)
            loop = Counting()
            await supervisor.start([loop])
            made.append((supervisor, loop, db))
        yield [(supervisor, loop) for supervisor, loop, _ in made]
    finally:
        for supervisor, _, db in made:
            await supervisor.stop()
            await db.dispose()


async def until(what: str, check: object, deadline: float) -> float:
    """Seconds until `check()` is true; the test fails naming `what` after `deadline` seconds."""
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - started < deadline, f"not within {deadline} s: {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def lease_row(db: Database) -> LeaseModel:
    async with db.read() as session:
        row = await session.scalar(select(LeaseModel).where(LeaseModel.name == LEASE_NAME))
        assert row is not None
        return row


def leaders(group: list[tuple[Supervisor, Counting]]) -> list[Supervisor]:
    return [supervisor for supervisor, _ in group if supervisor.is_leader]


async def test_one_of_two_supervisors_leads_and_the_other_takes_over_with_a_higher_token(harness: Harness) -> None:
    db = harness.context.db
    async with supervisors(db.url, 2) as group:
        await until("a leader", lambda: leaders(group), 10)
        started = time.monotonic()
        while time.monotonic() - started < 2 * LEASE:  # several renewals and tries
            assert len(leaders(group)) == 1
            await asyncio.sleep(0.05)
        (leader,) = leaders(group)
        assert [loop.passes > 0 for s, loop in group] == [s is leader for s, _ in group]
        first = await lease_row(db)
        assert first.holder == leader.holder
        assert first.acquired_at is not None
        await until("the first passes recorded", lambda: leader.fence is not None, 1)
        assert (await lease_row(db)).first_pass_at is not None

        # Someone else holds it now, as far as the database says: the holder finds out at its next renewal, and
        # once that holder's lease expires one of the two takes it under a new token.
        async with db.write() as session:
            await session.execute(update(LeaseModel).values(holder="elsewhere:1:x", token=LeaseModel.token + 1))
        await until("the holder stopping", lambda: not leader.is_leader, LEASE)
        taken = await until("a takeover", lambda: leaders(group), 2 * LEASE)
        assert taken < LEASE + LEASE / 5 + 1.0
        (new_leader,) = leaders(group)
        row = await lease_row(db)
        assert row.holder == new_leader.holder
        assert row.token == first.token + 2
        assert new_leader.fence is not None
        assert new_leader.fence.token == row.token


async def test_a_holder_that_cannot_renew_stops_leading_within_the_lease(harness: Harness) -> None:
    """The holder's renewals hang (its writes wait on a lock held elsewhere, as a cut connection would leave
    them): it stops leading no later than one lease after its last renewal, and then runs no pass."""
    db = harness.context.db
    async with supervisors(db.url, 1) as group:
        ((supervisor, loop),) = group
        await until("leading", lambda: supervisor.is_leader, 10)
        async with blocked_writes(db.url):
            stopped = await until("the holder stopping", lambda: not supervisor.is_leader, 2 * LEASE)
            assert stopped <= LEASE + 0.5
            passes = loop.passes
            await asyncio.sleep(0.3)
            assert loop.passes == passes
        # Writes flow again: it takes the lease back, under a new token.
        token = (await lease_row(db)).token
        await until("leading again", lambda: supervisor.is_leader, 3 * LEASE)
        assert (await lease_row(db)).token == token + 1


@asynccontextmanager
async def blocked_writes(url: str) -> AsyncIterator[None]:
    """Every write to the lease waits until the block ends: SQLite's write lock, or PostgreSQL's row lock, held
    by a connection of the test's."""
    if is_sqlite(url):
        connection = sqlite3.connect(make_url(url).database or "", isolation_level=None, check_same_thread=False)
        # In a thread: the write in flight that it waits for needs this event loop to end.
        await asyncio.to_thread(connection.execute, "BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    other = Database(url)
    try:
        async with other.write() as session:
            await session.execute(text("SELECT 1 FROM leases FOR UPDATE"))
            yield
    finally:
        await other.dispose()


async def write_under(db: Database, fence: Fence, name: str) -> None:
    reset = CURRENT_FENCE.set(fence)
    try:
        async with db.write() as session:
            session.add(OrganizationModel(name=name))
    finally:
        CURRENT_FENCE.reset(reset)


async def org_names(db: Database) -> set[str]:
    async with db.read() as session:
        return set(await session.scalars(select(OrganizationModel.name)))


async def test_a_write_fenced_with_an_old_token_is_refused(harness: Harness) -> None:
    db = harness.context.db
    async with supervisors(db.url, 1) as group:
        ((supervisor, _),) = group
        await until("leading", lambda: supervisor.is_leader, 10)
        fence = supervisor.fence
        assert fence is not None
        await write_under(db, fence, "current-token")
        old = Fence(fence.lease, fence.holder, fence.token - 1)
        with pytest.raises(LeaseLost, match="no longer held"):
            await write_under(db, old, "old-token")
        other = Fence(fence.lease, "elsewhere:1:x", fence.token)
        with pytest.raises(LeaseLost):
            await write_under(db, other, "other-holder")
        # API writes carry no fence and are never refused.
        async with db.write() as session:
            session.add(OrganizationModel(name="unfenced"))
        names = await org_names(db)
        assert {"current-token", "unfenced"} <= names
        assert not {"old-token", "other-holder"} & names


async def test_a_pass_whose_write_is_refused_ends_and_its_supervisor_stops_leading(harness: Harness) -> None:
    db = harness.context.db
    other = Database(db.url)
    registry = CollectorRegistry()
    supervisor = Supervisor(other, registry, lease_seconds=30.0)  # no expiry: only the refused write ends it
    loop = Writing(other)
    await supervisor.start([loop])
    try:
        await until("a pass", lambda: loop.passes > 0, 10)
        async with db.write() as session:
            await session.execute(update(LeaseModel).values(holder="elsewhere:1:x", token=LeaseModel.token + 1))
        await until("the holder stopping", lambda: not supervisor.is_leader, 5)
        refused = registry.get_sample_value("dockyard_reconcile_passes_total", {"loop": "jobs", "result": "lease_lost"})
        assert refused is not None
        assert refused >= 1
        passes = loop.passes
        await asyncio.sleep(0.3)
        assert loop.passes == passes
    finally:
        await supervisor.stop()
        await other.dispose()


async def test_the_takeover_waits_for_a_fenced_write_in_flight_on_postgresql(harness: Harness) -> None:
    """A takeover's UPDATE of the lease waits for the old holder's write that is under way, and every write of
    the old holder after it is refused: the old holder can never write between the two."""
    db = harness.context.db
    if is_sqlite(db.url):
        pytest.skip("SQLite has one writer at a time: no write can be in flight beside the takeover")
    async with supervisors(db.url, 1) as group:
        ((supervisor, _),) = group
        await until("leading", lambda: supervisor.is_leader, 10)
        fence = supervisor.fence
        assert fence is not None
        release = asyncio.Event()
        checked = asyncio.Event()

        async def slow_write() -> None:
            reset = CURRENT_FENCE.set(fence)
            try:
                async with db.write() as session:
                    checked.set()
                    await release.wait()
                    session.add(OrganizationModel(name="in-flight"))
            finally:
                CURRENT_FENCE.reset(reset)

        writing = asyncio.create_task(slow_write())
        await checked.wait()
        taker = Database(db.url)
        try:

            async def take_over() -> None:
                async with taker.write() as session:
                    await session.execute(update(LeaseModel).values(holder="taker:1:x", token=LeaseModel.token + 1))

            takeover = asyncio.create_task(take_over())
            await asyncio.sleep(0.5)
            assert not takeover.done()  # waiting on the write's FOR SHARE lock
            release.set()
            await writing
            await asyncio.wait_for(takeover, 10)
        finally:
            await taker.dispose()
        with pytest.raises(LeaseLost):
            await write_under(db, fence, "after-takeover")
        names = await org_names(db)
        assert "in-flight" in names
        assert "after-takeover" not in names


async def test_a_clean_stop_releases_the_lease_for_the_next_try(harness: Harness) -> None:
    db = harness.context.db
    first = Supervisor(Database(db.url), CollectorRegistry(), lease_seconds=30.0)
    second_db = Database(db.url)
    second = Supervisor(second_db, CollectorRegistry(), lease_seconds=30.0)
    await first.start([Counting()])
    try:
        await until("leading", lambda: first.is_leader, 10)
        await second.start([Counting()])
        await first.stop()
        assert (await lease_row(db)).holder == ""
        # Far sooner than the 30 s lease would have expired: at the second's next try (every 6 s).
        await until("the other leading", lambda: second.is_leader, 30.0 / 5 + 2)
    finally:
        await first.stop()
        await first.db.dispose()
        await second.stop()
        await second_db.dispose()
