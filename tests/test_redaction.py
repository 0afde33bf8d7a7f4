"""What `Redactor` masks in a rendered log line, and what it leaves alone."""

from __future__ import annotations

import pytest

from dockyard.config import Settings
from dockyard.redaction import Redactor, url_password
from dockyard.services.keys import KEY_PREFIX
from dockyard.services.worker_webhooks import new_worker_key

API_KEY = KEY_PREFIX + "a" * 16 + "B-c_" * 4  # the shape services/keys.py makes: dy_ + 32 URL-safe characters
WORKER_KEY = new_worker_key()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"Authorization: Bearer {API_KEY}", "Authorization: Bearer ******"),
        ("authorization=Basic dXNlcjpwYXNz", "authorization=Basic ******"),
        ("headers=[(b'authorization', b'Bearer opaque.token-1')]", "headers=[(b'authorization', b'Bearer ******')]"),
        ("{'Authorization': 'bare-worker-key-value'}", "{'Authorization': '******'}"),
        ('"authorization": "Bearer x.y.z"', '"authorization": "Bearer ******"'),
        ("webhook to https://user:p%40ss@hooks.example/x failed", "webhook to https://******@hooks.example/x failed"),
        ("postgresql+asyncpg://dockyard:hunter2@db:5432/dy", "postgresql+asyncpg://******@db:5432/dy"),
        ("https://token@github.com/org/repo", "https://******@github.com/org/repo"),
        (f"key {API_KEY} refused", "key dy_****** refused"),
        # A fresh key each run: a fixed id keeps the test ids one collection to the next (parallel runs compare them).
        pytest.param(f"PPIO_AI_API_KEY={WORKER_KEY}", "PPIO_AI_API_KEY=dyw_******", id="worker-key-in-env"),
        ("the planted-admin-token-0123 leaked", "the ****** leaked"),
    ],
)
def test_masks(line: str, expected: str) -> None:
    assert Redactor(["planted-admin-token-0123"]).redact(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "GET /api/v1/containers/6f1c2f9e-1d2b-4a6f-9a43-0d8a3c5e1b7a/logs 200",
        "container engine at unix:///run/podman/podman.sock is podman 4.3 with 2 CPUs",
        "dy_prefix is dy_abcdefgh",  # a key's 10-character prefix, as listed by the API, is no key
        "https://hooks.example/x?sig=1",
        "body_limit_exceeded_for_the_request_of_this_very_long_name",
    ],
)
def test_leaves_ordinary_lines_alone(line: str) -> None:
    assert Redactor(["planted-admin-token-0123"]).redact(line) == line


def test_short_literals_are_not_looked_for_and_longer_ones_are_masked_whole() -> None:
    redactor = Redactor(["", "admin", "secret-value-1", "secret-value-1-longer"])
    assert redactor.redact("admin secret-value-1-longer secret-value-1") == "admin ****** ******"


def test_settings_secrets_and_database_password() -> None:
    settings = Settings(
        admin_token="planted-admin-token-0123",
        secret_key="planted-fernet-key-0123456789",
        database_url="postgresql+asyncpg://dockyard:p%40ss-planted@db/dy",
    )
    assert url_password(settings.database_url) == ["p%40ss-planted", "p@ss-planted"]
    redactor = Redactor(settings.log_secrets())
    line = "planted-admin-token-0123 planted-fernet-key-0123456789 p@ss-planted"
    assert redactor.redact(line) == "****** ****** ******"
    assert settings.masked_database_url == "postgresql+asyncpg://***@db/dy"
    sqlite = Settings(database_url="sqlite+aiosqlite:////data/dockyard.db")
    assert sqlite.masked_database_url == "sqlite+aiosqlite:////data/dockyard.db"
