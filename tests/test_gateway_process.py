"""A stand-alone gateway keeps a row in `processes` while it serves, and deletes it when it stops cleanly."""

from __future__ import annotations

import asyncio

import httpx

from dockyard.gateway_app import create_gateway_app
from tests.conftest import Harness
from tests.live import free_port, serving


async def gateways(harness: Harness) -> list[dict[str, object]]:
    answer = await harness.admin.get("/admin/v1/processes")
    assert answer.status_code == 200, answer.text
    return [process for process in answer.json() if process["kind"] == "gateway"]


async def test_a_gateway_lists_itself_while_it_serves(harness: Harness) -> None:
    port = free_port()
    settings = harness.context.settings.model_copy(update={"port": port, "lease_seconds": 1.0})
    app = create_gateway_app(settings)
    with serving(app, port=port) as url:
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"{url}/healthz")).json()
        (listed,) = await gateways(harness)
        assert listed["id"] == health["gateway"]
        assert listed["address"] == f"127.0.0.1:{port}"
        assert listed["state"] == "serving"
        first_beat = listed["heartbeat_at"]
        await asyncio.sleep(1.0)  # several heartbeats (every lease/5 s)
        (listed,) = await gateways(harness)
        assert listed["heartbeat_at"] > first_beat  # type: ignore[operator]
    assert await gateways(harness) == []
