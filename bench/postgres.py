"""A private PostgreSQL server for one benchmark run: initdb into a directory of its own, listening on a free
loopback port, stopped (immediately: its data is the run's) and removed on exit."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import processes


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True) or [shutil.which(name) or ""]
    if not found[0]:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found[0]


@contextmanager
def postgres() -> Iterator[str]:
    """Start the server; yield the SQLAlchemy URL of its `postgres` database."""
    # Not under the run's directory: as root the server runs as `postgres`, which cannot enter that one.
    directory = Path(tempfile.mkdtemp(prefix="dockyard-bench-pg-"))
    # initdb refuses to run as root: the server then runs as the `postgres` user, which owns its directory.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(directory, "postgres", "postgres")
    data, port = directory / "data", processes.free_port()
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr[-2000:]}")

    run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c max_connections=300"
    run(pg_ctl, "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w", "start")
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, cwd="/")
        shutil.rmtree(directory, ignore_errors=True)
