"""`Database.first`, the point read (db/session.py), on SQLite and PostgreSQL: it answers committed rows, and only
those, with the column types applied. On a SQLite file it reads without waiting for a writer that holds the
write lock, and a read that meets SQLITE_BUSY goes through the async engine, which waits for the lock without
stalling the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from dockyard.db.session import Database

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("size", Integer),
    Column("made_at", DateTime(timezone=True)),
)
BY_ID = select(things.c.size, things.c.made_at).where(things.c.id == bindparam("id"))
MADE_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


async def _database(url: str) -> Database:
    database = Database(url)
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    async with database.write() as session:
        await session.execute(insert(things).values(id="a", size=1, made_at=MADE_AT))
    return database


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await _database(database_url)
    yield database
    await database.dispose()


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[tuple[Database, Path]]:
    """SQLite's locks only: a PostgreSQL reader never waits for a writer."""
    path = tmp_path / "point.db"
    database = await _database(f"sqlite+aiosqlite:///{path}")
    yield database, path
    await database.dispose()


async def test_first_answers_a_committed_row_with_its_types_or_none(db: Database) -> None:
    row = await db.first(BY_ID, {"id": "a"})
    assert row is not None
    assert row.size == 1
    assert row.made_at.replace(tzinfo=UTC) == MADE_AT  # a datetime, not SQLite's text
    assert await db.first(BY_ID, {"id": "missing"}) is None


async def test_first_sees_a_commit_and_never_an_uncommitted_write(db: Database) -> None:
    async with db.write() as session:
        await session.execute(insert(things).values(id="b", size=2, made_at=MADE_AT))
        assert await db.first(BY_ID, {"id": "b"}) is None  # the writer's transaction is still open
    row = await db.first(BY_ID, {"id": "b"})
    assert row is not None
    assert row.size == 2


async def test_on_sqlite_a_point_read_does_not_wait_for_a_writer_holding_the_lock(
    sqlite_db: tuple[Database, Path],
) -> None:
    db, path = sqlite_db
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE things SET size = 99 WHERE id = 'a'")
        # The lock is released only after the read: a read that waited for it would never answer.
        row = await db.first(BY_ID, {"id": "a"})
        assert row is not None
        assert row.size == 1  # the committed value, while the writer holds the lock
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_on_sqlite_a_busy_point_read_waits_off_the_event_loop(sqlite_db: tuple[Database, Path]) -> None:
    db, path = sqlite_db
    # An exclusive-mode writer locks readers out even under WAL, and takes that lock only while it is the one
    # connection open: the server's pooled ones are closed first (they reopen on their next use).
    await db.dispose()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("UPDATE things SET size = 7 WHERE id = 'a'")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def release() -> None:
        await asyncio.sleep(0.5)
        other.execute("COMMIT")
        other.close()  # the exclusive lock ends with the connection

    ticker = asyncio.create_task(tick())
    releaser = asyncio.create_task(release())
    try:
        row = await db.first(BY_ID, {"id": "a"})
    finally:
        ticker.cancel()
        await releaser
    assert row is not None
    assert row.size == 7  # read after the writer let go, through the async engine
    assert ticks >= 10  # the loop kept running while the read waited: it did not sleep on the lock


async def test_an_errors_message_says_the_statement_but_not_its_parameters(db: Database) -> None:
    """A statement's parameters are user data (a job's input, an env value): the message of the error it raises,
    which reaches the log when nobody handles it, leaves them out."""
    planted = "planted-secret-parameter"
    async with db.write() as session:
        await session.execute(insert(things).values(id=planted, size=3, made_at=MADE_AT))
    with pytest.raises(IntegrityError) as caught:
        await _insert_again(db, planted)
    assert "INSERT INTO things" in str(caught.value)
    assert planted not in str(caught.value)


async def _insert_again(db: Database, thing_id: str) -> None:
    async with db.write() as session:
        await session.execute(insert(things).values(id=thing_id, size=3, made_at=MADE_AT))
