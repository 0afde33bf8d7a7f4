"""Front: a request whose first path segment is an endpoint id reaches the gateway (and, for an endpoint in the
routing table, the worker behind it); every other path, websocket and lifespan event reaches the API app. And over
the whole app: the gateway answers an unknown id exactly as another organization's endpoint."""

from __future__ import annotations

import gc
import json
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Message, Receive, Scope, Send

from dockyard.api.jobs_lean import LeanJobs
from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.core.planes import EndpointConfig
from dockyard.core.status import EndpointType
from dockyard.gateway.proxy import GatewayApp
from dockyard.gateway.routes import RouteTable
from dockyard.serving.front import Front
from tests.conftest import Harness
from tests.gateway.upstream import Worker, serve

pytestmark = pytest.mark.timeout(60)

EP = str(uuid.uuid4())
HEADERS = {"Authorization": "Bearer key"}


async def authenticate(token: str) -> str | None:
    return "org" if token == "key" else None


class Api:
    """Stands in for the FastAPI app: answers every HTTP request with its path, records every scope type."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append((scope["type"], scope.get("path", "")))
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            body = json.dumps({"api": scope["path"]}).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
        else:
            await receive()
            await send({"type": "websocket.close", "code": 1000})


def make_front() -> tuple[Front, Api, GatewayApp, RouteTable]:
    routes = RouteTable()
    routes.upsert(EndpointConfig(EP, "org", EndpointType.SYNC, 30.0, 4, 10))
    gateway = GatewayApp(routes, authenticate, CollectorRegistry())
    api = Api()
    return Front(api, gateway, routes, freeze_gc=True), api, gateway, routes


async def test_endpoint_paths_reach_the_gateway_and_the_rest_the_api() -> None:
    front, api, gateway, routes = make_front()
    async with serve(Worker()) as worker_url, serve(front) as url:
        routes.worker_ready(EP, "w1", worker_url)
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, trust_env=False) as client:
            for path in (f"/{EP}/v1/models?x=1", f"/{EP}", f"/{EP}/"):
                proxied = await client.get(path)
                assert proxied.status_code == 200, path
                assert proxied.headers["x-dockyard-worker"] == "w1"
                assert "api" not in proxied.json()

            for path in ("/gpus/v2/endpoints", "/healthz", f"/api/v1/{EP}", f"/{EP}x/y", f"/{EP.upper()}/y", "/"):
                answer = await client.get(path)
                assert answer.json() == {"api": path.split("?")[0]}, path
                assert "x-dockyard-worker" not in answer.headers
            unknown = str(uuid.uuid4())
            answer = await client.get(f"/{unknown}/x")  # an id not in the table: the gateway's 404, not the API's
            assert (answer.status_code, answer.json()["message"]) == (404, f"endpoint {unknown} not found")
        await gateway.aclose()
    assert [path for kind, path in api.seen if kind == "http"] == [
        "/gpus/v2/endpoints",
        "/healthz",
        f"/api/v1/{EP}",
        f"/{EP}x/y",
        f"/{EP.upper()}/y",
        "/",
    ]


async def test_a_removed_endpoint_is_the_gateways_404() -> None:
    front, api, gateway, routes = make_front()
    async with serve(front) as url, httpx.AsyncClient(base_url=url, headers=HEADERS, trust_env=False) as client:
        routes.configure([])
        answer = await client.get(f"/{EP}/x")
    await gateway.aclose()
    assert (answer.status_code, answer.json()["message"]) == (404, f"endpoint {EP} not found")
    assert api.seen == []


async def test_an_unknown_id_is_answered_as_another_organizations_endpoint(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through the whole app (Front, gateway, API): status, body, headers and the work done (a key lookup, then the
    # answer) are the same for an endpoint of another organization and for an id that names nothing.
    body = {"type": "sync", "name": "s", "product_id": "serverless.cpu", "image": "localhost/w:1", "ports": [8080]}
    created = await harness.client.post("/gpus/v2/endpoints", json={**body, "worker_config": {"max_replicas": 1}})
    theirs, unknown = created.json()["id"], str(uuid.uuid4())
    lookups: list[str] = []
    gateway = harness.app.front.gateway
    real_authenticate = gateway.authenticate

    async def counted(token: str) -> str | None:
        lookups.append(token)
        return await real_authenticate(token)

    monkeypatch.setattr(gateway, "authenticate", counted)
    other = await harness.new_client("globex")
    key = other.headers["Authorization"].removeprefix("Bearer ")
    try:
        for authorization in (f"Bearer {key}", key, "", "Bearer dy_wrong", "Basic a2V5"):
            headers = {"Authorization": authorization} if authorization else {}
            for method, path in (("GET", "/{id}/v1/models"), ("POST", "/{id}/"), ("GET", "/{id}")):
                answers = []
                for endpoint_id in (theirs, unknown):
                    before = len(lookups)
                    answer = await harness.client.request(
                        method, path.format(id=endpoint_id), headers={"Authorization": "", **headers}
                    )
                    answers.append(
                        (
                            answer.status_code,
                            answer.text.replace(endpoint_id, "ID"),
                            list(answer.headers.items()),
                            len(lookups) - before,
                        )
                    )
                assert answers[0] == answers[1], (authorization, method, path)
                assert answers[0][0] == (404 if authorization.endswith(key) else 401)
    finally:
        await other.aclose()


async def test_websockets_and_lifespan_go_to_the_api_and_shutdown_closes_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    front, api, gateway, _ = make_front()
    closed: list[bool] = []

    async def aclose() -> None:
        closed.append(True)

    monkeypatch.setattr(gateway, "aclose", aclose)

    sent: list[Message] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await front({"type": "websocket", "path": f"/{EP}/ws"}, receive, send)
    assert api.seen == [("websocket", f"/{EP}/ws")]
    assert sent == [{"type": "websocket.close", "code": 1000}]

    sent.clear()
    incoming[:] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def observing_send(message: Message) -> None:
        # The gateway is closed before the server hears that shutdown is complete.
        sent.append({"type": message["type"], "closed_before": bool(closed)})

    await front({"type": "lifespan"}, receive, observing_send)
    assert sent == [
        {"type": "lifespan.startup.complete", "closed_before": False},
        {"type": "lifespan.shutdown.complete", "closed_before": True},
    ]
    assert closed == [True]


@pytest.mark.parametrize("freeze_gc", [True, False])
async def test_the_garbage_collector_is_frozen_at_startup_only_when_switched_on(freeze_gc: bool) -> None:
    routes = RouteTable()
    front = Front(Api(), GatewayApp(routes, authenticate, CollectorRegistry()), routes, freeze_gc=freeze_gc)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    frozen: list[int] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        frozen.append(gc.get_freeze_count())

    gc.unfreeze()
    try:
        await front({"type": "lifespan"}, receive, send)
    finally:
        gc.unfreeze()
    assert (frozen[0] > 0) is freeze_gc


@pytest.mark.parametrize("lean_job_routes", [True, False])
def test_the_lean_job_routes_stand_before_fastapi_only_when_switched_on(tmp_path: Path, lean_job_routes: bool) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'dockyard.db'}"
    app = create_app(Settings(data_dir=tmp_path, database_url=database_url, lean_job_routes=lean_job_routes))
    api = app.front.api
    if lean_job_routes:
        assert isinstance(api, LeanJobs)
        assert api.api == app.serve_api
    else:
        assert api == app.serve_api
