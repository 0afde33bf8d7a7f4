"""`dockyard admin ...`, run as the operator runs it: a process of its own against the server's database (named by
--data-dir, DOCKYARD_DATA_DIR or DOCKYARD_DATABASE_URL), which it never makes unless told to."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from dockyard.app import create_app
from dockyard.cli import app as cli_app
from dockyard.config import Settings
from dockyard.services.bootstrap import local_node_id
from tests.api.test_quotas import QUOTA_NAMES
from tests.fakes import FakeRuntime
from tests.live import free_port
from tests.pg import PostgresServer, postgres_available


def create_key(env: dict[str, str], org: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", "admin", "create-key", "--org", org, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"dy_[A-Za-z0-9_\-]{20,}\n", done.stdout), f"stdout is not the key alone: {done.stdout!r}"
    return done.stdout.strip()


@pytest.mark.parametrize("variable", ["DOCKYARD_DATA_DIR", "DOCKYARD_DATABASE_URL"])
def test_create_key_prints_only_the_key_and_creates_the_org_once(tmp_path: Path, variable: str) -> None:
    database = tmp_path / "dockyard.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_ENGINE_URL"] = "unix:///nonexistent.sock"
    if variable == "DOCKYARD_DATA_DIR":
        env["DOCKYARD_DATA_DIR"] = str(tmp_path)
    else:
        env["DOCKYARD_DATA_DIR"] = str(tmp_path / "elsewhere")
        env["DOCKYARD_DATABASE_URL"] = f"sqlite+aiosqlite:///{database}"

    first = create_key(env, "acme", "--create")
    second = create_key(env, "acme")
    assert first != second

    with sqlite3.connect(database) as conn:
        orgs = conn.execute("SELECT id FROM organizations WHERE name = 'acme'").fetchall()
        assert len(orgs) == 1
        hashes = {row[0] for row in conn.execute("SELECT key_hash FROM api_keys WHERE org_id = ?", orgs[0])}
    assert hashes == {hashlib.sha256(key.encode()).hexdigest() for key in (first, second)}


def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_DATA_DIR=str(tmp_path), DOCKYARD_LOG_FORMAT="xml")
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", "admin", "create-key", "--org", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: invalid configuration (log_format:")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "dockyard.db").exists()


def admin_quotas(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockyard", "admin", "quotas", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_quotas_shows_sets_and_resets_an_organizations_limits(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_DATA_DIR=str(tmp_path), DOCKYARD_ENGINE_URL="unix:///nonexistent.sock")
    create_key(env, "acme", "--create")

    shown = admin_quotas(env, "--org", "acme")
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines()[1:]}
    assert lines["vcpus"] == ["128", "0", "default"]
    assert list(lines) == QUOTA_NAMES

    changed = admin_quotas(env, "--org", "acme", "--set", "vcpus=4", "--set", "containers=0", "--json")
    assert changed.returncode == 0, changed.stderr
    limits = {quota["name"]: (quota["limit"], quota["default"]) for quota in json.loads(changed.stdout)["quotas"]}
    assert (limits["vcpus"], limits["containers"], limits["gpus"]) == ((4, False), (0, False), (8, True))
    with sqlite3.connect(tmp_path / "dockyard.db") as conn:
        assert conn.execute("SELECT vcpus, containers, gpus FROM organization_quotas").fetchall() == [(4, 0, None)]

    reset = admin_quotas(env, "--org", "acme", "--set", "vcpus=default", "--json")
    limits = {quota["name"]: (quota["limit"], quota["default"]) for quota in json.loads(reset.stdout)["quotas"]}
    assert (limits["vcpus"], limits["containers"]) == ((128, True), (0, False))

    for args, message in [
        (("--org", "nobody"), "no organization named nobody; `dockyard admin orgs create nobody` makes one"),
        (("--org", "acme", "--set", "vcpus=-1"), "--set vcpus: Input should be greater than or equal to 0"),
        (("--org", "acme", "--set", "cores=4"), "no quota cores"),
        (("--org", "acme", "--set", "vcpus"), "expected NAME=LIMIT"),
    ]:
        refused = admin_quotas(env, *args)
        assert refused.returncode == 1
        assert message in refused.stderr, refused.stderr


@pytest.mark.parametrize("variable", ["DOCKYARD_DATA_DIR", "DOCKYARD_DATABASE_URL"])
def test_a_missing_database_is_refused_naming_where_it_looked_and_nothing_is_made(
    tmp_path: Path, variable: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env: dict[str, str | None] = {name: None for name in os.environ if name.startswith("DOCKYARD_")}
    env["DOCKYARD_ENGINE_URL"] = "unix:///nonexistent.sock"
    if variable == "DOCKYARD_DATA_DIR":
        env["DOCKYARD_DATA_DIR"] = str(empty)
        where = f"{empty / 'dockyard.db'} (in the data dir {empty}, from DOCKYARD_DATA_DIR)"
    else:
        env["DOCKYARD_DATA_DIR"] = str(tmp_path / "never-made")
        env["DOCKYARD_DATABASE_URL"] = f"sqlite+aiosqlite:///{empty / 'dockyard.db'}"
        where = f"sqlite+aiosqlite:///{empty / 'dockyard.db'} (DOCKYARD_DATABASE_URL)"
    refused = CliRunner().invoke(cli_app, ["admin", "create-key", "--org", "acme"], env=env)
    assert refused.exit_code == 1
    assert refused.stdout == ""  # no key the server would reject
    message = " ".join(refused.stderr.split())
    assert message.startswith(f"error: no Dockyard database at {where}."), message
    assert "--data-dir DIR or the DOCKYARD_DATA_DIR / DOCKYARD_DATABASE_URL" in message
    assert message.endswith("or add --create to make a new one there")
    assert list(empty.iterdir()) == []
    assert not (tmp_path / "never-made").exists()

    made = CliRunner().invoke(cli_app, ["admin", "create-key", "--org", "acme", "--create"], env=env)
    assert made.exit_code == 0, made.output
    with sqlite3.connect(empty / "dockyard.db") as conn:
        stored = conn.execute("SELECT key_hash FROM api_keys").fetchall()
    assert stored == [(hashlib.sha256(made.stdout.strip().encode()).hexdigest(),)]


def admin(data_dir: Path, *args: str) -> Result:
    """`dockyard admin ARGS --data-dir DATA_DIR` in this process, with no DOCKYARD_* variable of the shell's."""
    env: dict[str, str | None] = {name: None for name in os.environ if name.startswith("DOCKYARD_")}
    env["DOCKYARD_ENGINE_URL"] = "unix:///nonexistent.sock"
    return CliRunner().invoke(cli_app, ["admin", *args, "--data-dir", str(data_dir)], env=env)


def test_every_command_that_reads_the_database_refuses_a_missing_one(tmp_path: Path) -> None:
    for args in (
        ("orgs", "list"),
        ("orgs", "create", "acme"),
        ("keys", "list"),
        ("keys", "revoke", "some-id"),
        ("inventory",),
        ("quotas", "--org", "acme"),
        ("backup", str(tmp_path / "backup.tar.gz")),
    ):
        refused = admin(tmp_path / "data", *args)
        assert refused.exit_code == 1, args
        assert "no Dockyard database at" in refused.stderr or "no database at" in refused.stderr, refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_orgs_keys_and_inventory_are_managed_from_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = admin(data, "orgs", "create", "acme", "--create")
    assert created.exit_code == 0, created.output
    org_id = created.stdout.strip()
    assert admin(data, "orgs", "create", "acme").stderr.startswith("error: an organization named acme exists already")
    assert admin(data, "orgs", "create", "bad name").stderr.startswith("error: NAME 'bad name': use at most 255")
    listed = json.loads(admin(data, "orgs", "list", "--json").stdout)
    assert [(org["id"], org["name"]) for org in listed] == [(org_id, "acme")]

    user_key = admin(data, "create-key", "--org", "acme").stdout.strip()
    admin_key = admin(data, "create-key", "--org", "ops", "--admin").stdout.strip()
    keys = json.loads(admin(data, "keys", "list", "--json").stdout)
    assert [(key["prefix"], key["is_admin"], key["revoked_at"]) for key in keys] == [
        (user_key[:10], False, None),
        (admin_key[:10], True, None),
    ]
    acme_only = json.loads(admin(data, "keys", "list", "--org", "acme", "--json").stdout)
    assert [key["id"] for key in acme_only] == [keys[0]["id"]]
    assert "no organization named nobody" in admin(data, "keys", "list", "--org", "nobody").stderr
    table = admin(data, "keys", "list").stdout
    assert user_key[:10] in table
    assert user_key not in table

    assert "give at least 4 characters" in admin(data, "keys", "revoke", "").stderr
    revoked = admin(data, "keys", "revoke", user_key[:10])  # as `keys list` shows it
    assert revoked.exit_code == 0, revoked.output
    assert revoked.stdout == f"revoked {keys[0]['id']} ({user_key[:10]}…)\n"
    again = admin(data, "keys", "revoke", keys[0]["id"])
    assert again.exit_code == 1
    assert "`dockyard admin keys list` shows every key" in again.stderr
    assert admin(data, "keys", "revoke", keys[1]["id"][:8]).exit_code == 0  # a unique beginning of the id
    after = json.loads(admin(data, "keys", "list", "--json").stdout)
    assert after[0]["revoked_at"] is not None
    assert after[1]["revoked_at"] is not None

    inventory = json.loads(admin(data, "inventory", "--json").stdout)
    assert [node["id"] for node in inventory["nodes"]] == [local_node_id()]
    assert {"cpu.small", "gpu.h100.1x", "serverless.cpu"} <= {product["id"] for product in inventory["products"]}
    shown = admin(data, "inventory").stdout
    assert local_node_id() in shown
    assert "gpu.h100.8x" in shown
    assert "8 x H100" in shown


async def test_keys_made_and_revoked_by_the_cli_are_what_the_running_server_takes(tmp_path: Path) -> None:
    """The server started with no DOCKYARD_ADMIN_TOKEN: the CLI's keys work on it, an admin key reads /admin/v1,
    and a revoked key is refused."""
    data = tmp_path / "data"
    user_key = (await asyncio.to_thread(admin, data, "create-key", "--org", "acme", "--create")).stdout.strip()
    admin_key = (await asyncio.to_thread(admin, data, "create-key", "--org", "ops", "--admin")).stdout.strip()
    spare_key = (await asyncio.to_thread(admin, data, "create-key", "--org", "acme")).stdout.strip()
    settings = Settings(data_dir=data, public_address="127.0.0.1", run_reconcilers=False, engine_url="unix:///x.sock")
    assert settings.admin_token == ""
    app = create_app(settings, runtime_factory=lambda idc, context: FakeRuntime())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dockyard.test") as http:

            async def status(path: str, key: str) -> int:
                return (await http.get(path, headers={"Authorization": f"Bearer {key}"})).status_code

            assert await status("/api/v1/templates", user_key) == 200
            assert await status("/admin/v1/organizations", user_key) == 403
            assert await status("/admin/v1/organizations", admin_key) == 200
            listed = json.loads((await asyncio.to_thread(admin, data, "keys", "list", "--json")).stdout)
            spare_id = next(key["id"] for key in listed if key["prefix"] == spare_key[:10])
            assert (await asyncio.to_thread(admin, data, "keys", "revoke", spare_id)).exit_code == 0
            assert await status("/api/v1/templates", spare_key) == 401


def test_an_empty_or_unreachable_postgresql_database_is_refused_without_its_password(
    postgres: PostgresServer | None, tmp_path: Path
) -> None:
    if postgres is None:
        pytest.skip(f"PostgreSQL half skipped: {postgres_available()}")
    database_url = asyncio.run(postgres.create_database())
    base = {name: None for name in os.environ if name.startswith("DOCKYARD_")}
    env: dict[str, str | None] = {**base, "DOCKYARD_DATA_DIR": str(tmp_path / "data")}

    def admin_on(url: str, *args: str) -> Result:
        return CliRunner().invoke(cli_app, ["admin", *args], env={**env, "DOCKYARD_DATABASE_URL": url})

    empty = admin_on(database_url, "orgs", "list")
    assert empty.exit_code == 1
    masked = database_url.replace("//postgres@", "//***@", 1)  # the userinfo never shown, password or not
    assert f"no Dockyard database at {masked} (DOCKYARD_DATABASE_URL)" in " ".join(empty.stderr.split())
    unreachable = f"postgresql+asyncpg://postgres:db-password-1234@127.0.0.1:{free_port()}/dockyard"
    refused = admin_on(unreachable, "orgs", "list")
    assert refused.exit_code == 1
    assert "cannot read a database" in refused.stderr
    assert "--create" not in refused.stderr  # it would not help
    assert "db-password-1234" not in refused.stderr
    assert not (tmp_path / "data").exists()

    made = admin_on(database_url, "orgs", "create", "acme", "--create")
    assert made.exit_code == 0, made.output
    assert [org["name"] for org in json.loads(admin_on(database_url, "orgs", "list", "--json").stdout)] == ["acme"]
