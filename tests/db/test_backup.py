"""Backup and restore as docs/operations.md tells the operator: `dockyard admin backup` while the server runs, the
data dir lost, `dockyard admin restore`, the server started again; every object and every secret is back."""

from __future__ import annotations

import asyncio
import io
import shutil
import stat
import subprocess
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from dockyard.app import create_app
from dockyard.cli import app as cli_app
from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.core.workload import WorkloadSpec
from dockyard.db import backup as backups
from dockyard.db.models import EndpointModel, RegistryAuthModel, TemplateModel
from dockyard.services.runspec import write_authorized_keys
from tests.conftest import ADMIN_TOKEN
from tests.fakes import FakeRuntime
from tests.pg import PostgresServer, client_tool, postgres_available

PASSWORD = "hunter2-registry-password"
ENV_SECRET = "tok-0123456789abcdef"
# The shell's own DOCKYARD_* variables must not point the commands elsewhere than --data-dir.
CLEAN_ENV: dict[str, str | None] = {
    "DOCKYARD_DATA_DIR": None,
    "DOCKYARD_DATABASE_URL": None,
    "DOCKYARD_SECRET_KEY": None,
    "DOCKYARD_CONFIG": None,
}


def admin(*args: str) -> Result:
    return CliRunner().invoke(cli_app, ["admin", *args], env=CLEAN_ENV)


def server_settings(data_dir: Path, database_url: str = "") -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        public_address="127.0.0.1",
        run_reconcilers=False,
        engine_url="unix:///nonexistent.sock",
    )


@asynccontextmanager
async def running(data_dir: Path, database_url: str = "") -> AsyncIterator[FastAPI]:
    app = create_app(server_settings(data_dir, database_url), runtime_factory=lambda idc, context: FakeRuntime())
    async with app.router.lifespan_context(app):
        yield app


def client(app: FastAPI, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://dockyard.test",
        headers={"Authorization": f"Bearer {token}"},
    )


async def ok(answer: httpx.Response) -> Any:
    assert answer.status_code == 200, answer.text
    return answer.json()


async def make_objects(app: FastAPI) -> dict[str, str]:
    """An organization and its key, a template with an env secret and a registry password, a registry auth, a
    container and an endpoint with an env secret; their ids, and the key."""
    async with client(app, ADMIN_TOKEN) as operator:
        org = await ok(await operator.post("/admin/v1/organizations", json={"name": "acme"}))
        key = (await ok(await operator.post(f"/admin/v1/organizations/{org['id']}/keys", json={})))["key"]
    async with client(app, key) as user:
        template = await ok(
            await user.post(
                "/api/v1/templates",
                json={
                    "name": "web",
                    "path": "localhost/busybox:latest",
                    "credential": {"username": "robot", "secret": PASSWORD},
                    "envs": [{"name": "API_TOKEN", "value": ENV_SECRET}],
                },
            )
        )
        auth = await ok(
            await user.post("/gpus/v2/registry-auths", json={"name": "hub", "username": "robot", "password": PASSWORD})
        )
        containers = await ok(
            await user.post(
                "/api/v1/containers",
                json={"count": 1, "idc": "local", "product": "cpu.small", "name": "box", "templateId": template["id"]},
            )
        )
        endpoint = await ok(
            await user.post(
                "/gpus/v2/endpoints",
                json={
                    "type": "sync",
                    "name": "chat",
                    "product_id": "serverless.cpu",
                    "image": "localhost/worker:1",
                    "registry_auth_id": auth["id"],
                    "envs": [{"key": "API_TOKEN", "value": ENV_SECRET}],
                    "worker_config": {"max_replicas": 1},
                },
            )
        )
    return {
        "org": org["id"],
        "key": key,
        "template": template["id"],
        "auth": auth["id"],
        "container": containers[0]["id"],
        "endpoint": endpoint["id"],
    }


async def assert_objects_back(app: FastAPI, made: dict[str, str]) -> None:
    async with client(app, made["key"]) as user:  # the key still authenticates
        assert (await ok(await user.get(f"/api/v1/templates/{made['template']}")))["name"] == "web"
        assert (await ok(await user.get(f"/api/v1/containers/{made['container']}")))["name"] == "box"
        assert (await ok(await user.get(f"/gpus/v2/endpoints/{made['endpoint']}")))["name"] == "chat"
    async with client(app, ADMIN_TOKEN) as operator:
        orgs = await ok(await operator.get("/admin/v1/organizations"))
    assert [(org["id"], org["name"]) for org in orgs] == [(made["org"], "acme")]
    context: ServerContext = app.state.context
    box = context.box
    async with context.db.read() as session:
        auth = await session.get(RegistryAuthModel, made["auth"])
        template = await session.get(TemplateModel, made["template"])
        endpoint = await session.get(EndpointModel, made["endpoint"])
    assert auth is not None
    assert template is not None
    assert endpoint is not None
    assert box.decrypt(auth.password) == PASSWORD
    spec = WorkloadSpec.model_validate(template.spec)
    assert spec.credential is not None
    assert box.decrypt(spec.credential.secret) == PASSWORD
    assert {env.name: box.decrypt(env.value) for env in spec.envs} == {"API_TOKEN": ENV_SECRET}
    endpoint_envs = WorkloadSpec.model_validate(endpoint.spec).envs
    assert {env.name: box.decrypt(env.value) for env in endpoint_envs} == {"API_TOKEN": ENV_SECRET}
    stored = [auth.password, spec.credential.secret, spec.envs[0].value, endpoint_envs[0].value]
    assert all(value.startswith("enc:v1:") for value in stored)  # decrypted above, not stored in the clear


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_backup_wipe_restore_brings_back_every_object_and_secret(tmp_path: Path) -> None:
    data_dir, archive = tmp_path / "data", tmp_path / "dockyard-backup.tar.gz"
    async with running(data_dir) as app:
        made = await make_objects(app)
        # What the reconciler writes for a container with SSH keys (it does not run here).
        authorized = write_authorized_keys(data_dir, made["container"], ["ssh-ed25519 AAAAC3Nza test@laptop"])
        backed_up = admin("backup", str(archive), "--data-dir", str(data_dir))  # while the server runs
        assert backed_up.exit_code == 0, backed_up.output
    key = (data_dir / "secret.key").read_text()
    assert mode(archive) == 0o600  # it holds the secret key
    with tarfile.open(archive) as contents:
        assert sorted(contents.getnames()) == [
            "dockyard.db",
            "manifest.json",
            "secret.key",
            f"ssh/{made['container']}/authorized_keys",
        ]

    shutil.rmtree(data_dir)
    restored = admin("restore", str(archive), "--data-dir", str(data_dir))
    assert restored.exit_code == 0, restored.output
    assert "restored schema" in restored.stdout
    assert (data_dir / "secret.key").read_text() == key
    assert (mode(data_dir), mode(data_dir / "dockyard.db"), mode(data_dir / "secret.key")) == (0o700, 0o600, 0o600)
    assert authorized.read_text() == "ssh-ed25519 AAAAC3Nza test@laptop\n"
    assert (mode(authorized), mode(authorized.parent), mode(data_dir / "ssh")) == (0o600, 0o700, 0o700)

    async with running(data_dir) as app:
        await assert_objects_back(app, made)


async def test_a_database_restored_without_its_key_would_lose_the_secrets_so_restore_refuses(tmp_path: Path) -> None:
    data_dir, archive = tmp_path / "data", tmp_path / "backup.tar.gz"
    async with running(data_dir) as app:
        await make_objects(app)
    assert admin("backup", str(archive), "--data-dir", str(data_dir)).exit_code == 0

    again = admin("backup", str(archive), "--data-dir", str(data_dir))
    assert again.exit_code == 1
    assert f"{archive} exists already" in again.stderr

    refused = admin("restore", str(archive), "--data-dir", str(data_dir))  # the server's database is still there
    assert refused.exit_code == 1
    assert "stop the server and move its database" in refused.stderr

    other = tmp_path / "other"
    other.mkdir()
    (other / "secret.key").write_text("another-key")
    refused = admin("restore", str(archive), "--data-dir", str(other))
    assert refused.exit_code == 1
    assert "holds another secret key" in refused.stderr
    assert sorted(path.name for path in other.iterdir()) == ["secret.key"]  # nothing restored half-way

    settings = Settings(data_dir=tmp_path / "fresh", secret_key="a-different-key")
    with pytest.raises(backups.BackupError, match="DOCKYARD_SECRET_KEY differs"):
        backups.restore(settings, archive)

    # An archive with more in it than a backup writes: only the names of the backup's own shapes reach the disk.
    hostile = tmp_path / "hostile.tar.gz"
    with tarfile.open(archive) as source, tarfile.open(hostile, "w:gz") as out:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
        for name in ("../evil", "ssh/x/../../../evil/authorized_keys", "ssh/x/authorized_keys/../../../evil"):
            member = tarfile.TarInfo(name)
            member.size = 4
            out.addfile(member, io.BytesIO(b"evil"))
    assert admin("restore", str(hostile), "--data-dir", str(tmp_path / "fresh")).exit_code == 0
    assert sorted(path.name for path in (tmp_path / "fresh").iterdir()) == ["dockyard.db", "secret.key"]
    assert not (tmp_path / "evil").exists()  # where both escapes would have landed


def test_postgresql_and_strange_archives_are_refused_with_what_to_do(tmp_path: Path) -> None:
    postgres = Settings(data_dir=tmp_path, database_url="postgresql+asyncpg://dockyard@db/dockyard")
    for action in (backups.backup, backups.restore):
        with pytest.raises(backups.BackupError, match="pg_dump"):
            action(postgres, tmp_path / "archive.tar.gz")

    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(damaged, "w:gz") as out:
        for name, content in (
            ("manifest.json", b'{"format": 1, "dockyard": "0.1.0", "schema": "0006", "created_at": "x"}'),
            ("dockyard.db", b"not a database" * 100),
            ("secret.key", b"key"),
        ):
            member = tarfile.TarInfo(name)
            member.size = len(content)
            out.addfile(member, io.BytesIO(content))
    refused = admin("restore", str(damaged), "--data-dir", str(tmp_path / "data"))
    assert refused.exit_code == 1
    assert "is not a Dockyard database (file is not a database)" in refused.stderr
    assert not (tmp_path / "data" / "dockyard.db").exists()

    not_an_archive = tmp_path / "notes.txt"
    not_an_archive.write_text("hello")
    refused = admin("restore", str(not_an_archive), "--data-dir", str(tmp_path / "data"))
    assert refused.exit_code == 1
    assert "cannot read" in refused.stderr


async def test_postgresql_backup_with_pg_dump_and_the_key_restores_as_documented(
    tmp_path: Path, postgres: PostgresServer | None
) -> None:
    if postgres is None:
        pytest.skip(f"PostgreSQL half skipped: {postgres_available()}")
    data_dir, dump, key_copy = tmp_path / "data", tmp_path / "dockyard.dump", tmp_path / "dockyard.secret.key"
    database_url = await postgres.create_database()
    libpq_url = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    name = database_url.rsplit("/", 1)[1]
    async with running(data_dir, database_url) as app:
        made = await make_objects(app)
        # While the server runs, as documented.
        await asyncio.to_thread(run, client_tool("pg_dump"), "--format=custom", f"--file={dump}", libpq_url)
        shutil.copy(data_dir / "secret.key", key_copy)

    shutil.rmtree(data_dir)
    conn = await asyncpg.connect(host="127.0.0.1", port=postgres.port, user="postgres", database="postgres")
    try:
        await conn.execute(f'DROP DATABASE "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    await asyncio.to_thread(run, client_tool("pg_restore"), "--no-owner", f"--dbname={libpq_url}", str(dump))
    data_dir.mkdir(mode=0o700)
    shutil.copy(key_copy, data_dir / "secret.key")

    async with running(data_dir, database_url) as app:
        await assert_objects_back(app, made)
