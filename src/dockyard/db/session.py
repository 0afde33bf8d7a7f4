"""Engines and sessions for SQLite and PostgreSQL.

SQLite is tuned for a server: WAL (readers never block the writer), a busy timeout, foreign keys on, and
write transactions that start with `BEGIN IMMEDIATE`. A deferred transaction that reads and then writes
can fail with SQLITE_BUSY at its first write, whatever the busy timeout, because SQLite cannot upgrade a
reader past a concurrent writer; taking the write lock at BEGIN makes writers queue instead. Reads keep
plain deferred transactions so they never wait on a writer. On PostgreSQL both kinds are the same.

Durability: `synchronous=NORMAL` in WAL mode syncs the log at checkpoints, not at each commit. A committed
transaction is in the WAL file when COMMIT returns, so it survives the process's crash or SIGKILL (what the
jobs' durability promise is about, docs/architecture.md); only a power loss or an OS crash can take the
last commits back, never corrupt the database. `FULL` would add an fsync to every commit, which bounds a
disk's commits to its sync rate for nothing a server process's crash needs.

One writer at a time: SQLite has a single write lock, and a writer that finds it taken does not queue for it
but sleeps in the busy handler (1, 2, 5, ... up to 100 ms per retry) and tries again, so concurrent write
transactions on separate connections waste most of their time asleep while the lock is free. A file
database's write sessions therefore share one connection (a pool of one, `_WRITERS`): writers wait for it
in the pool's FIFO and take it the moment the previous transaction ends, and the busy handler is left to
other processes (a `dockyard admin` command). Reads keep their own pool and never wait on that connection.

Point reads (`Database.first`): a read session on aiosqlite costs a hop to the driver's thread and back for
each of its steps (BEGIN, cursor, execute, fetch, close, end), each a wait for a turn of the event loop and
for the GIL, many times what SQLite takes to answer a lookup by primary key, and under load every hop waits
behind every request in flight. On a file database `first` therefore reads on the event loop's own thread,
through the standard library's synchronous driver and the same SQLAlchemy statement. Even one hop to a reader
thread measured worse while `run` submissions kept the loop busy: the hop costs more than the read
(bench/RESULTS.md, "A point read on SQLite"). Under WAL a reader never waits for the writer, so the read
cannot stall the loop on a lock; its connection's busy timeout is zero, and the rare SQLITE_BUSY a reader can
still meet (another process recovering the WAL) sends that read through the async session, which may wait.
PostgreSQL, and SQLite in memory (which lives in one connection), read through the async engine.

Fencing: a write transaction opened by a control loop while it runs under a lease checks that lease first and
raises `LeaseLost` when its process no longer holds it (db/fence.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Engine, Executable, Row, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from dockyard.db.fence import CURRENT_FENCE

_IMMEDIATE = "dockyard_begin_immediate"
# A write session waits this long for the write connection, as long as the busy timeout lets it wait for the lock.
_WRITE_WAIT_SECONDS = 30.0
_WRITERS = {"pool_size": 1, "max_overflow": 0, "pool_timeout": _WRITE_WAIT_SECONDS}


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _in_memory(url: str) -> bool:
    """An in-memory SQLite database lives in its connection, so readers and the writer must share the engine."""
    database = make_url(url).database
    return not database or database == ":memory:" or "mode=memory" in url


def _configure_sqlite(engine: Engine, busy_timeout_ms: int = int(_WRITE_WAIT_SECONDS * 1000)) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that BEGIN is ours to emit (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """Owns the engine; hands out read sessions and write sessions (see module docstring)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        # A statement's parameters are user data (job inputs, env values): an error's message, which may reach the
        # log, says the statement but not them.
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if not is_sqlite(url):
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine = create_async_engine(url, **kwargs)
        self._write_engine = self.engine
        self._point_engine: Engine | None = None
        if is_sqlite(url):
            _configure_sqlite(self.engine.sync_engine)
            if not _in_memory(url):
                self._write_engine = create_async_engine(url, echo=echo, hide_parameters=True, **_WRITERS)
                _configure_sqlite(self._write_engine.sync_engine)
                # One connection: point reads run one at a time, on the event loop's thread; it never waits for a
                # lock, not even while it connects (the driver's own timeout is zero as well).
                point_url = make_url(url).set(drivername="sqlite")
                self._point_engine = create_engine(
                    point_url, echo=echo, hide_parameters=True, pool_size=1, connect_args={"timeout": 0}
                )
                _configure_sqlite(self._point_engine, busy_timeout_ms=0)
        self._read = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write = async_sessionmaker(
            self._write_engine.execution_options(**{_IMMEDIATE: True}), expire_on_commit=False
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction takes the write lock at once; commits on success, rolls back on error.
        Opened under a control loop's fence, it first checks the fence and raises `LeaseLost` (db/fence.py)."""
        fence = CURRENT_FENCE.get()
        async with self._write() as session, session.begin():
            if fence is not None:
                await fence.check(session, postgres=not is_sqlite(self.url))
            yield session

    def write_session(self) -> AsyncSession:
        """An unstarted write session for callers that manage commit themselves (request dependencies)."""
        return self._write()

    def read_session(self) -> AsyncSession:
        return self._read()

    async def first(self, statement: Executable, params: Mapping[str, Any]) -> Row[Any] | None:
        """The first row of the Core `statement` with `params`, or None, read in a transaction of its own; on a
        file SQLite database on the loop's own thread (see the module docstring). Build `statement` once, with
        bind parameters: a statement object remembers its cache key, which one built per call computes again
        (most of a point read's cost)."""
        if self._point_engine is not None:
            try:
                with self._point_engine.connect() as connection:
                    return connection.execute(statement, params).first()
            except OperationalError:
                pass  # SQLITE_BUSY, or a real error that the async path then raises: read there
        async with self.engine.connect() as connection:
            return (await connection.execute(statement, params)).first()

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._write_engine is not self.engine:
            await self._write_engine.dispose()
        if self._point_engine is not None:
            self._point_engine.dispose()
