"""A bare `dockyard server` for the groups that drive its API rather than its gateway: SQLite in a fresh data dir,
the run's own Podman service, a real API key, and no endpoint. bench/dockyard_target.py starts the gateway's
server the same way (its key and installation helpers are reused here); this variation may listen on every
interface, so that worker containers reach the webhooks, and tells its database's URL, so that a group can
write rows through the project's models."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import podman, processes
from bench.dockyard_target import START_TIMEOUT_S, create_key, installation_id
from dockyard.services.worker_runspec import CONTAINER_HOST


@dataclass(frozen=True)
class Server:
    """A running server: its base URL, an API key of the `bench` organization, and its database's URL."""

    url: str
    key: str
    database_url: str
    pid: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@contextmanager
def dockyard_server(workdir: Path, engine_url: str, *, for_workers: bool = False, **settings: str) -> Iterator[Server]:
    """Start the server and yield it once it answers. `for_workers`: listen on every interface and give workers
    the host's name on the container network, so async workers in containers reach their webhooks. `settings`
    are more `DOCKYARD_*` variables (names without the prefix). On exit, whatever happened: the server is
    stopped and every container labelled with its installation removed."""
    data_dir = workdir / "dockyard-data"
    data_dir.mkdir()
    port = processes.free_port()
    url = f"http://127.0.0.1:{port}"
    database_url = f"sqlite+aiosqlite:///{data_dir / 'dockyard.db'}"
    env = {
        "DOCKYARD_DATA_DIR": str(data_dir),
        "DOCKYARD_ENGINE_URL": engine_url,
        "DOCKYARD_HOST": "0.0.0.0" if for_workers else "127.0.0.1",
        "DOCKYARD_PORT": str(port),
        "DOCKYARD_PUBLIC_URL": url,
        "DOCKYARD_LOG_LEVEL": "warning",
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
        yield Server(url, key, database_url, server.pid)
    finally:
        if server is not None:
            processes.stop(server)
        if installation := installation_id(data_dir):
            podman.remove_installation_containers(engine_url, installation)
