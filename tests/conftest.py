"""Shared fixtures: a real database (SQLite, and PostgreSQL started by the tests), an app over it, and
an authenticated client.

Tests that take `database_url` run twice, once per backend. PostgreSQL runs for real: the session starts a
private server with initdb; where its binaries are missing the PostgreSQL half is skipped with that reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.db.models import IdcModel
from dockyard.gateway.routes import RouteTable
from dockyard.services import keys
from tests.fakes import FakeRuntime
from tests.pg import PostgresServer, postgres_available

pytest_plugins = ["tests.engine"]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups into the test ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every test that uses the container engine on one parallel worker, one after another (the suite runs
    under pytest-xdist's `--dist loadgroup`): Podman 4's netavark lifts every network's isolation for the moment
    between one network's removal and the next container start, so a test removing its networks beside another
    test that checks isolation would see the other's failure. Tests of the database and the logic share the
    other workers."""
    for item in items:
        if "engine_url" in getattr(item, "fixturenames", ()) or item.get_closest_marker("engine"):
            item.add_marker(pytest.mark.xdist_group("engine"))


ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    if postgres_available() is not None:
        yield None
        return
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'dockyard.db'}"
    server: PostgresServer | None = request.getfixturevalue("postgres")
    if server is None:
        pytest.skip(f"PostgreSQL half skipped: {postgres_available()}")
    return await server.create_database()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        public_address="127.0.0.1",
        run_reconcilers=False,
        engine_url="unix:///nonexistent.sock",
    )


@pytest.fixture
def fake_runtime() -> FakeRuntime:
    return FakeRuntime()


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient
    admin: httpx.AsyncClient

    @property
    def context(self) -> ServerContext:
        context: ServerContext = self.app.state.context
        return context

    @property
    def routes(self) -> RouteTable:
        """The routing table of the app's gateway."""
        routes: RouteTable = self.app.front.routes  # type: ignore[attr-defined]
        return routes

    async def new_client(self, org: str) -> httpx.AsyncClient:
        """A client authenticated as a fresh key of organization `org`."""
        async with self.context.db.write_session() as session:
            org_row = await keys.get_or_create_org(session, org)
            member = await keys.get_or_create_member(session, org_row, "default")
            _, key = await keys.create_key(session, org_row, member)
            await session.commit()
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://dockyard.test",
            headers={"Authorization": f"Bearer {key}"},
        )


@pytest.fixture
async def harness(settings: Settings, fake_runtime: FakeRuntime) -> AsyncIterator[Harness]:
    fake_runtime.installation_id = ""

    def factory(idc: IdcModel, context: ServerContext) -> FakeRuntime:
        fake_runtime.installation_id = context.installation_id
        return fake_runtime

    app = create_app(settings, runtime_factory=factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        admin = httpx.AsyncClient(
            transport=transport,
            base_url="http://dockyard.test",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        placeholder = httpx.AsyncClient(transport=transport, base_url="http://dockyard.test")
        harness = Harness(app=app, client=placeholder, admin=admin)
        harness.client = await harness.new_client("acme")
        try:
            yield harness
        finally:
            await harness.client.aclose()
            await admin.aclose()
            await placeholder.aclose()


@pytest.fixture
def client(harness: Harness) -> httpx.AsyncClient:
    return harness.client
