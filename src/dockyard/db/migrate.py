"""Schema migrations at server start: run once, even when several servers start together.

PostgreSQL serialises starters with an advisory lock held on the migrating connection; SQLite (one host
by nature) with an exclusive `flock` on a file beside the database. The loser of the race waits, then
finds the schema at head and does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from dockyard.db.session import is_sqlite

_MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_KEY = 0x646F636B  # "dock"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def _upgrade_async(url: str, after: Callable[[], Awaitable[object]] | None) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            if not is_sqlite(url):
                # A session-level lock: it outlives the commits below and is held until the explicit unlock,
                # so `after` runs under it too (two servers bootstrapping at once would both insert defaults).
                await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
            try:
                await conn.run_sync(_upgrade)
                await conn.commit()
                if after:
                    await after()
            finally:
                if not is_sqlite(url):
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
                    await conn.commit()
    finally:
        await engine.dispose()


def _own_files(database: Path, lock: Path) -> None:
    """Make the database file (and the lock file) before SQLite does, readable and writable by the owner only, and
    tighten one an earlier version left open to others. SQLite creates the -wal and -shm files with the database's
    permissions, so they follow; any left from before are tightened too."""
    for path in (database, lock):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for path in (database, lock, Path(f"{database}-wal"), Path(f"{database}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)


async def migrate(url: str, after: Callable[[], Awaitable[object]] | None = None) -> None:
    """Bring the schema to head, then run `after` (idempotent bootstrap) under the same exclusion."""
    database = make_url(url).database if is_sqlite(url) else None
    if not database or database == ":memory:":  # PostgreSQL's advisory lock, or a private in-memory database
        await _upgrade_async(url, after)
        return
    lock_path = Path(f"{database}.migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    await asyncio.to_thread(_own_files, Path(database), lock_path)
    lock_file = await asyncio.to_thread(lock_path.open, "a")
    with lock_file:
        await asyncio.to_thread(fcntl.flock, lock_file.fileno(), fcntl.LOCK_EX)
        try:
            await _upgrade_async(url, after)
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
