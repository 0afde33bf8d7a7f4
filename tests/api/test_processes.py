"""`GET /admin/v1/processes`: the live servers and gateways on the database, their state and the leases they hold."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from dockyard.core.status import ProcessKind
from dockyard.db.models import ProcessModel
from dockyard.reconcilers.supervisor import Supervisor
from dockyard.services.processes import FORGET_LOST_SECONDS, ProcessRecord
from tests.conftest import Harness


class Idle:
    name = "jobs"
    interval = 3600.0

    async def reconcile_once(self) -> None:
        return None


async def listed(admin: httpx.AsyncClient) -> dict[str, dict[str, object]]:
    answer = await admin.get("/admin/v1/processes")
    assert answer.status_code == 200, answer.text
    return {process["id"]: process for process in answer.json()}


async def test_processes_show_kind_state_and_the_leases_held(harness: Harness, client: httpx.AsyncClient) -> None:
    db = harness.context.db
    assert (await client.get("/admin/v1/processes")).status_code == 403
    server = ProcessRecord(db, ProcessKind.SERVER, "10.0.0.1:8080", lease_seconds=10.0)
    gateway = ProcessRecord(db, ProcessKind.GATEWAY, "10.0.0.2:8081", lease_seconds=10.0)
    await gateway.register()
    supervisor = Supervisor(db, CollectorRegistry(), lease_seconds=10.0, process=server)
    await supervisor.start([Idle()])  # type: ignore[list-item]
    try:
        deadline = time.monotonic() + 10
        while not supervisor.is_leader:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        while (await listed(harness.admin)).get(server.id) is None:  # inserted by its first heartbeat
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        processes = await listed(harness.admin)
        # The harness's own server registered itself at its start.
        assert [p["kind"] for p in processes.values()].count("server") == 2
        held = processes[server.id]
        assert held["kind"] == "server"
        assert held["state"] == "serving"
        assert held["address"] == "10.0.0.1:8080"
        (lease,) = held["leases"]  # type: ignore[misc]
        assert lease["name"] == "reconcilers"
        assert lease["token"] == 1
        assert lease["acquired_at"] <= lease["expires_at"]
        assert processes[gateway.id]["kind"] == "gateway"
        assert processes[gateway.id]["leases"] == []

        await gateway.drain()
        assert (await listed(harness.admin))[gateway.id]["state"] == "draining"
        # A heartbeat older than a lease period: lost.
        async with db.write() as session:
            row = await session.get(ProcessModel, gateway.id)
            assert row is not None
            row.heartbeat_at -= timedelta(seconds=11)
        assert (await listed(harness.admin))[gateway.id]["state"] == "lost"
        # Lost for longer than FORGET_LOST_SECONDS: the lease holder deletes it at its next renewal.
        async with db.write() as session:
            row = await session.get(ProcessModel, gateway.id)
            assert row is not None
            row.heartbeat_at -= timedelta(seconds=FORGET_LOST_SECONDS)
        while gateway.id in await listed(harness.admin):
            assert time.monotonic() < deadline + 10
            await asyncio.sleep(0.1)
    finally:
        await supervisor.stop()
    # A clean stop releases the lease: the server holds none.
    assert (await listed(harness.admin))[server.id]["leases"] == []
    await server.remove()
    await gateway.remove()
    async with db.read() as session:
        ids = set(await session.scalars(select(ProcessModel.id)))
    assert server.id not in ids
