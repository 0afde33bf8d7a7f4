"""`dockyard admin backup` and `restore` (db/backup.py): a SQLite installation's database and secret key, together."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dockyard.cli.admin_db import DataDirOption, admin_settings


def backup(
    archive: Annotated[Path, typer.Argument(help="the archive to write (a new file; it holds the secret key)")],
    data_dir: DataDirOption = None,
) -> None:
    """Write the database (a consistent snapshot; the server may keep running) and its secret key to one archive."""
    from dockyard.cli.output import fail
    from dockyard.db import backup as backups

    try:
        manifest = backups.backup(admin_settings(data_dir), archive)
    except backups.BackupError as exc:
        fail(str(exc))
    typer.echo(f"backed up schema {manifest.schema} of Dockyard {manifest.dockyard} to {archive}")


def restore(
    archive: Annotated[Path, typer.Argument(help="an archive `dockyard admin backup` wrote")],
    data_dir: DataDirOption = None,
) -> None:
    """Restore an archive into a data dir without a database (stop the server, move the old one aside first).

    The server started on it next migrates an older schema to its own."""
    from dockyard.cli.output import fail
    from dockyard.db import backup as backups

    try:
        manifest = backups.restore(admin_settings(data_dir), archive)
    except backups.BackupError as exc:
        fail(str(exc))
    typer.echo(f"restored schema {manifest.schema} of Dockyard {manifest.dockyard}, backed up {manifest.created_at}")
