"""A real PostgreSQL server for the tests: initdb into a temporary directory, listen on a Unix socket
and a free loopback port, one fresh database per test."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def _bin(name: str) -> str | None:
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    return shutil.which(name)


def client_tool(name: str) -> str:
    """The path of a PostgreSQL client program (`pg_dump`, `pg_restore`), installed with the server's."""
    path = _bin(name)
    assert path, f"{name} not installed (apt-get install postgresql)"
    return path


def postgres_available() -> str | None:
    """None when the tests can start PostgreSQL here; otherwise why not."""
    if _bin("initdb") is None or _bin("pg_ctl") is None:
        return "PostgreSQL server binaries not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dockyard-pg-"))
        self.port = _free_port()
        self.data = self.dir / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, cwd="/")

    def start(self) -> None:
        initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
        assert initdb
        assert pg_ctl
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        pg_ctl = _bin("pg_ctl")
        assert pg_ctl
        subprocess.run(
            [*self._as_user, pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            cwd="/",
        )
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        import asyncpg

        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres", database="postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)
