"""`dockyard admin backup` and `restore`: a SQLite installation's database and its secret key in one archive.

The two only work together: the key (Fernet) decrypts the secrets the database stores (registry passwords, env
values), so a database restored without its key keeps every row and loses every secret. The database is copied
with SQLite's online backup API, a consistent snapshot taken while the server keeps writing (copying the file
could catch a half-applied transaction, or miss what is still in the `-wal` file).

The archive is a gzipped tar of `manifest.json` (its format, the Dockyard version and the schema revision),
`dockyard.db`, `secret.key` and the containers' `ssh/*/authorized_keys` (the files their engine objects mount,
which a restarted container needs in place), written 0600 since it holds the key. A PostgreSQL installation is
backed up with `pg_dump` and a copy of the key (docs/operations.md); these functions refuse it with that advice.
"""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import tarfile
import tempfile
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from dockyard import __version__
from dockyard.config import Settings, ensure_private_dir
from dockyard.db.session import is_sqlite

FORMAT = 1
MANIFEST = "manifest.json"
DATABASE = "dockyard.db"
SECRET_KEY = "secret.key"
SSH_DIR = "ssh"
_SSH_FILE = re.compile(r"ssh/[A-Za-z0-9-]{1,64}/authorized_keys")  # runspec.authorized_keys_path, for any container


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Manifest:
    dockyard: str
    schema: str
    created_at: str


def _sqlite_path(settings: Settings) -> Path:
    url = settings.resolved_database_url
    if not is_sqlite(url):
        raise BackupError(
            "the database is PostgreSQL: back it up with pg_dump and keep a copy of the secret key beside the dump "
            "(docs/operations.md, 'Backup and restore')"
        )
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("the database is in memory; there is nothing to back up")
    return Path(database)


def _secret_key(settings: Settings) -> str:
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / SECRET_KEY
    if not path.is_file():
        raise BackupError(
            f"no secret key at {path} and DOCKYARD_SECRET_KEY is not set: point --data-dir at the server's data dir"
        )
    return path.read_text().strip()


def _schema_revision(database: Path) -> str:
    """The schema revision of a copy of the database, once SQLite finds it whole."""
    try:
        with closing(sqlite3.connect(database)) as conn:
            problems = conn.execute("PRAGMA quick_check").fetchone()[0]
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone() if problems == "ok" else None
    except sqlite3.DatabaseError as exc:  # not a database, or one without Dockyard's schema
        raise BackupError(f"the database copied from {database.name} is not a Dockyard database ({exc})") from None
    if problems != "ok":
        raise BackupError(f"the database copied from {database.name} fails SQLite's integrity check ({problems})")
    if row is None:
        raise BackupError(f"the database copied from {database.name} holds no Dockyard schema")
    return str(row[0])


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mode = 0o600
    member.mtime = int(datetime.now(UTC).timestamp())
    archive.addfile(member, io.BytesIO(data))


def backup(settings: Settings, target: Path) -> Manifest:
    """Write the database (a consistent snapshot, the server may keep running) and the secret key to the archive
    `target`, which must not exist yet; returns what its manifest says."""
    database = _sqlite_path(settings)
    if not database.is_file():
        raise BackupError(f"no database at {database}: point --data-dir at the server's data dir")
    key = _secret_key(settings)
    if target.exists():
        raise BackupError(f"{target} exists already; name a new file")
    with tempfile.TemporaryDirectory(prefix=".dockyard-backup-", dir=target.parent) as work:
        snapshot = Path(work) / DATABASE
        with closing(sqlite3.connect(database, timeout=30)) as source, closing(sqlite3.connect(snapshot)) as copy:
            source.backup(copy)
        manifest = Manifest(
            dockyard=__version__, schema=_schema_revision(snapshot), created_at=datetime.now(UTC).isoformat()
        )
        partial = Path(work) / "archive.tar.gz"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w:gz") as archive:
            _add(archive, MANIFEST, json.dumps({"format": FORMAT, **asdict(manifest)}, indent=2).encode())
            _add(archive, DATABASE, snapshot.read_bytes())
            _add(archive, SECRET_KEY, key.encode())
            for path in sorted((settings.data_dir / SSH_DIR).glob("*/authorized_keys")):
                name = path.relative_to(settings.data_dir).as_posix()
                if _SSH_FILE.fullmatch(name) and path.is_file() and not path.is_symlink():
                    _add(archive, name, path.read_bytes())
        try:
            os.link(partial, target)  # never over a file that appeared meanwhile; a whole archive or none
        except FileExistsError:
            raise BackupError(f"{target} exists already; name a new file") from None
    return manifest


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    try:
        member = archive.getmember(name)
    except KeyError:
        raise BackupError(f"the archive has no {name}: it is not a `dockyard admin backup` archive") from None
    extracted = archive.extractfile(member) if member.isfile() else None
    if extracted is None:
        raise BackupError(f"the archive's {name} is not a file: it is not a `dockyard admin backup` archive")
    return extracted.read()


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    from dockyard.db.migrate import alembic_config

    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def restore(settings: Settings, source: Path) -> Manifest:
    """Put the archive's database and secret key where `settings` point, for the server to start on (it migrates
    an older schema at start). Refuses to replace anything: a database there already, or another secret key."""
    database = _sqlite_path(settings)
    try:
        with tarfile.open(source, mode="r:gz") as archive:
            raw_manifest, data, key = (_member(archive, name) for name in (MANIFEST, DATABASE, SECRET_KEY))
            # Only names of the one shape the backup writes: nothing else of an archive reaches the disk.
            ssh_files = {name: _member(archive, name) for name in archive.getnames() if _SSH_FILE.fullmatch(name)}
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"cannot read {source} as a backup archive: {exc}") from None
    try:
        manifest_fields = json.loads(raw_manifest)
        found = manifest_fields["format"]
        manifest = Manifest(**{name: str(manifest_fields[name]) for name in ("dockyard", "schema", "created_at")})
    except (ValueError, TypeError, KeyError):
        raise BackupError(
            f"the manifest of {source} is unreadable: it is not a `dockyard admin backup` archive"
        ) from None
    if found != FORMAT:
        raise BackupError(f"{source} is of archive format {found}; this Dockyard reads format {FORMAT}")
    if manifest.schema not in _known_revisions():
        raise BackupError(
            f"{source} was made by Dockyard {manifest.dockyard}, whose schema ({manifest.schema}) this version does "
            "not know: restore it with that version or a later one"
        )
    stored_key = key.decode().strip()
    if settings.secret_key and settings.secret_key != stored_key:
        raise BackupError(
            "DOCKYARD_SECRET_KEY differs from the archive's secret key, so the stored secrets would not decrypt: "
            "unset it (the key is restored into the data dir) or set it to the archive's"
        )
    key_path = settings.data_dir / SECRET_KEY
    for path in (database, Path(f"{database}-wal")):
        if path.exists():
            raise BackupError(
                f"{path} exists: stop the server and move its database (with any -wal and -shm file) aside first"
            )
    if key_path.exists() and key_path.read_text().strip() != stored_key:
        raise BackupError(f"{key_path} holds another secret key: stop the server and move it aside first")
    ensure_private_dir(settings.data_dir)
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix=".dockyard-restore-", dir=database.parent) as work:
        partial = Path(work) / DATABASE
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if _schema_revision(partial) != manifest.schema:
            raise BackupError(f"the database in {source} does not match its manifest; the archive is damaged")
        try:
            os.link(partial, database)  # never over a database that appeared meanwhile
        except FileExistsError:
            raise BackupError(f"{database} exists: stop the server and move its database aside first") from None
    if not key_path.exists():
        key_fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(key_fd, "w") as out:
            out.write(stored_key)
    for name, content in ssh_files.items():
        path = settings.data_dir / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            (settings.data_dir / SSH_DIR).chmod(0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
    return manifest
