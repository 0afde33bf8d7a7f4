"""Front: a request whose first path segment is an endpoint in the routing table reaches the gateway (and the
worker behind it); every other path, websocket and lifespan event reaches the API app."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Message, Receive, Scope, Send

from dockyard.core.status import EndpointType
from dockyard.gateway.front import Front
from dockyard.gateway.proxy import GatewayApp
from dockyard.gateway.routes import EndpointConfig, RouteTable
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
    return Front(api, gateway, routes), api, gateway, routes


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

            unknown = str(uuid.uuid4())
            for path in ("/gpus/v2/endpoints", "/healthz", f"/{unknown}/x", f"/api/v1/{EP}", f"/{EP}x/y", "/"):
                answer = await client.get(path)
                assert answer.json() == {"api": path.split("?")[0]}, path
                assert "x-dockyard-worker" not in answer.headers
        await gateway.aclose()
    assert [path for kind, path in api.seen if kind == "http"] == [
        "/gpus/v2/endpoints",
        "/healthz",
        f"/{unknown}/x",
        f"/api/v1/{EP}",
        f"/{EP}x/y",
        "/",
    ]


async def test_a_removed_endpoint_falls_through_to_the_api() -> None:
    front, _, gateway, routes = make_front()
    async with serve(front) as url, httpx.AsyncClient(base_url=url, headers=HEADERS, trust_env=False) as client:
        routes.configure([])
        answer = await client.get(f"/{EP}/x")
    await gateway.aclose()
    assert answer.json() == {"api": f"/{EP}/x"}


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
