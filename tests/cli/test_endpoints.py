"""`dockyard endpoints ...` against a real server over real sockets: create/list/get/update/delete, the workers,
logs and events a reconciler would write (written here straight into the database), `--wait` ending in success,
failure or a timeout, and `invoke` against a stand-in gateway that echoes what it gets."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dockyard.api import endpoint_workers
from dockyard.app import create_app
from dockyard.client import Client
from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.core.status import EndpointStatus, WorkerStatus
from dockyard.db.models import EndpointModel, EventModel, IdcModel, WorkerModel
from dockyard.errors import error_body
from dockyard.runtimes.base import RunSpec
from tests.cli.conftest import IMAGE, Cli, LiveServer
from tests.conftest import ADMIN_TOKEN
from tests.fakes import FakeRuntime
from tests.live import serving


def _gateway() -> FastAPI:
    """Stands in for the gateway at each endpoint's `url`: echoes the request, streams, or fails on demand."""
    gateway = FastAPI()

    @gateway.api_route("/{endpoint_id}/{path:path}", methods=["GET", "POST", "PUT"])
    async def answer(endpoint_id: str, path: str, request: Request) -> Response:
        if path == "stream":
            return StreamingResponse(iter([b"first\n", b"second\n"]), media_type="text/plain")
        if path == "broken":
            return PlainTextResponse("Traceback: worker crashed", status_code=500)
        if path == "busy":
            return JSONResponse(error_body(429, "the endpoint's queue is full"), status_code=429)
        return JSONResponse(
            {
                "endpoint": endpoint_id,
                "method": request.method,
                "path": path,
                "query": str(request.url.query),
                "authorization": request.headers.get("authorization"),
                "content_type": request.headers.get("content-type"),
                "custom": request.headers.get("x-custom"),
                "body": (await request.body()).decode(),
            }
        )

    return gateway


@dataclass
class Server(LiveServer):
    engine: Engine  # a second connection to the server's database, to write what a reconciler would


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with no reconcilers (nothing but these tests changes an endpoint) and the stand-in gateway."""
    data = tmp_path_factory.mktemp("endpoints")
    runtime = FakeRuntime(images={IMAGE})

    def factory(idc: IdcModel, context: ServerContext) -> FakeRuntime:
        runtime.installation_id = context.installation_id
        return runtime

    with serving(_gateway()) as gateway_url:
        settings = Settings(
            data_dir=data,
            database_url=f"sqlite+aiosqlite:///{data / 'dockyard.db'}",
            admin_token=ADMIN_TOKEN,
            public_address="127.0.0.1",
            gateway_url=gateway_url,
            run_reconcilers=False,
            engine_url="unix:///nonexistent.sock",
        )
        app = create_app(settings, runtime_factory=factory)
        if "/gpus/v2/endpoints/{endpoint_id}/events" not in {r.path for r in app.routes if isinstance(r, APIRoute)}:
            app.include_router(endpoint_workers.router)
        engine = create_engine(f"sqlite:///{data / 'dockyard.db'}", connect_args={"timeout": 30})
        try:
            with serving(app) as url:
                yield Server(url=url, runtime=runtime, engine=engine)
        finally:
            engine.dispose()


@pytest.fixture
def cli(server: Server, tmp_path: Path) -> Cli:
    return Cli(server, tmp_path / "config", server.new_key(f"org-{uuid.uuid4().hex[:12]}"))


def _engine(cli: Cli) -> Engine:
    assert isinstance(cli.server, Server)
    return cli.server.engine


def _create(cli: Cli, *extra: str) -> str:
    created = cli(
        "endpoints", "create", "--type", "sync", "--name", "chat", "--product", "serverless.cpu",
        "--image", IMAGE, "--max-replicas", "2", *extra,
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    endpoint_id = created.stdout.strip()
    uuid.UUID(endpoint_id)
    return endpoint_id


def _get(cli: Cli, endpoint_id: str) -> dict[str, Any]:
    got = cli("endpoints", "get", endpoint_id, "--json")
    assert got.exit_code == 0, got.output
    body: dict[str, Any] = json.loads(got.stdout)
    return body


def _set_status(cli: Cli, endpoint_id: str, status: EndpointStatus, reason: str) -> None:
    with Session(_engine(cli)) as session:
        row = session.get(EndpointModel, endpoint_id)
        assert row is not None
        row.status, row.reason = status, reason
        session.commit()


def _add_worker(cli: Cli, endpoint_id: str, status: WorkerStatus, runtime_id: str = "", reason: str = "") -> str:
    with Session(_engine(cli)) as session:
        endpoint = session.get(EndpointModel, endpoint_id)
        assert endpoint is not None
        worker = WorkerModel(
            endpoint_id=endpoint_id,
            org_id=endpoint.org_id,
            generation=endpoint.generation,
            status=status,
            reason=reason,
            runtime_id=runtime_id,
            health=status == WorkerStatus.READY,
        )
        session.add(worker)
        session.commit()
        return worker.id


def _later(seconds: float, change: Any) -> threading.Timer:
    """Run `change` while the command under test is waiting."""
    timer = threading.Timer(seconds, change)
    timer.start()
    return timer


def test_create_list_get_update_delete(cli: Cli) -> None:
    endpoint_id = _create(
        cli, "--min-replicas", "1", "--idle-timeout", "120", "--max-concurrent", "4", "--request-timeout", "30",
        "--gpu-num", "0", "--port", "8080", "--port", "9090", "--health-path", "/ready", "--env", "TOKEN=s3cret",
        "--policy", "queue:5", "--region", "local", "--command", "python -m app", "--entrypoint", "/bin/sh -c",
    )  # fmt: skip
    body = _get(cli, endpoint_id)
    assert body["worker_config"] == {
        "min_replicas": 1,
        "max_replicas": 2,
        "idle_timeout": 120,
        "max_concurrent_per_worker": 4,
        "gpu_num": 0,
        "rootfs_size_gb": 20,
        "min_cuda_version": "",
        "request_timeout": 30,
    }
    assert (body["type"], body["name"], body["image"], body["region_id"]) == ("sync", "chat", IMAGE, "local")
    assert (body["command"], body["entrypoint"], body["ports"]) == ("python -m app", "/bin/sh -c", [8080, 9090])
    assert body["health_check"] == {"path": "/ready", "port": 8080}  # the first port, as no --health-port was given
    assert body["policy"] == {"type": "queue", "value": 5}
    assert [e["key"] for e in body["envs"]] == ["TOKEN"]
    assert "s3cret" not in json.dumps(body)

    listed = cli("endpoints", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [e["id"] for e in json.loads(listed.stdout)["data"]] == [endpoint_id]
    table = cli("endpoints", "list")
    assert "chat" in table.stdout
    assert "deploying" in table.stdout
    assert "0/0 ready (min 1, max 2)" in table.stdout
    shown = cli("endpoints", "get", endpoint_id)
    assert "GET /ready on port 8080" in shown.stdout
    assert "s3cret" not in shown.stdout
    assert "SCALING_FROM_ZERO" in shown.stdout  # no worker yet, and it wants one (min_replicas 1)

    updated = cli("endpoints", "update", endpoint_id, "--max-replicas", "4", "--health-port", "9090", "--json")
    assert updated.exit_code == 0, updated.output
    assert json.loads(updated.stdout) == {}
    body = _get(cli, endpoint_id)
    # Only what was given changed: the rest of worker_config and the health check's path are kept.
    assert (body["worker_config"]["max_replicas"], body["worker_config"]["min_replicas"]) == (4, 1)
    assert body["worker_config"]["idle_timeout"] == 120
    assert body["health_check"] == {"path": "/ready", "port": 9090}
    renamed = cli("endpoints", "update", endpoint_id, "--name", "chat-2")
    assert renamed.stdout == f"{endpoint_id}: updated\n"
    assert _get(cli, endpoint_id)["name"] == "chat-2"
    nothing = cli("endpoints", "update", endpoint_id)
    assert nothing.exit_code == 1
    assert "nothing to change" in nothing.stderr

    deleted = cli("endpoints", "delete", endpoint_id)
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout == f"{endpoint_id}: deleting\n"
    assert _get(cli, endpoint_id)["status"]["status"] == "deleting"


def test_create_from_a_file_with_options_over_it(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "type": "async",
                "name": "from-file",
                "product_id": "serverless.cpu",
                "image": IMAGE,
                "worker_config": {"max_replicas": 3, "idle_timeout": 90},
                "envs": [{"key": "MODE", "value": "batch"}],
            }
        )
    )
    created = cli("endpoints", "create", "--file", str(spec), "--name", "override", "--min-replicas", "1", "--json")
    assert created.exit_code == 0, created.output
    body = _get(cli, json.loads(created.stdout)["id"])
    assert (body["type"], body["name"]) == ("async", "override")
    assert (body["worker_config"]["max_replicas"], body["worker_config"]["min_replicas"]) == (3, 1)
    assert body["worker_config"]["idle_timeout"] == 90
    assert [e["key"] for e in body["envs"]] == ["MODE"]

    spec.write_text("[1, 2]")
    not_object = cli("endpoints", "create", "--file", str(spec))
    assert not_object.exit_code == 1
    assert "not an object" in not_object.stderr


def test_create_says_what_is_missing_or_malformed_before_any_request(cli: Cli) -> None:
    missing = cli("endpoints", "create", "--name", "x", "--image", IMAGE)
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (
        "error: missing --type, --product, --max-replicas; give them, or the whole request body with --file spec.json"
    )
    base = ("endpoints", "create", "--type", "sync", "--name", "x", "--product", "serverless.cpu", "--image", IMAGE)
    bad_policy = cli(*base, "--max-replicas", "1", "--policy", "fast")
    assert bad_policy.exit_code == 2
    assert "queue:SECONDS" in bad_policy.output
    no_port = cli(*base, "--max-replicas", "1", "--health-path", "/ready")
    assert no_port.exit_code == 1
    assert "--health-port" in no_port.stderr
    unknown_product = cli(*base[:-3], "nope", "--image", IMAGE, "--max-replicas", "1")
    assert unknown_product.exit_code == 1
    assert unknown_product.stderr.startswith("error: product_id: no product nope")
    assert json.loads(cli("endpoints", "list", "--json").stdout)["data"] == []


def test_wait_times_out_saying_what_to_check(cli: Cli) -> None:
    created = cli(
        "endpoints", "create", "--type", "sync", "--name", "slow", "--product", "serverless.cpu", "--image", IMAGE,
        "--min-replicas", "1", "--max-replicas", "1", "--wait", "--timeout", "1",
    )  # fmt: skip
    assert created.exit_code == 1
    endpoint_id = json.loads(cli("endpoints", "list", "--json").stdout)["data"][0]["id"]
    assert f"error: gave up after 1 s waiting for endpoint slow ({endpoint_id}) to be running" in created.stderr
    assert "it is deploying" in created.stderr
    assert f"`dockyard endpoints events {endpoint_id}`" in created.stderr
    assert f"`dockyard endpoints workers {endpoint_id}`" in created.stderr


def test_wait_ends_at_failure_with_the_reason(cli: Cli) -> None:
    endpoint_id = _create(cli, "--min-replicas", "1")
    timer = _later(0.8, lambda: _set_status(cli, endpoint_id, EndpointStatus.FAILED, "image localhost/x not found"))
    updated = cli("endpoints", "update", endpoint_id, "--image", "localhost/x", "--wait", "--timeout", "30")
    timer.join()
    assert updated.exit_code == 1
    assert f"error: endpoint chat ({endpoint_id}) is failed: image localhost/x not found" in updated.stderr
    assert f"`dockyard endpoints events {endpoint_id}`" in updated.stderr


def test_wait_shows_workers_and_returns_once_enough_are_ready(cli: Cli) -> None:
    endpoint_id = _create(cli, "--min-replicas", "1")

    def come_up() -> None:
        _add_worker(cli, endpoint_id, WorkerStatus.READY)
        _set_status(cli, endpoint_id, EndpointStatus.RUNNING, "1 of 1 workers ready")

    timer = _later(0.8, come_up)
    waited = cli("endpoints", "update", endpoint_id, "--max-replicas", "3", "--wait", "--timeout", "30", "--json")
    timer.join()
    assert waited.exit_code == 0, waited.output
    body = json.loads(waited.stdout)
    assert body["status"]["status"] == "running"
    assert [w["status"]["status"] for w in body["workers"]] == ["ready"]
    assert "ready" in waited.stderr  # the live table's last state


def test_workers_logs_and_events(cli: Cli) -> None:
    endpoint_id = _create(cli)
    assert "No workers" in cli("endpoints", "workers", endpoint_id).stderr
    runtime_object = _run_object(cli.server.runtime, [b"one\n", b"two\n", b"three\n"])
    ready = _add_worker(cli, endpoint_id, WorkerStatus.READY, runtime_id=runtime_object)
    pending = _add_worker(cli, endpoint_id, WorkerStatus.PENDING, reason="waiting for a free GPU")

    listed = cli("endpoints", "workers", endpoint_id, "--json")
    assert listed.exit_code == 0, listed.output
    assert [(w["id"], w["status"]["status"]) for w in json.loads(listed.stdout)["data"]] == [
        (ready, "ready"),
        (pending, "pending"),
    ]
    table = cli("endpoints", "workers", endpoint_id)
    assert "waiting for a free GPU" in table.stdout

    logs = cli("endpoints", "logs", endpoint_id, ready, "--tail", "2")
    assert logs.exit_code == 0, logs.output
    assert logs.stdout == "two\nthree\n"
    followed = cli("endpoints", "logs", endpoint_id, ready, "--follow")
    assert followed.stdout == "one\ntwo\nthree\n"
    not_started = cli("endpoints", "logs", endpoint_id, pending)
    assert not_started.exit_code == 1
    assert f"error: worker {pending} has not started yet (status pending)" in not_started.stderr

    assert "No events yet" in cli("endpoints", "events", endpoint_id).stderr
    with Session(_engine(cli)) as session:
        endpoint = session.get(EndpointModel, endpoint_id)
        assert endpoint is not None
        for kind, message in (("WorkerCreated", "min_replicas is 1"), ("ScaledUp", "3 requests queued over 5 s")):
            session.add(
                EventModel(
                    org_id=endpoint.org_id, object_kind="endpoint", object_id=endpoint_id, type=kind, message=message
                )
            )
            session.commit()
    events = cli("endpoints", "events", endpoint_id, "--json")
    assert [e["type"] for e in json.loads(events.stdout)["data"]] == ["ScaledUp", "WorkerCreated"]
    assert "3 requests queued over 5 s" in cli("endpoints", "events", endpoint_id).stdout


def _run_object(runtime: FakeRuntime, output: list[bytes]) -> str:
    """A runtime object holding `output`, made through the runtime's own contract."""
    obj = asyncio.run(runtime.create(RunSpec(name=f"worker-{uuid.uuid4().hex}", image=IMAGE, labels={})))
    runtime.output[obj.id] = output
    return obj.id


def test_invoke_streams_the_answer_with_the_key_and_body(cli: Cli, tmp_path: Path) -> None:
    endpoint_id = _create(cli)
    payload = tmp_path / "payload.json"
    payload.write_text('{"prompt": "hi"}')
    echoed = cli("endpoints", "invoke", endpoint_id, "v1/chat?x=1", "--data", f"@{payload}", "-H", "X-Custom: yes")
    assert echoed.exit_code == 0, echoed.output
    assert json.loads(echoed.stdout) == {
        "endpoint": endpoint_id,
        "method": "POST",
        "path": "v1/chat",
        "query": "x=1",
        "authorization": f"Bearer {cli.api_key}",
        "content_type": "application/json",
        "custom": "yes",
        "body": '{"prompt": "hi"}',
    }
    from_stdin = cli("endpoints", "invoke", endpoint_id, "raw", "-X", "PUT", "--data", "-", stdin="plain bytes")
    assert (json.loads(from_stdin.stdout)["method"], json.loads(from_stdin.stdout)["body"]) == ("PUT", "plain bytes")
    assert json.loads(cli("endpoints", "invoke", endpoint_id).stdout)["method"] == "GET"

    streamed = cli("endpoints", "invoke", endpoint_id, "stream")
    assert streamed.exit_code == 0, streamed.output
    assert streamed.stdout == "first\nsecond\n"


def test_invoke_errors_say_what_to_do(cli: Cli) -> None:
    missing = str(uuid.uuid4())
    unknown = cli("endpoints", "invoke", missing, "v1/chat", "--data", "{}")
    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == f"error: endpoint {missing} not found; `dockyard endpoints list` shows yours"
    assert unknown.stdout == ""

    endpoint_id = _create(cli)
    broken = cli("endpoints", "invoke", endpoint_id, "broken")
    assert broken.exit_code == 1
    assert "error: the endpoint answered 500 Internal Server Error: Traceback: worker crashed" in broken.stderr
    assert "logs" in broken.stderr
    assert broken.stdout == ""
    busy = cli("endpoints", "invoke", endpoint_id, "busy")
    assert busy.exit_code == 1
    assert "answered 429 Too Many Requests: the endpoint's queue is full; retry in a moment" in busy.stderr
    bad_header = cli("endpoints", "invoke", endpoint_id, "-H", "no-colon")
    assert bad_header.exit_code == 2
    assert "Name: value" in bad_header.output


def test_the_sdk_lists_every_cursor_page(cli: Cli) -> None:
    ids = [_create(cli) for _ in range(5)]
    with Client(cli.server.url, cli.api_key) as client:
        assert [e["id"] for e in client.list_endpoints(page_size=2)] == ids[::-1]
        assert [e["id"] for e in client.list_endpoints(keyword="nothing-matches", page_size=2)] == []
    listed = json.loads(cli("endpoints", "list", "--json").stdout)
    assert [e["id"] for e in listed["data"]] == ids[::-1]


def test_the_sdk_invokes_and_returns_error_answers_as_they_are(cli: Cli) -> None:
    endpoint_id = _create(cli)
    with Client(cli.server.url, cli.api_key) as client:
        echoed = client.invoke_endpoint(endpoint_id, "/v1/chat?stream=false", json={"prompt": "hi"})
        assert echoed.status_code == 200
        assert (echoed.json()["path"], echoed.json()["query"]) == ("v1/chat", "stream=false")
        assert json.loads(echoed.json()["body"]) == {"prompt": "hi"}
        assert client.invoke_endpoint(endpoint_id, "broken").status_code == 500
        with client.stream_endpoint(endpoint_id, "stream", method="GET") as response:
            assert list(response.iter_lines()) == ["first", "second"]


def _remove_row(cli: Cli, endpoint_id: str) -> None:
    """What the reconciler does once an endpoint's workers are gone."""
    with Session(_engine(cli)) as session:
        row = session.get(EndpointModel, endpoint_id)
        assert row is not None
        session.delete(row)
        session.commit()


def test_delete_wait_returns_once_the_endpoint_is_gone(cli: Cli) -> None:
    endpoint_id = _create(cli)
    timer = _later(0.8, lambda: _remove_row(cli, endpoint_id))
    deleted = cli("endpoints", "delete", "chat", "--wait", "--timeout", "30")
    timer.join()
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout == f"{endpoint_id}: deleted\n"
    assert "deleting" in deleted.stderr  # the progress shown meanwhile


def test_delete_wait_exits_1_when_the_endpoint_outlives_it(cli: Cli) -> None:
    endpoint_id = _create(cli)
    _add_worker(cli, endpoint_id, WorkerStatus.DRAINING)
    deleted = cli("endpoints", "delete", endpoint_id[:8], "--wait", "--timeout", "1")
    assert deleted.exit_code == 1
    assert f"gave up after 1 s waiting for endpoint chat ({endpoint_id}) to be gone: it is deleting" in deleted.stderr
    assert "with 1 worker(s) left" in deleted.stderr
    assert f"`dockyard endpoints events {endpoint_id}`" in deleted.stderr


def _fields(table: str) -> dict[str, str]:
    """`endpoints get`'s FIELD and VALUE columns."""
    pairs = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in table.splitlines()]
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def test_an_async_endpoint_shows_its_job_api_and_no_health_check(cli: Cli) -> None:
    created = cli(
        "endpoints", "create", "--type", "async", "--name", "queue", "--product", "serverless.cpu",
        "--image", IMAGE, "--max-replicas", "1",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    endpoint_id = created.stdout.strip()
    shown = cli("endpoints", "get", "queue")
    assert shown.exit_code == 0, shown.output
    rows = _fields(shown.stdout)
    assert rows["job api"] == f"{_get(cli, endpoint_id)['url']} (run, status/JOB, ...)"
    assert rows["job api"].endswith(f"/v1/{endpoint_id} (run, status/JOB, ...)")
    assert "health check" not in rows
    assert "url" not in rows
    sync_id = _create(cli)
    sync = _fields(cli("endpoints", "get", sync_id).stdout)
    assert sync["url"] == _get(cli, sync_id)["url"]
    assert "health check" in sync
