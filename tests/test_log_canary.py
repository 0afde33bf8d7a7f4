"""The log canary: secrets are planted in a real `dockyard server` process (its admin token, Fernet key and
database password, a user's and another organization's keys, template and endpoint env values, registry
passwords), every error path in `PROBES` is triggered along with ordinary calls, and none of the secrets may
appear in the server's log, at debug level, or in any answer.

To cover another path, add a function decorated with `@probe`: it gets the `Canary` (clients of both
organizations and the operator, the objects made up front, `plant` for secrets of its own) and calls the server;
every answer its clients get is checked, and the log once the server has stopped and written everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import Request

from dockyard.app import DockyardApp, create_app_from_env
from dockyard.json_depth import MAX_JSON_DEPTH
from dockyard.services.worker_runspec import WEBHOOK_PREFIX
from tests.pg import PostgresServer
from tests.servers import ServerProcess, remove_installation

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0
# Prints a few lines and stays up: its logs are read with `since` values that once were a 500.
TALKER = "for i in 1 2 3; do echo line$i; done; sleep 300"
UNPULLABLE = "127.0.0.1:9/canary/nothing:1"  # nothing listens there: the pull fails at once, with credentials sent


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


@dataclass
class Canary:
    """What a probe works with. Every answer to `user`, `other` and `admin` is kept for the final check."""

    url: str
    secrets: dict[str, str]
    user: httpx.Client = field(init=False)
    other: httpx.Client = field(init=False)
    admin: httpx.Client = field(init=False)
    container_id: str = ""
    template_id: str = ""
    endpoint_id: str = ""
    answers: list[httpx.Response] = field(default_factory=list)

    def plant(self, name: str, value: str) -> str:
        """A secret of the probe's own, checked like the others."""
        self.secrets[name] = value
        return value

    def client(self, **options: Any) -> httpx.Client:
        """A client of the server whose answers are checked too."""
        return httpx.Client(base_url=self.url, timeout=30, event_hooks={"response": [self._keep]}, **options)

    def _keep(self, answer: httpx.Response) -> None:
        answer.read()
        self.answers.append(answer)


PROBES: list[Callable[[Canary], None]] = []


def probe(function: Callable[[Canary], None]) -> Callable[[Canary], None]:
    PROBES.append(function)
    return function


def container_body(name: str, template_id: str) -> dict[str, Any]:
    return {"count": 1, "idc": "local", "product": "cpu.small", "name": name, "templateId": template_id}


def wait_for(what: str, check: Callable[[], Any]) -> Any:
    end = time.monotonic() + DEADLINE
    while not (value := check()):
        assert time.monotonic() < end, f"not within {DEADLINE} s: {what}"
        time.sleep(0.3)
    return value


@probe
def wrong_keys(canary: Canary) -> None:
    with canary.client() as anonymous:
        for authorization in (f"Bearer dy_{secrets.token_urlsafe(24)}", "Bearer nonsense", "Basic dXNlcjpwYXNz", ""):
            assert anonymous.get("/api/v1/containers", headers={"Authorization": authorization}).status_code == 401
        hook = f"{WEBHOOK_PREFIX}/{canary.endpoint_id}/job-take/worker"
        assert anonymous.get(hook, headers={"Authorization": f"dyw_{secrets.token_urlsafe(24)}"}).status_code == 401
    assert canary.user.get("/admin/v1/organizations").status_code in (401, 403)
    assert canary.admin.get("/api/v1/containers").status_code in (401, 403)


@probe
def bad_bodies(canary: Canary) -> None:
    json_type = {"Content-Type": "application/json"}
    assert canary.user.post("/api/v1/templates", content=b'{"name": ', headers=json_type).status_code == 422
    assert canary.user.post("/api/v1/templates", json={"name": 7, "path": ["x"]}).status_code == 422
    assert (
        canary.user.post("/api/v1/templates", content=b"x" * (11 * 1024 * 1024), headers=json_type).status_code == 413
    )
    deep = '{"k":' * 1000 + "1" + "}" * 1000
    assert canary.user.post("/api/v1/templates", content=deep, headers=json_type).status_code == 400
    run = canary.user.post(f"/v2/{canary.endpoint_id}/run", content=f'{{"input": {deep}}}', headers=json_type)
    assert run.status_code == 400
    assert f"deeper than {MAX_JSON_DEPTH}" in run.json()["message"]


@probe
def logs_since_the_epoch(canary: Canary) -> None:
    logs = f"/api/v1/containers/{canary.container_id}/logs"
    for since in ("0", "-1", "1970-01-01T00:00:00Z"):
        answer = canary.user.get(logs, params={"since": since})
        assert answer.status_code == 200, answer.text
        assert "line3" in answer.text
    assert canary.user.get(logs, params={"since": "nan"}).status_code == 422


@probe
def another_organizations_objects(canary: Canary) -> None:
    for path in (
        f"/api/v1/containers/{canary.container_id}",
        f"/api/v1/containers/{canary.container_id}/logs?since=0",
        f"/api/v1/templates/{canary.template_id}",
        f"/gpus/v2/endpoints/{canary.endpoint_id}",
    ):
        assert canary.other.get(path).status_code == 404, path
    assert canary.other.delete(f"/api/v1/containers/{canary.container_id}").status_code == 404


@probe
def an_unhandled_error(canary: Canary) -> None:
    for client in (canary.user, canary.admin):
        answer = client.get("/planted/failure")
        assert answer.status_code == 500
        assert answer.json()["message"] == "internal error; the server log has the details"


@probe
def failed_pulls_with_credentials(canary: Canary) -> None:
    """A container and an endpoint worker whose images cannot be pulled, with the registry passwords sent."""
    password = canary.plant("template registry password", f"tpl-registry-{secrets.token_hex(12)}")
    template = canary.user.post(
        "/api/v1/templates",
        json={"name": "unpullable", "path": UNPULLABLE, "credential": {"username": "robot", "secret": password}},
    )
    assert template.status_code == 200, template.text
    body = {
        "count": 1,
        "idc": "local",
        "product": "cpu.small",
        "name": "unpullable",
        "templateId": template.json()["id"],
    }
    created = canary.user.post("/api/v1/containers", json=body)
    assert created.status_code == 200, created.text
    container = f"/api/v1/containers/{created.json()[0]['id']}"
    wait_for("the unpullable container failing", lambda: canary.user.get(container).json()["status"] == "error")

    def worker_failed() -> bool:
        workers = canary.user.get(f"/gpus/v2/endpoints/{canary.endpoint_id}/workers").json()["data"]
        return any(worker["status"]["error"] or worker["status"]["message"] for worker in workers)

    wait_for("the endpoint's unpullable worker saying why", worker_failed)


@probe
def ordinary_calls(canary: Canary) -> None:
    for path in (
        "/api/v1/templates",
        f"/api/v1/templates/{canary.template_id}",
        f"/api/v1/containers/{canary.container_id}",
        "/gpus/v2/registry-auths",
        f"/gpus/v2/endpoints/{canary.endpoint_id}",
        "/healthz",
    ):
        assert canary.user.get(path).status_code == 200, path


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
    tmp_path: Path, engine_url: str, database: tuple[str, str]
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    database_url, database_password = database
    planted = {
        "admin token": f"admin-{secrets.token_hex(16)}",
        "fernet key": Fernet.generate_key().decode(),
        **({"database password": database_password} if database_password else {}),
    }
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKYARD_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        DOCKYARD_DATA_DIR=str(tmp_path / "data"),
        DOCKYARD_DATABASE_URL=database_url,
        DOCKYARD_ADMIN_TOKEN=planted["admin token"],
        DOCKYARD_SECRET_KEY=planted["fernet key"],
        DOCKYARD_ENGINE_URL=engine_url,
        DOCKYARD_PUBLIC_ADDRESS="127.0.0.1",
        DOCKYARD_RECONCILE_INTERVAL="0.3",
        DOCKYARD_LOG_LEVEL="debug",
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
            remove_installation(engine_url, found[1])


def new_key(admin: httpx.Client, org: str) -> str:
    created = admin.post("/admin/v1/organizations", json={"name": org})
    assert created.status_code == 200, created.text
    answer = admin.post(f"/admin/v1/organizations/{created.json()['id']}/keys", json={})
    assert answer.status_code == 200, answer.text
    key: str = answer.json()["key"]
    return key


def prepare(canary: Canary, busybox_image: str) -> None:
    """The objects the probes use, with secrets in their env and credentials: a running container that has
    printed its lines, and an async endpoint whose workers cannot pull their image."""
    env_secret = canary.plant("template env value", f"tpl-env-{secrets.token_hex(12)}")
    template = canary.user.post(
        "/api/v1/templates",
        json={
            "name": "talker",
            "path": busybox_image,
            "command": f"sh -c '{TALKER}'",
            "envs": [{"name": "API_TOKEN", "value": env_secret}],
        },
    )
    assert template.status_code == 200, template.text
    canary.template_id = template.json()["id"]
    created = canary.user.post("/api/v1/containers", json=container_body("talker", canary.template_id))
    assert created.status_code == 200, created.text
    canary.container_id = created.json()[0]["id"]
    logs = f"/api/v1/containers/{canary.container_id}/logs"
    wait_for("the container printing its lines", lambda: "line3" in canary.user.get(logs).text)

    password = canary.plant("registry auth password", f"auth-registry-{secrets.token_hex(12)}")
    auth = canary.user.post(
        "/gpus/v2/registry-auths", json={"name": "robot", "username": "robot", "password": password}
    )
    assert auth.status_code == 200, auth.text
    endpoint_secret = canary.plant("endpoint env value", f"ep-env-{secrets.token_hex(12)}")
    endpoint = canary.user.post(
        "/gpus/v2/endpoints",
        json={
            "type": "async",
            "name": "canary",
            "product_id": "serverless.cpu",
            "image": UNPULLABLE,
            "registry_auth_id": auth.json()["id"],
            "envs": [{"key": "HF_TOKEN", "value": endpoint_secret}],
            "worker_config": {"min_replicas": 1, "max_replicas": 1},
        },
    )
    assert endpoint.status_code == 200, endpoint.text
    canary.endpoint_id = endpoint.json()["id"]


def test_no_planted_secret_reaches_the_log_or_an_answer(
    served: tuple[ServerProcess, dict[str, str]], busybox_image: str
) -> None:
    server, planted = served
    with httpx.Client(base_url=server.url, timeout=30) as setup:  # the one answer that shows a key is its creation
        setup.headers["Authorization"] = f"Bearer {planted['admin token']}"
        keys = {"user key": new_key(setup, "canary"), "other key": new_key(setup, "stranger")}
    canary = Canary(server.url, {**planted, **keys})
    canary.user = canary.client(headers={"Authorization": f"Bearer {keys['user key']}"})
    canary.other = canary.client(headers={"Authorization": f"Bearer {keys['other key']}"})
    canary.admin = canary.client(headers={"Authorization": f"Bearer {planted['admin token']}"})
    try:
        prepare(canary, busybox_image)
        for run in PROBES:
            run(canary)
    finally:
        for client in (canary.user, canary.other, canary.admin):
            client.close()
    server.stop()  # the writer thread writes everything queued before the process exits
    log = server.log()

    assert "unhandled error on GET /planted/failure" in log  # the probes did reach the paths that log
    assert "Exception in ASGI application" in log
    leaked = {name: [line for line in log.splitlines() if value in line][:3] for name, value in canary.secrets.items()}
    assert {name: lines for name, lines in leaked.items() if lines} == {}
    answered = [
        (answer.request.method, answer.request.url.path, name)
        for answer in canary.answers
        for name, value in canary.secrets.items()
        if value in answer.text or value in json.dumps(dict(answer.headers))
    ]
    assert answered == []
    assert "planted failure for Bearer ******" in log  # the message was masked, not left out
