"""How `dockyard admin` finds the server's database: the commands open it directly, never through the server.

They refuse to make a database that does not exist unless told to (`--create`): an operator whose shell has
another data dir than the server's (another user's home, a variable not exported) would otherwise get a new, empty
database, and a key that the server has never heard of.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from dockyard.config import Settings

if TYPE_CHECKING:
    from dockyard.db.session import Database

T = TypeVar("T")

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="the server's data dir (default: DOCKYARD_DATA_DIR, else ~/.local/share/dockyard); "
        "DOCKYARD_DATABASE_URL, when set, names the database instead",
        show_default=False,
    ),
]
CreateOption = Annotated[
    bool,
    typer.Option("--create", help="make the database if there is none (a fresh install); without it, that is an error"),
]


class NoDatabase(Exception):
    """No Dockyard database where the settings point; the message says where that was and how to point elsewhere."""


def admin_settings(data_dir: Path | None) -> Settings:
    """The server's settings as this shell gives them, `--data-dir` over `DOCKYARD_DATA_DIR`; the data dir is not
    made (see `open_database`)."""
    from dockyard.config import load_settings

    return load_settings(make_data_dir=False, **({"data_dir": data_dir} if data_dir is not None else {}))


def _data_dir_source(data_dir_option: bool) -> str:
    if data_dir_option:
        return "--data-dir"
    if "DOCKYARD_DATA_DIR" in os.environ:
        return "DOCKYARD_DATA_DIR"
    if "DOCKYARD_CONFIG" in os.environ:
        return "the DOCKYARD_CONFIG file, or the default"
    return "the default for this user"


def _missing(settings: Settings, data_dir_option: bool, why: str, *, creatable: bool = True) -> NoDatabase:
    if settings.database_url:
        where = f"{settings.masked_database_url} (DOCKYARD_DATABASE_URL)"
    else:
        where = f"{settings.resolved_database_url.removeprefix('sqlite+aiosqlite:///')} (in the data dir "
        where += f"{settings.data_dir}, from {_data_dir_source(data_dir_option)})"
    return NoDatabase(
        f"{why} at {where}. Point this command at the server's database with --data-dir DIR or the "
        "DOCKYARD_DATA_DIR / DOCKYARD_DATABASE_URL / DOCKYARD_CONFIG the server runs with "
        "(`systemctl show dockyard -p Environment` shows a service's)"
        + ("; or add --create to make a new one there" if creatable else "")
    )


def _sqlite_has_schema(path: str) -> bool:
    """Whether the SQLite file holds Dockyard's schema, read without making or changing anything."""
    if not os.path.isfile(path):
        return False
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'").fetchone()
    return row is not None


async def _server_has_schema(url: str) -> bool:
    from sqlalchemy import inspect
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: inspect(sync).has_table("alembic_version"))
    finally:
        await engine.dispose()


async def _found(settings: Settings, data_dir_option: bool) -> bool:
    from sqlalchemy.engine import make_url

    from dockyard.db.session import is_sqlite

    url = settings.resolved_database_url
    if is_sqlite(url):
        path = make_url(url).database or ""
        return path != ":memory:" and await asyncio.to_thread(_sqlite_has_schema, path)
    try:
        return await _server_has_schema(url)
    except Exception as exc:  # the driver's own errors: a refused connection, a database that does not exist
        why = f"cannot read a database ({type(exc).__name__})"
        raise _missing(settings, data_dir_option, why, creatable=False) from None


def on_database(settings: Settings, create: bool, data_dir_option: bool, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run `work(db)` on the server's database, brought to this version's schema as the server does at start. A
    database that does not exist is made (with a fresh install's defaults) only when `create` is true; otherwise
    the command fails naming where it looked. `data_dir_option`: whether `--data-dir` was given, for that message."""
    from dockyard.cli.output import fail
    from dockyard.config import ensure_private_dir
    from dockyard.db.migrate import migrate
    from dockyard.db.session import Database
    from dockyard.errors import ApiError
    from dockyard.services.bootstrap import bootstrap

    async def run() -> T:
        found = await _found(settings, data_dir_option)
        if not found and not create:
            raise _missing(settings, data_dir_option, "no Dockyard database")
        if not found:
            ensure_private_dir(settings.data_dir)
        db = Database(settings.resolved_database_url)
        try:
            # The defaults are the server's to keep up to date (its inventory, its engine): only a new database
            # gets them from here.
            await migrate(db.url, after=None if found else (lambda: bootstrap(db, settings)))
            return await work(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(run())
    except NoDatabase as exc:
        fail(str(exc))
    except ApiError as exc:  # what the API would answer 4xx: the same message, which says what to do
        fail(exc.message)
