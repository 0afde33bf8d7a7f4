"""Whole Dockyard servers for the end-to-end tests: `engine_server`, one on the real container engine in this
process (uvicorn on a free port, SQLite, every loop running, an organization with a key, and every container and
network of its installation removed at the end), and `ServerProcess`, `dockyard server` as a child process of its
own."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.services.worker_runspec import CONTAINER_HOST
from tests.conftest import ADMIN_TOKEN
from tests.engine import remove_networks
from tests.live import free_port, serving


@dataclass
class EngineServer:
    url: str
    key: str
    installation_id: str
    settings: Settings

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30)


def wait_for(what: str, check: Callable[[], Any], deadline: float = 90.0) -> Any:
    """`check()`'s first truthy value, asked every 0.2 s; the test fails naming `what` after `deadline` s."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if value := check():
            return value
        time.sleep(0.2)
    pytest.fail(f"not within {deadline} s: {what}")


def new_key(url: str, org: str) -> str:
    """A key of a fresh organization, made through the operator's API."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        created = client.post("/admin/v1/organizations", json={"name": org})
        assert created.status_code == 200, created.text
        answer = client.post(f"/admin/v1/organizations/{created.json()['id']}/keys", json={})
        assert answer.status_code == 200, answer.text
        key: str = answer.json()["key"]
        return key


def remove_installation(engine_url: str, installation_id: str) -> None:
    engine = docker.DockerClient(base_url=engine_url)
    try:
        for container in engine.containers.list(
            all=True, filters={"label": f"dockyard.installation={installation_id}"}
        ):
            container.remove(force=True)
        remove_networks(installation_id)
    finally:
        engine.close()


@contextmanager
def engine_server(data: Path, engine_url: str, *, host: str = "127.0.0.1", **overrides: Any) -> Iterator[EngineServer]:
    """Serve Dockyard on `host` with fast loops (overridable) until the block ends. Its port is chosen first, so
    the URLs it hands out (endpoint URLs, async workers' webhooks on the bridge's host address) are right."""
    port = free_port()
    values: dict[str, Any] = {
        "port": port,
        "public_url": f"http://127.0.0.1:{port}",
        "worker_webhook_url": f"http://{CONTAINER_HOST}:{port}",
        "data_dir": data,
        "database_url": f"sqlite+aiosqlite:///{data / 'dockyard.db'}",
        "admin_token": ADMIN_TOKEN,
        "public_address": "127.0.0.1",
        "engine_url": engine_url,
        "run_reconcilers": True,
        "reconcile_interval": 0.5,
        "autoscale_interval": 0.2,
        "health_check_interval": 0.5,
        "stop_timeout_seconds": 2,
        **overrides,
    }
    settings = Settings(**values)
    app = create_app(settings)
    installation = ""
    try:
        with serving(app, host, port) as url:
            installation = app.state.context.installation_id
            yield EngineServer(url, new_key(url, "e2e"), installation, settings)
    finally:
        if installation:
            remove_installation(engine_url, installation)


SERVER_START_SECONDS = 60.0


class ServerProcess:
    """`python -m dockyard server` as a child process, killable at any moment, its output in `log_path`.
    `command` replaces the command line (`{host}` and `{port}` in it are filled in); `nofile` sets the child's
    open-files limits (soft, hard) before it starts; `start_seconds` bounds the wait for its first answer."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        command: Sequence[str] = (sys.executable, "-m", "dockyard", "server", "--host", "{host}", "--port", "{port}"),
        nofile: tuple[int, int] | None = None,
        start_seconds: float = SERVER_START_SECONDS,
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.host = host
        self.port = port or free_port()
        self.command = [part.format(host=self.host, port=self.port) for part in command]
        self.nofile = nofile
        self.start_seconds = start_seconds
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        nofile = self.nofile
        limit = None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit
            )
        deadline = time.monotonic() + self.start_seconds
        while True:
            assert self.process.poll() is None, f"the server exited at start:\n{self.log_tail()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the server did not answer in time:\n{self.log_tail()}"
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self) -> str:
        return self.log()[-4000:]
