"""Helpers for the reconciler tests: containers made through the real API, rows read back from the real
database, a simulated GPU inventory on the local node, and the reconcilers over the in-memory runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from dockyard.db.models import ContainerModel, EventModel, NodeModel
from dockyard.gpus.inventory import simulated_inventory
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.services.bootstrap import LOCAL_IDC, local_node_id, record_inventory
from tests.conftest import Harness
from tests.fakes import FakeRuntime

BUSYBOX = "localhost/busybox:latest"
H100 = "NVIDIA H100 80GB HBM3"


async def make_template(client: httpx.AsyncClient, image: str = BUSYBOX, **fields: Any) -> str:
    body = {"name": "web", "path": image, "command": "httpd -f -p 8080 -h /tmp", "ports": [{"containerPort": 8080}]}
    body.update(fields)
    answer = await client.post("/api/v1/templates", json=body)
    assert answer.status_code == 200, answer.text
    template_id: str = answer.json()["id"]
    return template_id


async def make_containers(
    client: httpx.AsyncClient, template_id: str, *, product: str = "cpu.small", count: int = 1, **fields: Any
) -> list[str]:
    body = {"count": count, "idc": LOCAL_IDC, "product": product, "name": "box", "templateId": template_id}
    body.update(fields)
    answer = await client.post("/api/v1/containers", json=body)
    assert answer.status_code == 200, answer.text
    return [item["id"] for item in answer.json()]


async def row_of(harness: Harness, container_id: str) -> ContainerModel | None:
    async with harness.context.db.read() as session:
        return await session.get(ContainerModel, container_id)


async def must_row(harness: Harness, container_id: str) -> ContainerModel:
    row = await row_of(harness, container_id)
    assert row is not None, f"container {container_id} has no row"
    return row


async def event_types(harness: Harness, container_id: str) -> list[str]:
    async with harness.context.db.read() as session:
        rows = await session.scalars(
            select(EventModel).where(EventModel.object_id == container_id).order_by(EventModel.id)
        )
        return [row.type for row in rows]


async def simulate_gpus(harness: Harness, declaration: str, cuda: str = "12.4") -> list[str]:
    """Give the local node a simulated inventory; returns its GPU UUIDs in index order."""
    inventory = simulated_inventory(local_node_id(), declaration, "550.54.15", cuda)
    async with harness.context.db.write() as session:
        node = await session.get(NodeModel, local_node_id())
        assert node is not None
        await record_inventory(session, node, inventory)
    return [gpu.uuid for gpu in inventory.gpus]


@pytest.fixture
def runtime(harness: Harness) -> FakeRuntime:
    fake = harness.context.runtimes[LOCAL_IDC]
    assert isinstance(fake, FakeRuntime)
    return fake


@pytest.fixture
def reconciler(harness: Harness) -> ContainerReconciler:
    harness.context.settings.missing_debounce_seconds = 0.3
    harness.context.settings.zombie_grace_seconds = 0.3
    return ContainerReconciler(harness.context)


@pytest.fixture
async def endpoints(harness: Harness) -> AsyncIterator[EndpointReconciler]:
    """The endpoint reconciler with its scheduled probes far apart: the tests drive readiness themselves."""
    settings = harness.context.settings
    settings.worker_probe_interval = 600
    settings.health_check_interval = 600
    settings.zombie_grace_seconds = 0.3
    reconciler = EndpointReconciler(harness.context, harness.routes)
    yield reconciler
    await reconciler.close()
