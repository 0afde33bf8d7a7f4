"""The canary's probes of what fails on the engine's side: pulls with credentials that fail (an unreachable
registry, a private registry refusing wrong ones), a pull with right ones, a container that fails to start with
an env secret, an engine that cannot be reached, and a database that cannot be reached at start."""

from __future__ import annotations

import secrets
import subprocess
import sys
import uuid
from typing import Any
from urllib.parse import quote

from tests.canary.harness import Canary, probe
from tests.canary.probes_api import container_body
from tests.live import free_port
from tests.servers import SERVER_START_SECONDS, wait_for

UNPULLABLE = "127.0.0.1:9/canary/nothing:1"  # nothing listens there: the pull fails at once, with credentials sent


def container_status(canary: Canary, container_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = canary.user.get(f"/api/v1/containers/{container_id}").json()
    return answer


def new_container(canary: Canary, name: str, template: dict[str, Any]) -> str:
    """A container of a new template of the user's, made of `template`'s fields."""
    made = canary.user.post("/api/v1/templates", json={"name": name, **template})
    assert made.status_code == 200, made.text
    created = canary.user.post("/api/v1/containers", json=container_body(name, made.json()["id"]))
    assert created.status_code == 200, created.text
    container_id: str = created.json()[0]["id"]
    return container_id


@probe
def failed_pulls_with_credentials(canary: Canary) -> None:
    """A container and an endpoint worker whose images cannot be pulled, with the registry passwords sent."""
    password = canary.fresh("template registry password")
    container = new_container(
        canary, "unpullable", {"path": UNPULLABLE, "credential": {"username": "robot", "secret": password}}
    )
    canary.eventually(
        "the unpullable container failing", lambda: container_status(canary, container)["status"] == "error"
    )

    def worker_failed() -> bool:
        workers = canary.user.get(f"/gpus/v2/endpoints/{canary.endpoint_id}/workers").json()["data"]
        return any(worker["status"]["error"] or worker["status"]["message"] for worker in workers)

    canary.eventually("the endpoint's unpullable worker saying why", worker_failed)


@probe
def private_registry_pulls(canary: Canary) -> None:
    """A private registry that really answers: a pull with wrong credentials (refused), one with the right ones
    (runs), then wrong ones again, now that the image is in the host's cache (refused all the same)."""
    registry = canary.registry
    image = registry.push(canary.busybox, f"canary-{uuid.uuid4().hex[:12]}/app:1")
    canary.cleanups.append(lambda: registry.forget(image))
    canary.plant("private registry password", registry.password)
    command = "sleep 300"

    def template(secret: str) -> dict[str, Any]:
        return {"path": image, "command": command, "credential": {"username": registry.username, "secret": secret}}

    wrong = new_container(canary, "wrong-creds", template(canary.fresh("wrong registry password")))
    wait_for("the pull with wrong credentials refused", lambda: container_status(canary, wrong)["status"] == "error")
    right = new_container(canary, "right-creds", template(registry.password))
    wait_for(
        "the pull with the right credentials running", lambda: container_status(canary, right)["status"] == "running"
    )
    again = new_container(canary, "wrong-again", template(canary.fresh("another wrong registry password")))
    canary.eventually(
        "the cached image refused to wrong credentials",
        lambda: "needs registry credentials" in container_status(canary, again)["reason"],
    )


@probe
def a_container_that_fails_to_start(canary: Canary) -> None:
    secret = canary.fresh("failing container env value")
    container = new_container(
        canary,
        "no-binary",
        {
            "path": canary.busybox,
            "command": "/no/such/binary --token x",
            "envs": [{"name": "DB_PASSWORD", "value": secret}],
        },
    )
    canary.eventually(
        "the container failing to start", lambda: container_status(canary, container)["status"] == "error"
    )


@probe
def an_engine_that_cannot_be_reached(canary: Canary) -> None:
    """A second IDC bound to a socket that does not exist; a container asked of it, with an env secret."""
    idc = {"id": "canary-gone", "name": "gone", "runtime_url": f"unix://{canary.tmp / 'no-engine.sock'}"}
    assert canary.admin.post("/admin/v1/idcs", json=idc).status_code == 200
    product = {"id": "cpu.gone", "idc_id": "canary-gone", "cpu": 1, "memory_mb": 256}
    assert canary.admin.post("/admin/v1/products", json=product).status_code == 200

    def degraded() -> bool:
        health = canary.user.get("/healthz").json()
        return health["status"] == "degraded" and any("canary-gone" in reason for reason in health["reasons"])

    wait_for("/healthz naming the unreachable IDC", degraded)
    secret = canary.fresh("unreachable engine env value")
    template = canary.user.post(
        "/api/v1/templates",
        json={"name": "far", "path": canary.busybox, "envs": [{"name": "API_TOKEN", "value": secret}]},
    )
    body = {**container_body("far", template.json()["id"]), "idc": "canary-gone", "product": "cpu.gone"}
    created = canary.user.post("/api/v1/containers", json=body)
    assert created.status_code == 422, created.text
    assert created.json()["message"].startswith("idc: the container runtime of IDC canary-gone cannot be reached")
    idcs = canary.admin.get("/admin/v1/idcs").json()
    assert [idc["runtime_error"] for idc in idcs if idc["id"] == "canary-gone"] != [""]


@probe
def an_engine_url_with_a_password(canary: Canary) -> None:
    """The operator binds an IDC to an engine URL holding a password, which no engine API takes: refused, where
    it once was stored and answered, and the docker SDK's refusal of it, quoting it whole, became the IDC's
    runtime error."""
    password = canary.fresh("engine URL password")
    for url in (f"tcp://robot:{password}@127.0.0.1:9", f"ssh://robot:{password}@127.0.0.1"):
        answer = canary.admin.post("/admin/v1/idcs", json={"id": "canary-pw", "name": "pw", "runtime_url": url})
        assert answer.status_code == 422, answer.text
        assert answer.json()["details"][0]["field"] == "runtime_url"


@probe
def a_database_that_cannot_be_reached_at_start(canary: Canary) -> None:
    """A server started on a PostgreSQL URL with a password (some of it percent-encoded) where nothing listens:
    it exits, and its log holds neither spelling of the password."""
    password = canary.plant("unreachable database password", f"db@{secrets.token_hex(12)}:/%")
    canary.plant("unreachable database password, encoded", quote(password, safe=""))
    url = f"postgresql+asyncpg://dockyard:{quote(password, safe='')}@127.0.0.1:{free_port()}/dockyard"
    env = {**canary.env, "DOCKYARD_DATABASE_URL": url, "DOCKYARD_DATA_DIR": str(canary.tmp / "no-db")}
    log = canary.tmp / "no-db.log"
    canary.logs.append(log)
    command = [sys.executable, "-m", "dockyard", "server", "--port", str(free_port())]
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        code = server.wait(timeout=SERVER_START_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        raise AssertionError("the server did not exit without its database") from None
    assert code != 0
    assert "Application startup failed" in log.read_text()
