"""SlotBroker's decisions on a real database (SQLite and PostgreSQL): two processes' brokers over their own routing
tables, on one database and one bus, each pass run by hand. A worker turning ready has its slots taken; a request
waiting elsewhere marks them wanted and an idle holder hands them over at once; a busy one stops using a wanted slot
after the quantum and hands it over when its request ends; a dead holder's slots come free at their expiry; a
holder that cannot renew stops using its slots before they expire; the rows go with the worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from dockyard.config import Settings
from dockyard.control.slots import SlotBroker
from dockyard.core.bus import Bus, LocalBus
from dockyard.core.planes import EndpointConfig
from dockyard.core.status import EndpointType, WorkerStatus
from dockyard.db.migrate import migrate
from dockyard.db.models import EndpointModel, OrganizationModel, WorkerModel, WorkerSlotModel
from dockyard.db.session import Database
from dockyard.gateway.routes import RouteTable

FAR = 1e9
LEASE = 0.9


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Process:
    routes: RouteTable
    broker: SlotBroker
    clock: Clock

    def slots(self) -> int:
        route = self.routes.get("e1")
        assert route is not None
        return route.dispatcher.slots("w1")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    await migrate(database_url)
    database = Database(database_url)
    async with database.write() as session:
        session.add(OrganizationModel(id="o1", name="acme"))
        await session.flush()
        session.add(
            EndpointModel(
                id="e1",
                org_id="o1",
                type=EndpointType.SYNC,
                name="e",
                product_id="p",
                idc_id="i",
                spec={},
                worker_config={},
                policy={},
            )
        )
        await session.flush()
        session.add(WorkerModel(id="w1", endpoint_id="e1", org_id="o1", generation=1, status=WorkerStatus.READY))
    yield database
    await database.dispose()


def process(db: Database, bus: Bus, name: str, *, quantum: float = 0.1, ready: bool = True) -> Process:
    settings = Settings(slot_lease_seconds=LEASE, slot_quantum_seconds=quantum)
    clock = Clock()
    routes = RouteTable(leased_slots=True)
    routes.configure([EndpointConfig("e1", "o1", EndpointType.SYNC, 60.0, 2, 100)])
    routes.worker_starting("e1", "w1", "http://127.0.0.1:1")
    if ready:
        routes.worker_ready("e1", "w1", "http://127.0.0.1:1")
    return Process(routes, SlotBroker(db, settings, routes, bus, name, clock=clock), clock)


async def holders(db: Database) -> list[str]:
    async with db.read() as session:
        rows = await session.scalars(select(WorkerSlotModel.holder).order_by(WorkerSlotModel.slot))
        return list(rows)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def request(p: Process, stack: AsyncExitStack) -> asyncio.Task[str]:
    """A request on the process's dispatcher that holds its slot until `stack` closes."""
    route = p.routes.get("e1")
    assert route is not None
    done = asyncio.Event()
    stack.callback(done.set)

    async def run() -> str:
        async with route.dispatcher.acquire(FAR) as worker:
            await done.wait()
            return worker

    return asyncio.create_task(run())


async def test_a_worker_turning_ready_has_its_free_slots_taken(db: Database) -> None:
    bus = LocalBus()
    a, b = process(db, bus, "a"), process(db, bus, "b")
    await a.broker.pass_once()
    await b.broker.pass_once()
    assert (a.slots(), b.slots()) == (2, 0)
    assert await holders(db) == ["a", "a"]


async def test_a_starting_workers_slots_are_taken_where_requests_wait_so_its_hand_off_needs_no_pass(
    db: Database,
) -> None:
    a, b = process(db, LocalBus(), "a", ready=False), process(db, LocalBus(), "b", ready=False)
    await b.broker.pass_once()
    assert await holders(db) == []  # starting, and nothing waits at b: b takes nothing yet
    async with AsyncExitStack() as stack:
        waiting = request(a, stack)
        await settle()
        await a.broker.pass_once()  # a request waits at a: a takes the starting worker's slots
        assert await holders(db) == ["a", "a"]
        route = a.routes.get("e1")
        assert route is not None
        assert route.dispatcher.queued == 1
        a.routes.worker_ready("e1", "w1", "http://127.0.0.1:1")
        assert route.dispatcher.queued == 0  # handed its slot within the push, no broker pass between
        assert route.dispatcher.in_flight == 1
    assert await waiting == "w1"


async def test_a_waiting_request_is_handed_an_idle_slot_held_elsewhere_at_once(db: Database) -> None:
    bus = LocalBus()
    a, b = process(db, bus, "a"), process(db, bus, "b")
    await a.broker.pass_once()
    await b.broker.pass_once()
    async with AsyncExitStack() as stack:
        waiting = request(b, stack)
        await settle()
        await b.broker.pass_once()  # nothing free: marks one of a's slots wanted and says so on the bus
        assert not waiting.done()
        await a.broker.pass_once()  # a's slots are idle: the wanted one goes back at once
        assert a.slots() == 1
        await b.broker.pass_once()  # the release was published: b takes it
        await settle()
        assert b.slots() == 1
        assert sorted(await holders(db)) == ["a", "b"]
    assert await waiting == "w1"


async def test_a_busy_wanted_slot_gets_no_new_request_after_the_quantum_and_moves_when_its_request_ends(
    db: Database,
) -> None:
    bus = LocalBus()
    a, b = process(db, bus, "a", quantum=0.1), process(db, bus, "b")
    await a.broker.pass_once()
    async with AsyncExitStack() as b_stack:
        async with AsyncExitStack() as first:
            busy = [request(a, first)]
            async with AsyncExitStack() as second:
                busy.append(request(a, second))
                await settle()
                waiting = request(b, b_stack)
                await settle()
                await b.broker.pass_once()
                await a.broker.pass_once()  # within the quantum: both slots still take requests here
                assert a.slots() == 2
                a.clock.now += 0.1
                await a.broker.pass_once()  # past it: the wanted slot takes no new request
                assert a.slots() == 1
                assert await holders(db) == ["a", "a"]  # but stays a's while its request runs
            await settle()  # one of a's requests ended
            await a.broker.pass_once()
            assert sorted(await holders(db)) == ["", "a"]
            await b.broker.pass_once()
            await settle()
            assert waiting.done() is False
            assert b.slots() == 1
        assert [await t for t in busy] == ["w1", "w1"]
    assert await waiting == "w1"


async def test_a_process_asked_for_its_slot_asks_for_none_in_return(db: Database) -> None:
    bus = LocalBus()
    a, b = process(db, bus, "a"), process(db, bus, "b")
    await a.broker.pass_once()
    async with AsyncExitStack() as stack:
        request(b, stack)
        await settle()
        await b.broker.pass_once()
        await a.broker.pass_once()
        await b.broker.pass_once()
        assert (a.slots(), b.slots()) == (1, 1)
        for p in (a, b, a, b):  # each runs one request and queues another
            request(p, stack)
        await settle()
        await b.broker.pass_once()  # b wants a's slot
        a.clock.now += 1  # a's take that found nothing may be tried again
        await a.broker.pass_once()  # a, asked for its slot, does not want b's
        async with db.read() as session:
            rows = await session.execute(select(WorkerSlotModel.holder, WorkerSlotModel.wanted_by))
            wants = {holder: wanted_by for holder, wanted_by in rows}
        assert wants == {"a": "b", "b": ""}


async def test_a_dead_holders_slots_come_free_at_their_expiry(db: Database) -> None:
    a = process(db, LocalBus(), "a")
    await a.broker.pass_once()  # a takes both slots, then dies: it never runs again
    b = process(db, LocalBus(), "b")
    async with AsyncExitStack() as stack:
        waiting = request(b, stack)
        await settle()
        await b.broker.pass_once()
        assert b.slots() == 0
        await asyncio.sleep(LEASE + 0.2)  # the lease's expiry, on the database's clock
        b.clock.now += LEASE  # and b's retry of a take that found nothing
        await b.broker.pass_once()
        await settle()
        assert b.slots() == 2
        assert await holders(db) == ["b", "b"]
    assert await waiting == "w1"


async def test_a_holder_that_cannot_renew_stops_using_its_slots_before_they_expire(
    db: Database, tmp_path: Path
) -> None:
    a = process(db, LocalBus(), "a")
    await a.broker.pass_once()
    assert a.slots() == 2
    a.broker.db = Database(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/db")  # the database out of reach
    a.clock.now += LEASE / 3  # renewal due: it fails
    await a.broker.pass_once()
    assert a.slots() == 2  # still within the lease
    a.clock.now += LEASE / 2  # five sixths of the lease since the last renewal was sent
    await a.broker.pass_once()
    assert a.slots() == 0
    await a.broker.db.dispose()


async def test_a_lost_bus_message_costs_one_renewal(db: Database) -> None:
    a, b = process(db, LocalBus(), "a"), process(db, LocalBus(), "b")  # two buses: nothing crosses
    await a.broker.pass_once()
    async with AsyncExitStack() as stack:
        waiting = request(b, stack)
        await settle()
        await b.broker.pass_once()
        await a.broker.pass_once()
        assert a.slots() == 2  # a heard nothing yet
        a.clock.now += LEASE / 3
        await a.broker.pass_once()  # its renewal returns the want
        assert a.slots() == 1
        b.clock.now += LEASE / 3
        await b.broker.pass_once()
        await settle()
        assert b.slots() == 1
    assert await waiting == "w1"


async def test_stop_hands_every_slot_back_and_the_rows_go_with_the_worker(db: Database) -> None:
    bus = LocalBus()
    a = process(db, bus, "a")
    await a.broker.pass_once()
    await a.broker.stop()
    assert a.slots() == 0
    assert await holders(db) == ["", ""]
    async with db.write() as session:
        await session.execute(delete(WorkerModel).where(WorkerModel.id == "w1"))
    assert await holders(db) == []
