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
from dockyard.db.session import Database
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
    gateway = ProcessRecord(db, ProcessKind.GATEWAY, "10.0.0.2:8081", lease_seconds=10.0)
    gone = ProcessRecord(db, ProcessKind.GATEWAY, "10.0.0.3:8081", lease_seconds=10.0)
    await gateway.register()
    await gone.register()
    processes = await listed(harness.admin)
    # The harness's own server registered itself at its start.
    assert sorted(p["kind"] for p in processes.values()) == ["gateway", "gateway", "server"]
    assert processes[gateway.id]["state"] == "serving"
    assert processes[gateway.id]["address"] == "10.0.0.2:8081"
    assert processes[gateway.id]["leases"] == []
    await gateway.drain()
    assert (await listed(harness.admin))[gateway.id]["state"] == "draining"
    # A heartbeat older than a lease period: lost; lost for FORGET_LOST_SECONDS more, it is for the holder to delete.
    await age(db, gateway.id, timedelta(seconds=11))
    await age(db, gone.id, timedelta(seconds=11 + FORGET_LOST_SECONDS))
    processes = await listed(harness.admin)
    assert processes[gateway.id]["state"] == "lost"
    assert processes[gone.id]["state"] == "lost"

    server = ProcessRecord(db, ProcessKind.SERVER, "10.0.0.1:8080", lease_seconds=10.0)
    supervisor = Supervisor(db, CollectorRegistry(), lease_seconds=10.0, process=server)
    await supervisor.start([Idle()])  # type: ignore[list-item]
    try:
        deadline = time.monotonic() + 10
        while server.id not in (processes := await listed(harness.admin)) or gone.id in processes:
            assert time.monotonic() < deadline, processes
            await asyncio.sleep(0.05)
        assert gateway.id in processes
        held = processes[server.id]
        assert (held["kind"], held["state"], held["address"]) == ("server", "serving", "10.0.0.1:8080")
        (lease,) = held["leases"]  # type: ignore[misc]
        assert (lease["name"], lease["token"]) == ("reconcilers", 1)
        assert lease["acquired_at"] <= lease["renewed_at"] < lease["expires_at"]
    finally:
        await supervisor.stop()
    # A clean stop releases the lease: the server holds none.
    assert (await listed(harness.admin))[server.id]["leases"] == []
    await server.remove()
    async with db.read() as session:
        ids = set(await session.scalars(select(ProcessModel.id)))
    assert server.id not in ids


async def age(db: Database, process_id: str, by: timedelta) -> None:
    async with db.write() as session:
        row = await session.get(ProcessModel, process_id)
        assert row is not None
        row.heartbeat_at -= by
