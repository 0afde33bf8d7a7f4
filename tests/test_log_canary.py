"""The log canary: secrets are planted in a real `dockyard server` process (its admin token, metrics token, Fernet
key and database password, two organizations' keys, two workers' keys, template, container and endpoint env values,
registry passwords of a registry that answers and of one that does not, webhook URLs' userinfo and query tokens),
the error paths of the probes in tests/canary are triggered (wrong keys and other organizations' objects, bad, huge
and deep bodies, logs since the epoch, an unhandled error, mount-option injection, reserved variables, quotas and
placement, /metrics, worker webhooks misused, SSRF webhooks and webhooks that fail or hang, failed pulls, a
container that fails to start, an unreachable engine and database, idle, trickled and malformed connections), then
everything made is read back, and none of the secrets may appear in the server's log, at debug level, or in any
answer, headers and raw connections included.

The server runs on real Podman (an engine that reaches a private registry with htpasswd authentication) and, where
the tests can start it, on PostgreSQL with a password in its URL; its timeouts are short so that the probes see
them run out, and the whole test takes about 30 s. To cover another path, add a function decorated with `@probe`
to the module of its concern in tests/canary: it gets the `Canary` (clients of both organizations and the operator,
the objects made up front, `plant` and `fresh` for secrets of its own, `eventually` for an outcome to wait for
after every probe) and calls the server; every answer its clients get is checked, and the log once the server has
stopped and written everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import Request

from dockyard.app import DockyardApp, create_app_from_env
from tests.canary import probes_api, probes_connections, probes_engine, probes_jobs
from tests.canary.harness import PROBES, RECEIVER_HOST, Canary, Receiver
from tests.engine import Registry
from tests.pg import PostgresServer
from tests.servers import ServerProcess, remove_installation, wait_for

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parent.parent
PROBE_MODULES = (probes_api, probes_connections, probes_engine, probes_jobs)  # each registers its probes
# Prints a few lines and stays up: its logs are read with `since` values that once were a 500.
TALKER = "for i in 1 2 3; do echo line$i; done; sleep 300"


def app_with_a_failing_route() -> DockyardApp:
    """The server `dockyard server` runs, plus a route that fails with the caller's credentials in its locals and
    in its exception's message: what an unplanned error in any route looks like at its worst."""
    app = create_app_from_env()

    @app.get("/planted/failure", include_in_schema=False)
    async def planted_failure(request: Request) -> None:
        authorization = request.headers.get("authorization", "")
        settings = request.app.state.context.settings
        raise RuntimeError(f"planted failure for {authorization} under {settings!r}")

    return app


@pytest.fixture
def database(postgres: PostgresServer | None, tmp_path: Path) -> tuple[str, str]:
    """The database URL, with a planted password where PostgreSQL runs (its trust authentication ignores it),
    and that password ("" on SQLite, whose URLs take none)."""
    if postgres is None:
        return f"sqlite+aiosqlite:///{tmp_path / 'dockyard.db'}", ""
    password = f"db-{secrets.token_hex(12)}"
    url = asyncio.run(postgres.create_database())
    return url.replace("postgres@", f"postgres:{password}@", 1), password


@pytest.fixture
def served(
    tmp_path: Path, private_registry: Registry, database: tuple[str, str]
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """The server, on the engine that reaches the private registry, with short timeouts (connections, webhooks)
    so that the probes see them run out, and webhooks allowed to reach the canary's receivers."""
    database_url, database_password = database
    planted = {
        "admin token": f"admin-{secrets.token_hex(16)}",
        "metrics token": f"metrics-{secrets.token_hex(16)}",
        "fernet key": Fernet.generate_key().decode(),
        **({"database password": database_password} if database_password else {}),
    }
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKYARD_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        DOCKYARD_DATA_DIR=str(tmp_path / "data"),
        DOCKYARD_DATABASE_URL=database_url,
        DOCKYARD_ADMIN_TOKEN=planted["admin token"],
        DOCKYARD_METRICS_TOKEN=planted["metrics token"],
        DOCKYARD_SECRET_KEY=planted["fernet key"],
        DOCKYARD_ENGINE_URL=private_registry.engine_url,
        DOCKYARD_PUBLIC_ADDRESS="127.0.0.1",
        DOCKYARD_RECONCILE_INTERVAL="0.3",
        DOCKYARD_LOG_LEVEL="debug",
        DOCKYARD_NODE_CPUS="16",  # room for every container the probes make, whatever the machine
        DOCKYARD_HEADER_TIMEOUT_SECONDS="1",
        DOCKYARD_BODY_TIMEOUT_SECONDS="1",
        DOCKYARD_KEEP_ALIVE_TIMEOUT_SECONDS="2",
        DOCKYARD_JOB_MAX_PAYLOAD_BYTES="65536",
        DOCKYARD_JOB_REAP_INTERVAL="0.3",
        DOCKYARD_WEBHOOK_ALLOWED_HOSTS=f"external,{RECEIVER_HOST}/32",
        DOCKYARD_WEBHOOK_TIMEOUT="1",
        DOCKYARD_WEBHOOK_CONNECT_TIMEOUT="1",
        DOCKYARD_WEBHOOK_MAX_ATTEMPTS="2",
    )
    command = (
        sys.executable,
        "-c",
        "from dockyard.cli.server import _run; "
        "_run('tests.test_log_canary:app_with_a_failing_route', '{host}', {port}, None)",
    )
    server = ServerProcess(env, tmp_path / "server.log", command=command)
    try:
        server.start()
        yield server, planted
    finally:
        server.stop()
        if found := re.search(r"\(installation ([0-9a-f-]+)\)", server.log()):
            remove_installation(private_registry.engine_url, found[1])


def new_key(admin: httpx.Client, org: str) -> tuple[str, str]:
    """A new organization's id and a key of it."""
    created = admin.post("/admin/v1/organizations", json={"name": org})
    assert created.status_code == 200, created.text
    org_id: str = created.json()["id"]
    answer = admin.post(f"/admin/v1/organizations/{org_id}/keys", json={})
    assert answer.status_code == 200, answer.text
    return org_id, answer.json()["key"]


def prepare(canary: Canary) -> None:
    """The objects the probes use, with secrets in their env and credentials: a running container that has
    printed its lines, an async endpoint whose workers cannot pull their image (its jobs stay queued), and an
    async endpoint with two workers that only sleep, whose webhooks the probes call in their stead."""
    env_secret = canary.fresh("template env value")
    template = canary.user.post(
        "/api/v1/templates",
        json={
            "name": "talker",
            "path": canary.busybox,
            "command": f"sh -c '{TALKER}'",
            "envs": [{"name": "API_TOKEN", "value": env_secret}],
        },
    )
    assert template.status_code == 200, template.text
    canary.template_id = template.json()["id"]
    created = canary.user.post("/api/v1/containers", json=probes_api.container_body("talker", canary.template_id))
    assert created.status_code == 200, created.text
    canary.container_id = created.json()[0]["id"]

    password = canary.fresh("registry auth password")
    auth = canary.user.post(
        "/gpus/v2/registry-auths", json={"name": "robot", "username": "robot", "password": password}
    )
    assert auth.status_code == 200, auth.text
    for name, image, replicas, command in (
        ("canary", probes_engine.UNPULLABLE, 1, ""),
        ("jobs", canary.busybox, 2, "sleep 300"),
    ):
        endpoint = canary.user.post(
            "/gpus/v2/endpoints",
            json={
                "type": "async",
                "name": name,
                "product_id": "serverless.cpu",
                "image": image,
                "command": command,
                "registry_auth_id": auth.json()["id"] if name == "canary" else "",
                "envs": [{"key": "HF_TOKEN", "value": canary.fresh(f"{name} endpoint env value")}],
                "worker_config": {"min_replicas": replicas, "max_replicas": replicas},
            },
        )
        assert endpoint.status_code == 200, endpoint.text
        if name == "canary":
            canary.endpoint_id = endpoint.json()["id"]
        else:
            canary.jobs_endpoint_id = endpoint.json()["id"]
    logs = f"/api/v1/containers/{canary.container_id}/logs"
    wait_for("the container printing its lines", lambda: "line3" in canary.user.get(logs).text, deadline=60)


def test_no_planted_secret_reaches_the_log_or_an_answer(
    served: tuple[ServerProcess, dict[str, str]], private_registry: Registry, busybox_image: str, tmp_path: Path
) -> None:
    server, planted = served
    with httpx.Client(base_url=server.url, timeout=30) as setup:  # the one answer that shows a key is its creation
        setup.headers["Authorization"] = f"Bearer {planted['admin token']}"
        (user_org, user_key), (other_org, other_key) = new_key(setup, "canary"), new_key(setup, "stranger")
    with Receiver().running() as receiver:
        canary = Canary(
            url=server.url,
            secrets={**planted, "user key": user_key, "other key": other_key},
            env=server.env,
            log_path=server.log_path,
            engine_url=private_registry.engine_url,
            registry=private_registry,
            receiver=receiver,
            busybox=busybox_image,
            tmp=tmp_path,
            org_ids={"user": user_org, "other": other_org},
        )
        canary.user = canary.client(headers={"Authorization": f"Bearer {user_key}"})
        canary.other = canary.client(headers={"Authorization": f"Bearer {other_key}"})
        canary.admin = canary.client(headers={"Authorization": f"Bearer {planted['admin token']}"})
        try:
            prepare(canary)
            for run in PROBES:
                run(canary)
            for what, check in canary.pending:
                wait_for(what, check, deadline=60)
            probes_api.ordinary_reads(canary)
        finally:
            for client in (canary.user, canary.other, canary.admin):
                client.close()
            server.stop()  # the writer thread writes everything queued before the process exits
            for cleanup in canary.cleanups:
                cleanup()
    log = server.log()

    assert "unhandled error on GET /planted/failure" in log  # the probes did reach the paths that log
    assert "Exception in ASGI application" in log
    assert "given up after attempt 2" in log
    for path in (server.log_path, *canary.logs):
        text = path.read_text(errors="replace")
        leaked = {
            name: [line for line in text.splitlines() if value in line][:3] for name, value in canary.secrets.items()
        }
        assert {name: lines for name, lines in leaked.items() if lines} == {}, path.name
    answered = [
        (answer.request.method, answer.request.url.path, name)
        for answer in canary.answers
        for name, value in canary.secrets.items()
        if value in answer.text or value in json.dumps(dict(answer.headers))
    ]
    assert answered == []
    raw = [
        (answer[:80], name)
        for answer in canary.raw_answers
        for name, value in canary.secrets.items()
        if value.encode() in answer
    ]
    assert raw == []
    assert "planted failure for Bearer ******" in log  # the message was masked, not left out
