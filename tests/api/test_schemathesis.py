"""A bounded, reproducible schemathesis run over every operation of the OpenAPI document: generated requests,
authenticated as a real user (or the operator for `/admin`), must never get a 5xx.

SQLite only: this is about the API's handling of what clients send, not about the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from dockyard.app import create_app
from dockyard.config import Settings
from tests.conftest import ADMIN_TOKEN
from tests.fakes import FakeRuntime
from tests.live import serving


def _document() -> dict[str, object]:
    # Building the app does not touch its database; only its lifespan does (the served app below).
    offline = Settings(
        database_url="sqlite+aiosqlite:///:memory:",
        secret_key=Fernet.generate_key().decode(),
        engine_url="unix:///nonexistent.sock",
    )
    return create_app(offline).openapi()


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The live server's URL and a user key of a fresh organization."""
    data: Path = tmp_path_factory.mktemp("schemathesis")
    app = create_app(
        Settings(
            data_dir=data,
            database_url=f"sqlite+aiosqlite:///{data / 'dockyard.db'}",
            admin_token=ADMIN_TOKEN,
            public_address="127.0.0.1",
            run_reconcilers=False,
            engine_url="unix:///nonexistent.sock",
        ),
        runtime_factory=lambda idc, context: FakeRuntime(),
    )
    with serving(app) as url:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        org = httpx.post(f"{url}/admin/v1/organizations", json={"name": "fuzz"}, headers=admin).json()
        key = httpx.post(f"{url}/admin/v1/organizations/{org['id']}/keys", json={}, headers=admin).json()["key"]
        yield url, key


@schema.parametrize()
@settings(
    max_examples=20,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: schemathesis.Case, served: tuple[str, str]) -> None:
    url, key = served
    token = ADMIN_TOKEN if case.path.startswith("/admin/") else key
    # The generated Authorization header would only ever meet a 401; send a real one to reach the logic.
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error])
