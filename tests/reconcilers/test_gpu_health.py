"""The GPU health loop over a real database (SQLite and PostgreSQL) with a fake NVML: a GPU that reports a critical
XID is marked unhealthy with an event on its node, placement skips it, the worker on it is replaced on a healthy GPU
or waits saying why, and product and IDC availability count it out."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from dockyard.core.status import GpuHealth, WorkerStatus
from dockyard.db.models import EventModel, GpuModel, NodeModel
from dockyard.gpus.allocation import GpuAllocator, Unschedulable, load_inventory
from dockyard.gpus.health import NvmlHealth
from dockyard.gpus.inventory import discover_nvml
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.reconcilers.gpu_health import GpuHealthLoop
from dockyard.services.bootstrap import LOCAL_IDC, local_node_id, record_inventory
from tests.conftest import Harness
from tests.gpus.fake_nvml import FakeGpu, FakeNvml
from tests.gpus.test_health import A, B
from tests.reconcilers.test_endpoints import make_endpoint, make_ready, workers_of


async def nvml_node(harness: Harness, nvml: FakeNvml) -> None:
    """The local node's inventory as NVML discovers it, as the server records it at start."""
    inventory = discover_nvml(nvml)
    assert inventory is not None
    async with harness.context.db.write() as session:
        node = await session.get(NodeModel, local_node_id())
        assert node is not None
        await record_inventory(session, node, inventory)


async def health_of(harness: Harness) -> dict[str, tuple[GpuHealth, str]]:
    async with harness.context.db.read() as session:
        rows = await session.execute(select(GpuModel.uuid, GpuModel.health, GpuModel.health_reason))
        return {uuid: (health, reason) for uuid, health, reason in rows}


async def node_events(harness: Harness) -> list[tuple[str, str]]:
    async with harness.context.db.read() as session:
        rows = await session.scalars(
            select(EventModel).where(EventModel.object_kind == "node", EventModel.object_id == local_node_id())
        )
        return [(row.type, row.message) for row in rows]


async def available(client: httpx.AsyncClient, product: str) -> Any:
    listed = {p["id"]: p for p in (await client.get("/gpus/v2/products")).json()["data"]}
    return listed[product]["available"]


async def test_an_xid_takes_a_gpu_out_of_placement_and_availability(harness: Harness) -> None:
    nvml = FakeNvml(FakeGpu(A, minor=0), FakeGpu(B, minor=1))
    await nvml_node(harness, nvml)
    loop = GpuHealthLoop(harness.context, local_node_id(), NvmlHealth(nvml))
    try:
        await loop.reconcile_once()
        assert await health_of(harness) == {A: (GpuHealth.HEALTHY, ""), B: (GpuHealth.HEALTHY, "")}
        nvml.xid(A, 79)
        await loop.reconcile_once()
    finally:
        await loop.close()
    reason = "reported the critical XID error 79"
    assert await health_of(harness) == {A: (GpuHealth.UNHEALTHY, reason), B: (GpuHealth.HEALTHY, "")}
    assert await node_events(harness) == [("GpuUnhealthy", f"GPU {A} {reason}: nothing new is placed on it")]
    listed = (await harness.admin.get(f"/admin/v1/nodes/{local_node_id()}/events")).json()
    assert [(e["type"], e["message"]) for e in listed] == await node_events(harness)
    assert (await harness.admin.get("/admin/v1/nodes/nowhere/events")).status_code == 404
    [node] = (await harness.admin.get("/admin/v1/nodes")).json()
    assert [(g["uuid"], g["health"], g["health_reason"]) for g in node["gpus"]] == [
        (A, "unhealthy", reason),
        (B, "healthy", ""),
    ]

    async with harness.context.db.read() as session:
        allocator = GpuAllocator(await load_inventory(session))
    assert allocator.allocate("first", LOCAL_IDC, "H100", 1).uuids == [B]
    with pytest.raises(Unschedulable) as refused:
        allocator.allocate("second", LOCAL_IDC, "H100", 1)
    assert refused.value.held
    assert refused.value.reason.startswith("no free GPU: needs 1 \N{MULTIPLICATION SIGN} H100, all 2 on IDC local")
    assert f"(1 unhealthy: {A} {reason})" in refused.value.reason
    assert await available(harness.client, "serverless.h100") is True  # B is healthy
    assert await available(harness.client, "gpu.h100.8x") is False


async def test_a_gpu_that_answers_again_is_healthy_again(harness: Harness) -> None:
    gpu = FakeGpu(A, minor=0)
    nvml = FakeNvml(gpu)
    await nvml_node(harness, nvml)
    loop = GpuHealthLoop(harness.context, local_node_id(), NvmlHealth(nvml))
    try:
        gpu.lost = True
        await loop.reconcile_once()
        assert await health_of(harness) == {A: (GpuHealth.UNHEALTHY, "stopped answering NVML: GPU is lost")}
        assert await available(harness.client, "serverless.h100") is False
        [idc] = (await harness.client.get("/api/v1/idcs")).json()
        assert idc["status"] == "full"
        gpu.lost = False
        await loop.reconcile_once()
    finally:
        await loop.close()
    assert await health_of(harness) == {A: (GpuHealth.HEALTHY, "")}
    assert [kind for kind, _ in await node_events(harness)] == ["GpuUnhealthy", "GpuHealthy"]
    assert await available(harness.client, "serverless.h100") is True


async def test_the_worker_on_a_failed_gpu_is_replaced_on_a_healthy_one_or_waits(
    harness: Harness, endpoints: EndpointReconciler
) -> None:
    nvml = FakeNvml(FakeGpu(A, minor=0), FakeGpu(B, minor=1))
    await nvml_node(harness, nvml)
    loop = GpuHealthLoop(harness.context, local_node_id(), NvmlHealth(nvml))
    endpoint_id = await make_endpoint(harness.client, min_replicas=1, product_id="serverless.h100")
    await endpoints.reconcile_once()
    (first,) = await workers_of(harness, endpoint_id)
    assert first.gpu_uuids == [A]
    await make_ready(harness, endpoints, first)

    async def after(xid_on: str) -> list[Any]:
        await loop.reconcile_once()  # none yet: the GPU is fine until the driver says otherwise
        nvml.xid(xid_on, 48)  # a double-bit ECC error
        await loop.reconcile_once()
        for _ in range(3):
            await endpoints.reconcile_once()
        return await workers_of(harness, endpoint_id)

    try:
        workers = {w.id: w for w in await after(A)}
        failed = workers.pop(first.id)
        assert failed.status == WorkerStatus.FAILED
        assert failed.reason == f"its GPU {A} reported the critical XID error 48; a new worker replaces it"
        (second,) = workers.values()
        assert second.status == WorkerStatus.STARTING
        assert second.gpu_uuids == [B]
        await make_ready(harness, endpoints, second)

        workers = {w.id: w for w in await after(B) if w.id not in (first.id, second.id)}
    finally:
        await loop.close()
    (third,) = workers.values()
    assert third.status == WorkerStatus.PENDING
    assert third.gpu_uuids == []
    assert third.reason.startswith("waiting to be placed: no free GPU: needs 1 \N{MULTIPLICATION SIGN} H100")
    assert "unhealthy" in third.reason
