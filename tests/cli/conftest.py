"""A real Dockyard server on a loopback port for the CLI's tests: uvicorn in a background thread, SQLite, the
reconcilers running, and the in-memory runtime in place of the container engine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from dockyard.app import create_app
from dockyard.cli import app as cli_app
from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.db.models import IdcModel
from tests.conftest import ADMIN_TOKEN
from tests.fakes import FakeRuntime
from tests.live import serving
from tests.servers import new_key

IMAGE = "localhost/busybox:latest"


@dataclass
class LiveServer:
    url: str
    runtime: FakeRuntime

    def new_key(self, org: str) -> str:
        """A fresh key of a fresh organization, made through the operator's API."""
        return new_key(self.url, org)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("server")
    settings = Settings(
        data_dir=data,
        database_url=f"sqlite+aiosqlite:///{data / 'dockyard.db'}",
        admin_token=ADMIN_TOKEN,
        public_address="127.0.0.1",
        run_reconcilers=True,
        reconcile_interval=0.2,
        engine_url="unix:///nonexistent.sock",
    )
    runtime = FakeRuntime(images={IMAGE})

    def factory(idc: IdcModel, context: ServerContext) -> FakeRuntime:
        runtime.installation_id = context.installation_id
        return runtime

    app = create_app(settings, runtime_factory=factory)
    with serving(app) as url:
        yield LiveServer(url=url, runtime=runtime)


@dataclass
class Cli:
    """Runs `dockyard ...` in-process with its own config directory and (by default) the live server's key."""

    server: LiveServer
    config_home: Path
    api_key: str

    def __call__(self, *args: str, env: dict[str, str | None] | None = None, stdin: str | None = None) -> Result:
        base: dict[str, str | None] = {
            "XDG_CONFIG_HOME": str(self.config_home),
            "DOCKYARD_URL": self.server.url,
            "DOCKYARD_API_KEY": self.api_key,
        }
        return CliRunner().invoke(cli_app, list(args), env={**base, **(env or {})}, input=stdin)


@pytest.fixture
def cli(live_server: LiveServer, tmp_path: Path) -> Cli:
    """Each test its own organization, so tests sharing the server never see each other's objects."""
    return Cli(live_server, tmp_path / "config", live_server.new_key(f"org-{uuid.uuid4().hex[:12]}"))
