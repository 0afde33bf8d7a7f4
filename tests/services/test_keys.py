"""The key cache of services/keys.py (a server context's `KeyCache`) on a real database: one lookup per key however
many requests bring it at once, an expired entry answering while its one refresh runs, and a revocation that a
lookup in flight cannot undo."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from dockyard.errors import Unauthorized
from dockyard.services import keys
from tests.conftest import Harness


@pytest.fixture
def key_queries(harness: Harness) -> Iterator[list[str]]:
    """Every SQL statement that reads the API keys table, as the server runs it."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM api_keys" in statement:
            seen.append(statement)

    engine = harness.context.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


async def new_key(harness: Harness) -> tuple[str, str]:
    async with harness.context.db.write_session() as session:
        org = await keys.get_or_create_org(session, "cache")
        member = await keys.get_or_create_member(session, org, "default")
        row, key = await keys.create_key(session, org, member)
        await session.commit()
        return row.id, key


async def test_a_key_brought_by_many_requests_at_once_is_looked_up_once(
    harness: Harness, key_queries: list[str]
) -> None:
    _, key = await new_key(harness)
    principals = await asyncio.gather(*(keys.authenticate(harness.context, key) for _ in range(50)))
    assert {p.org_id for p in principals} == {principals[0].org_id}
    assert len(key_queries) == 1
    with pytest.raises(Unauthorized):
        await asyncio.gather(*(keys.authenticate(harness.context, "dy_not-a-key") for _ in range(20)))
    assert len(key_queries) == 2


async def test_an_expired_entry_answers_while_its_one_refresh_runs(
    harness: Harness, key_queries: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = await new_key(harness)
    first = await keys.authenticate(harness.context, key)
    monkeypatch.setattr(keys, "_CACHE_SECONDS", 0.0)  # every entry is expired from now on
    digest = keys.hash_api_key(key)
    harness.context.keys.entries[digest] = (0.0, first)

    answers = [await keys.authenticate(harness.context, key) for _ in range(20)]  # no await yields to the refresh
    assert answers == [first] * 20
    assert len(harness.context.keys.lookups) == 1  # one refresh under way for all twenty
    await asyncio.gather(*harness.context.keys.lookups.values())
    assert len(key_queries) == 2  # the first lookup, then that refresh
    assert not harness.context.keys.lookups


async def test_a_revocation_is_not_undone_by_a_lookup_in_flight(harness: Harness) -> None:
    key_id, key = await new_key(harness)
    lookup = asyncio.create_task(keys.authenticate(harness.context, key))
    await asyncio.sleep(0)  # the lookup has started and reads the key as valid
    async with harness.context.db.write_session() as session:
        await keys.revoke_key(harness.context, session, key_id)
    with contextlib.suppress(Unauthorized):
        await lookup  # it answers its own request from what it read, before or after the revocation
    with pytest.raises(Unauthorized):
        await keys.authenticate(harness.context, key)
