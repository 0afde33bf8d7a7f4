"""Events over a real database: recorded in the caller's transaction, listed per object and organization."""

from __future__ import annotations

from dockyard.services import events
from tests.conftest import Harness


async def test_record_then_list_oldest_first_within_the_limit(harness: Harness) -> None:
    db = harness.context.db
    async with db.write() as session:
        for number in range(3):
            events.record(
                session, org_id="o1", object_kind="container", object_id="c1", type=f"T{number}", message=f"m{number}"
            )
        events.record(session, org_id="o2", object_kind="container", object_id="c1", type="Other", message="x")
        events.record(session, org_id="o1", object_kind="endpoint", object_id="c1", type="Other", message="x")
    async with db.read() as session:
        listed = await events.list_events(session, "o1", "container", "c1", limit=2)
        everything = await events.list_events(session, "o1", "container", "c1")
    assert [(e.type, e.message) for e in listed] == [("T1", "m1"), ("T2", "m2")]
    assert [e.type for e in everything] == ["T0", "T1", "T2"]


async def test_an_event_rolls_back_with_its_transaction(harness: Harness) -> None:
    db = harness.context.db
    try:
        async with db.write() as session:
            events.record(session, org_id="o1", object_kind="container", object_id="c2", type="Started", message="")
            raise RuntimeError("the status change failed")
    except RuntimeError:
        pass
    async with db.read() as session:
        assert await events.list_events(session, "o1", "container", "c2") == []
