"""The operator's view of nodes and their GPUs, and the simulated inventory an operator may declare.

A GPU is allocated to the container or endpoint worker whose row names it in `gpu_uuids`. A holder keeps its
GPUs until its teardown is over (the reconciler drops the row, or empties the list, once the runtime object
is gone), so one being deleted still holds them: handing them out earlier would let two share one.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.status import GpuSource
from dockyard.db.models import GpuModel, NodeModel
from dockyard.errors import Conflict, NotFound
from dockyard.gpus.allocation import load_holdings
from dockyard.gpus.inventory import Inventory, simulated_inventory
from dockyard.schemas.admin import Node, NodeEvent, NodeGpu, SimulatedGpusRequest
from dockyard.services import events
from dockyard.services.bootstrap import record_inventory

# How a node's events are filed (`object_kind`); they belong to no organization.
NODE_EVENTS = "node"


async def gpu_holders(session: AsyncSession) -> dict[str, str]:
    """GPU UUID -> id of the container or worker holding it (UUIDs are unique across nodes, simulated ones
    too)."""
    return {uuid: holder for holder, uuids in (await load_holdings(session)).items() for uuid in uuids}


def _node_wire(node: NodeModel, gpus: list[GpuModel], holders: dict[str, str]) -> Node:
    return Node(
        id=node.id,
        idc_id=node.idc_id,
        gpu_source=node.gpu_source,
        simulated=node.gpu_source == GpuSource.SIMULATED,
        driver_version=node.driver_version,
        cuda_version=node.cuda_version,
        cpus=node.cpus,
        memory_mb=node.memory_mb,
        gpus=[
            NodeGpu(
                uuid=gpu.uuid,
                index=gpu.index,
                model=gpu.model,
                memory_mb=gpu.memory_mb,
                simulated=gpu.simulated,
                allocated_to=holders.get(gpu.uuid),
                health=gpu.health,
                health_reason=gpu.health_reason,
            )
            for gpu in gpus
        ],
        seen_at=node.seen_at,
    )


async def list_nodes(session: AsyncSession) -> list[Node]:
    nodes = list(await session.scalars(select(NodeModel).order_by(NodeModel.idc_id, NodeModel.id)))
    gpus: dict[str, list[GpuModel]] = {node.id: [] for node in nodes}
    for gpu in await session.scalars(select(GpuModel).order_by(GpuModel.node_id, GpuModel.index)):
        gpus.setdefault(gpu.node_id, []).append(gpu)
    holders = await gpu_holders(session)
    return [_node_wire(node, gpus[node.id], holders) for node in nodes]


async def node_events(session: AsyncSession, node_id: str, limit: int) -> list[NodeEvent]:
    """The node's latest `limit` events (its GPUs' health, recorded by reconcilers/gpu_health.py), oldest first."""
    if await session.get(NodeModel, node_id) is None:
        raise NotFound(f"node {node_id} not found; GET /admin/v1/nodes lists them")
    rows = await events.list_events(session, "", NODE_EVENTS, node_id, limit)
    return [NodeEvent(type=row.type, message=row.message, created_at=row.created_at) for row in rows]


async def set_simulated_gpus(session: AsyncSession, node_id: str, request: SimulatedGpusRequest) -> Node:
    """Declare (count > 0) or clear (count 0) a simulated inventory on a node without real GPUs.

    UUIDs depend only on the node and the slot, so re-declaring keeps the GPUs that stay; a declaration that
    would drop a GPU a container holds is refused, naming those GPUs.
    """
    node = await session.get(NodeModel, node_id)
    if node is None:
        raise NotFound(f"node {node_id} not found; GET /admin/v1/nodes lists them")
    if node.gpu_source == GpuSource.NVML:
        raise Conflict(
            f"node {node_id} has real GPUs discovered through NVML; simulated GPUs are only for nodes without any"
        )
    if request.count:
        inventory = simulated_inventory(
            node_id,
            f"{request.model}:{request.count}:{request.memory_mb}",
            request.driver_version,
            request.cuda_version,
        )
    else:
        inventory = Inventory(GpuSource.NONE)
    kept = {gpu.uuid for gpu in inventory.gpus}
    holders = await gpu_holders(session)
    current = await session.scalars(select(GpuModel.uuid).where(GpuModel.node_id == node_id))
    dropped_held = sorted(uuid for uuid in current if uuid not in kept and uuid in holders)
    if dropped_held:
        raise Conflict(
            f"GPUs {', '.join(dropped_held)} are allocated to containers or endpoint workers; delete those first "
            "or declare at least as many GPUs",
            details=[{"field": "count", "message": f"{uuid} is held by {holders[uuid]}"} for uuid in dropped_held],
        )
    await record_inventory(session, node, inventory)
    await session.commit()
    gpus = list(await session.scalars(select(GpuModel).where(GpuModel.node_id == node_id).order_by(GpuModel.index)))
    return _node_wire(node, gpus, holders)
