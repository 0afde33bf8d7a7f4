"""Migrations at start: two server processes migrating one database at once both succeed and the schema
reaches head exactly once (SQLite through its lock file, PostgreSQL through its advisory lock); the
migration matches the models; SQLite's files are readable by their owner only."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from dockyard.db.base import Base
from dockyard.db.migrate import alembic_config, migrate
from dockyard.db.session import Database
from dockyard.services.bootstrap import DEFAULT_PRODUCTS

# What a server does at start (migrate, then bootstrap under the same exclusion), in a process of its own.
# Each waits for the `go` file so that both start migrating together rather than one after the other.
STARTER = """
import asyncio, sys, time
from pathlib import Path
from dockyard.config import Settings
from dockyard.db.migrate import migrate
from dockyard.db.session import Database
from dockyard.services.bootstrap import bootstrap

url, data_dir, go = sys.argv[1:4]
settings = Settings(data_dir=data_dir, database_url=url, engine_url="unix:///nonexistent.sock")
while not Path(go).exists():
    time.sleep(0.005)

async def main():
    db = Database(url)
    try:
        await migrate(url, after=lambda: bootstrap(db, settings))
    finally:
        await db.dispose()

asyncio.run(main())
print("migrated")
"""


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


async def scalars(url: str, query: str) -> list[Any]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(query))).scalars())
    finally:
        await engine.dispose()


async def start_servers_together(url: str, tmp_path: Path, count: int = 2) -> None:
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            STARTER,
            url,
            str(tmp_path / f"data{n}"),
            str(go),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(count)
    ]
    await asyncio.sleep(0.5)  # let both import and wait at the barrier
    go.touch()
    for process in processes:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=180)
        assert process.returncode == 0, stderr.decode()
        assert stdout.decode().strip() == "migrated"


async def test_two_processes_migrate_at_once(database_url: str, tmp_path: Path) -> None:
    await start_servers_together(database_url, tmp_path)

    assert await scalars(database_url, "SELECT version_num FROM alembic_version") == [head()]
    assert await scalars(database_url, "SELECT id FROM idcs") == ["local"]
    assert await scalars(database_url, "SELECT count(*) FROM products") == [len(DEFAULT_PRODUCTS)]
    assert await scalars(database_url, "SELECT count(*) FROM settings WHERE key = 'installation_id'") == [1]
    assert len(await scalars(database_url, "SELECT id FROM nodes")) == 1


async def test_migrating_again_changes_nothing(database_url: str) -> None:
    await migrate(database_url)
    before = await scalars(database_url, "SELECT count(*) FROM alembic_version")
    await migrate(database_url)
    assert before == await scalars(database_url, "SELECT count(*) FROM alembic_version") == [1]


async def test_migration_matches_the_models(database_url: str) -> None:
    await migrate(database_url)

    def differences(connection: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(differences)
    finally:
        await engine.dispose()
    assert diff == [], "the models changed without a migration: regenerate it (scripts/new-migration)"


async def test_the_sqlite_files_are_private(tmp_path: Path) -> None:
    """Created 0600 whatever the umask, the -wal and -shm SQLite makes beside the database included; a database an
    earlier version left readable by others is tightened."""
    database = tmp_path / "fresh" / "dockyard.db"
    url = f"sqlite+aiosqlite:///{database}"
    await migrate(url)
    db = Database(url)
    try:
        async with db.write() as session:  # a write: the -wal and -shm files exist while a connection is open
            await session.execute(text("UPDATE settings SET value = value"))
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm"), Path(f"{database}.migrate.lock")]
        assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {path.name: 0o600 for path in files}
    finally:
        await db.dispose()

    database.chmod(0o644)
    await migrate(url)
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
