"""The `dockyard server` every benchmark group runs: SQLite in a fresh data dir, the run's own Podman service and a
real API key. It may listen on every interface, so that worker containers reach the webhooks, and tells its
database's URL, so that a group can write rows through the project's models. bench/dockyard_target.py adds the
gateway group's endpoint to it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import podman, processes
from dockyard.client import ApiError, Client
from dockyard.config import new_token
from dockyard.services.worker_runspec import CONTAINER_HOST

START_TIMEOUT_S = 120.0
DELETE_TIMEOUT_S = 60.0


def create_key(env: dict[str, str], workdir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", "admin", "create-key", "--org", "bench", "--create"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise processes.StartFailed(f"dockyard admin create-key failed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def installation_id(data_dir: Path) -> str | None:
    """The id that labels every runtime object of this run's Dockyard, from its own database."""
    try:
        with sqlite3.connect(data_dir / "dockyard.db") as db:
            row = db.execute("SELECT value FROM settings WHERE key = 'installation_id'").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def delete_endpoint(client: Client, endpoint_id: str) -> None:
    """Delete through the API and wait until the endpoint is gone, so Dockyard itself removes its worker."""
    client.delete_endpoint(endpoint_id)
    deadline = time.monotonic() + DELETE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            client.get_endpoint(endpoint_id)
        except ApiError as exc:
            if exc.code == 404:
                return
            raise
        time.sleep(0.5)


@dataclass(frozen=True)
class Server:
    """A running server: its base URL, an API key of the `bench` organization, its database's URL, and the token
    that reads its `/metrics`."""

    url: str
    key: str
    database_url: str
    pid: int
    metrics_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def metrics_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.metrics_token}"}


@contextmanager
def dockyard_server(workdir: Path, engine_url: str, *, for_workers: bool = False, **settings: str) -> Iterator[Server]:
    """Start the server and yield it once it answers. `for_workers`: listen on every interface and give workers
    the host's name on the container network, so async workers in containers reach their webhooks. `settings`
    are more `DOCKYARD_*` variables (names without the prefix). On exit, whatever happened: the server is
    stopped and every container labelled with its installation removed."""
    data_dir = workdir / "dockyard-data"
    data_dir.mkdir(mode=0o700)  # as the server makes it (a looser one it tightens, warning)
    port = processes.free_port()
    url = f"http://127.0.0.1:{port}"
    database_url = f"sqlite+aiosqlite:///{data_dir / 'dockyard.db'}"
    metrics_token = new_token()
    env = {
        "DOCKYARD_DATA_DIR": str(data_dir),
        "DOCKYARD_ENGINE_URL": engine_url,
        "DOCKYARD_HOST": "0.0.0.0" if for_workers else "127.0.0.1",
        "DOCKYARD_PORT": str(port),
        "DOCKYARD_PUBLIC_URL": url,
        "DOCKYARD_LOG_LEVEL": "warning",
        "DOCKYARD_METRICS_TOKEN": metrics_token,
        **{f"DOCKYARD_{name.upper()}": value for name, value in settings.items()},
    }
    if for_workers:
        env["DOCKYARD_WORKER_WEBHOOK_URL"] = f"http://{CONTAINER_HOST}:{port}"
    log = workdir / "dockyard-server.log"
    server = None
    try:
        key = create_key({**os.environ, **env}, workdir)
        server = processes.start([sys.executable, "-m", "dockyard", "server"], log, env)
        processes.wait_http(f"{url}/healthz", server, log, START_TIMEOUT_S)
        yield Server(url, key, database_url, server.pid, metrics_token)
    finally:
        if server is not None:
            processes.stop(server)
        if installation := installation_id(data_dir):
            podman.remove_installation_containers(engine_url, installation)
