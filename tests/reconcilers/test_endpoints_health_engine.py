"""A whole server on Podman, with small bounds: a worker whose health check is on a port nothing listens on shows
"connection refused" as its last probe within seconds and is failed after its probe bound, with a reason the API
and the CLI show; a health check sent without a port probes the first port; an async worker that never calls its
webhooks (the server on loopback) is failed naming the URL it was given and the cause; a worker scaled away
leaves its output readable through the API and the CLI until its retention has passed, and while it ran its new
lines were followed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dockyard.cli import app as cli_app
from dockyard.services.worker_runspec import CONTAINER_HOST
from tests.servers import EngineServer, engine_server, wait_for

pytestmark = pytest.mark.engine

PROBE_INTERVAL = 0.5
STARTUP_FAILURES = 4  # so a starting worker failing its check is failed after 2 s
CALL_IN = 3.0
RETENTION = 2.0
# Serves /health (200) on 8080 after saying hello with its worker id, and logs each request (each probe).
SERVE = (
    "sh -c 'mkdir -p /www && echo ok > /www/health && echo hello-from-$DOCKYARD_WORKER_ID "
    "&& exec httpd -f -v -p 8080 -h /www'"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, engine_url: str, busybox_image: str) -> Iterator[EngineServer]:
    # On loopback and with no webhook URL of its own, as a server started with the defaults.
    with engine_server(
        tmp_path_factory.mktemp("health"),
        engine_url,
        worker_webhook_url="",
        health_check_interval=PROBE_INTERVAL,
        health_startup_failures=STARTUP_FAILURES,
        worker_call_in_timeout=CALL_IN,
        worker_log_retention_seconds=RETENTION,
    ) as running:
        yield running


def create(server: EngineServer, image: str, **fields: Any) -> str:
    body = {
        "type": "sync",
        "name": "health",
        "product_id": "serverless.cpu",
        "image": image,
        "command": SERVE,
        "ports": [8080],
        "worker_config": {"min_replicas": 1, "max_replicas": 1},
        **fields,
    }
    with server.api() as api:
        answer = api.post("/gpus/v2/endpoints", json=body)
    assert answer.status_code == 200, answer.text
    endpoint_id: str = answer.json()["id"]
    return endpoint_id


def workers(server: EngineServer, endpoint_id: str) -> list[dict[str, Any]]:
    with server.api() as api:
        answer = api.get(f"/gpus/v2/endpoints/{endpoint_id}/workers")
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["data"]
    return found


def cli(server: EngineServer, tmp_path: Path, *args: str) -> str:
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "DOCKYARD_URL": server.url,
        "DOCKYARD_API_KEY": server.key,
        "COLUMNS": "400",
    }
    result = CliRunner().invoke(cli_app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_wrong_health_port_shows_its_probe_and_fails_after_the_probe_bound(
    server: EngineServer, busybox_image: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    endpoint_id = create(server, busybox_image, health_check={"path": "/health", "port": 9090})

    def refused() -> dict[str, Any] | None:
        found = [w for w in workers(server, endpoint_id) if w["status"]["status"] == "starting"]
        probe = found[0]["last_probe"] if found else None
        return found[0] if probe and probe["result"] == "connection refused" else None

    wait_for("the last probe showing connection refused", refused, deadline=30)
    shown = time.monotonic() - started
    table = cli(server, tmp_path, "endpoints", "workers", endpoint_id)
    assert "connection refused at" in table

    def failed() -> dict[str, Any] | None:
        found = [w for w in workers(server, endpoint_id) if w["status"]["status"] == "failed"]
        return found[0] if found else None

    worker = wait_for("the worker failed", failed, deadline=30)
    took = time.monotonic() - started
    reason = worker["status"]["error"]
    assert reason.startswith(
        f"health check GET /health on port 9090 failed {STARTUP_FAILURES} times in "
        f"{STARTUP_FAILURES * PROBE_INTERVAL:g} s after its container started: connection refused; "
    )
    assert f"dockyard endpoints update {endpoint_id} --health-port PORT --health-path PATH" in reason
    assert "health check GET /health on port 9090 failed" in cli(server, tmp_path, "endpoints", "workers", endpoint_id)
    print(f"last probe shown after {shown:.1f} s; worker failed after {took:.1f} s")


def test_a_health_check_without_a_port_probes_the_first_port(server: EngineServer, busybox_image: str) -> None:
    endpoint_id = create(server, busybox_image, health_check={"path": "/health"})
    with server.api() as api:
        check = api.get(f"/gpus/v2/endpoints/{endpoint_id}").json()["health_check"]
    assert check == {"path": "/health", "port": 8080}

    def ready() -> dict[str, Any] | None:
        found = [w for w in workers(server, endpoint_id) if w["status"]["status"] == "ready"]
        return found[0] if found else None

    worker = wait_for("the worker ready", ready, deadline=30)
    assert worker["last_probe"]["result"] == "ok"


def test_an_async_worker_that_never_calls_in_is_failed_naming_its_url(
    server: EngineServer, busybox_image: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    body = {"type": "async", "command": "sleep 3600", "ports": [], "policy": {"type": "queue", "value": 1}}
    endpoint_id = create(server, busybox_image, **body)

    def failed() -> dict[str, Any] | None:
        found = [w for w in workers(server, endpoint_id) if w["status"]["status"] == "failed"]
        return found[0] if found else None

    worker = wait_for("the silent async worker failed", failed, deadline=30)
    took = time.monotonic() - started
    port = httpx.URL(server.url).port
    reason = worker["status"]["error"]
    assert reason.startswith(f"never called in: no job-take or ping webhook call within {CALL_IN:g} s")
    assert f"it was given http://{CONTAINER_HOST}:{port}/gpus/v2/workers/{endpoint_id}/job-take/;" in reason
    assert "the server listens on 127.0.0.1 only" in reason
    assert "`dockyard server --host 0.0.0.0`" in reason
    assert worker["first_call_at"] is None
    with server.api() as api:
        events = api.get(f"/gpus/v2/endpoints/{endpoint_id}/events").json()["data"]
    assert any(e["type"] == "WorkerFailed" and e["message"].endswith(reason) for e in events)
    assert "never called in" in cli(server, tmp_path, "endpoints", "workers", endpoint_id)
    print(f"the silent async worker failed after {took:.1f} s")


def test_a_scaled_away_workers_output_is_readable_until_its_retention_passes(
    server: EngineServer, busybox_image: str, tmp_path: Path
) -> None:
    endpoint_id = create(server, busybox_image)

    def ready() -> dict[str, Any] | None:
        found = [w for w in workers(server, endpoint_id) if w["status"]["status"] == "ready"]
        return found[0] if found else None

    worker_id = wait_for("the worker ready", ready, deadline=30)["id"]
    logs_url = f"/gpus/v2/endpoints/{endpoint_id}/logs"
    with server.api() as api, api.stream("GET", logs_url, params={"follow": "true", "limit": 1}) as followed:
        lines = followed.iter_lines()
        window, new = next(lines), next(lines)  # the window's last line, then one the worker wrote later
    assert window.split(" ", 2)[1] == new.split(" ", 2)[1] == worker_id
    assert window < new  # by time: RFC 3339 UTC with microseconds sorts as text
    with server.api() as api:
        none = {"worker_config": {"min_replicas": 0, "max_replicas": 0}}
        scaled = api.put(f"/gpus/v2/endpoints/{endpoint_id}", json=none)
        assert scaled.status_code == 200, scaled.text
    wait_for("the worker removed", lambda: not workers(server, endpoint_id), deadline=30)
    removed = time.monotonic()
    line = f" {worker_id} hello-from-{worker_id}"
    with server.api() as api:
        logs = api.get(f"/gpus/v2/endpoints/{endpoint_id}/logs")
    assert logs.status_code == 200, logs.text
    assert line in logs.text
    assert line in cli(server, tmp_path, "endpoints", "logs", endpoint_id, "--worker", worker_id)

    def pruned() -> bool:
        with server.api() as api:
            return api.get(f"/gpus/v2/endpoints/{endpoint_id}/logs").text == ""

    wait_for("the kept output pruned", pruned, deadline=30)
    kept = time.monotonic() - removed
    assert kept >= RETENTION - 0.5  # kept for its retention, not dropped at removal
    print(f"the removed worker's output was readable for {kept:.1f} s")
