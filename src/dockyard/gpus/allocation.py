"""Placement: the node a container or an endpoint worker runs on, the GPUs (by UUID) it gets there, and the
share of the node's CPUs and memory it holds.

Nothing about allocations is kept in memory between passes. Each reconcile pass rebuilds who holds what
from two durable sources: the `gpu_uuids` of every container and worker row that still exists, and the
`dockyard.gpus` label of every runtime object this installation manages (a zombie holds its GPUs until it
is removed). After a crash the next pass therefore sees exactly the allocations that were in force.

Within one pass, `GpuAllocator.allocate` marks what it hands out before it returns, and it never awaits,
so rows reconciled concurrently in the same pass can never be given the same GPU. Containers and workers
draw from one pool but are reconciled by two loops, so each choice is made under the server's GPU lock
after `load_holdings` has refreshed the allocator with what the other loop recorded meanwhile.

CPU and memory are counted the same way: a node offers its host's CPUs and memory (`NodeInventory.cpus`,
`memory_mb`: what its engine reports or the operator declares, times the overcommit ratios), and every container
or worker row that names the node holds its product's CPU and memory there (`load_placements`), from the moment
its placement is recorded, before anything is created, until its row is deleted or its placement cleared (a
failed worker holds none: its container is stopped). A request that fits on no node raises `Unschedulable` with the
reason, as one for GPUs does, saying whether others hold the room (`held`: it fits once they let go, so the holder
waits) or no node could take it even empty. A node whose capacity is not known (0) limits nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.status import GpuHealth, WorkerStatus
from dockyard.db.models import ContainerModel, EndpointModel, GpuModel, NodeModel, ProductModel, WorkerModel
from dockyard.db.session import Database
from dockyard.gpus.inventory import GpuInfo


class Unschedulable(Exception):
    """No node can take the request right now (its GPUs, CPU or memory). `shortage` says what is missing, `reason`
    adds what a user can do. `held`: others hold what is missing, so it fits once they release it; otherwise no
    node could take it even empty (no such GPU, a CUDA too old, more than a node has), and only a change of
    request or of the nodes helps."""

    def __init__(self, shortage: str, remedy: str, *, held: bool) -> None:
        super().__init__(f"{shortage}; {remedy}")
        self.shortage = shortage
        self.reason = f"{shortage}; {remedy}"
        self.held = held


@dataclass(frozen=True)
class NodeInventory:
    node_id: str
    idc_id: str
    cuda_version: str
    gpus: tuple[GpuInfo, ...]
    cpus: float = 0.0  # the vCPUs placement may hand out (the host's times the overcommit); 0: not known
    memory_mb: int = 0  # likewise, memory


@dataclass(frozen=True)
class Placement:
    """The node a holder runs on and the CPU and memory it holds there."""

    node_id: str
    cpu: float
    memory_mb: int


@dataclass(frozen=True)
class Allocation:
    node_id: str
    gpus: tuple[GpuInfo, ...]

    @property
    def uuids(self) -> list[str]:
        return [gpu.uuid for gpu in self.gpus]


def version_tuple(version: str) -> tuple[int, ...]:
    """`"12.10"` -> (12, 10): versions compare numerically, so 12.10 is newer than 12.4."""
    parts = []
    for piece in version.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def cuda_satisfies(node_cuda: str, minimum: str | None) -> bool:
    if not minimum:
        return True
    if not node_cuda:
        return False
    return version_tuple(node_cuda) >= version_tuple(minimum)


def model_matches(wanted: str, model: str) -> bool:
    """A product's `gpu_model` ("H100") matches a GPU whose model name contains it, in any case."""
    wanted = wanted.strip().lower()
    return bool(wanted) and wanted in model.lower()


async def load_inventory(
    session: AsyncSession, cpu_overcommit: float = 1.0, memory_overcommit: float = 1.0
) -> list[NodeInventory]:
    """Every node with its GPUs, ordered by index, and the CPU and memory it offers at the overcommit ratios."""
    nodes = list(await session.scalars(select(NodeModel).order_by(NodeModel.id)))
    by_node: dict[str, list[GpuInfo]] = defaultdict(list)
    for gpu in await session.scalars(select(GpuModel).order_by(GpuModel.node_id, GpuModel.index)):
        healthy = gpu.health == GpuHealth.HEALTHY
        by_node[gpu.node_id].append(
            GpuInfo(
                gpu.uuid,
                gpu.index,
                gpu.model,
                gpu.memory_mb,
                gpu.minor_number,
                gpu.simulated,
                healthy=healthy,
                health_reason=gpu.health_reason,
            )
        )
    return [
        NodeInventory(
            n.id,
            n.idc_id,
            n.cuda_version,
            tuple(by_node[n.id]),
            n.cpus * cpu_overcommit,
            int(n.memory_mb * memory_overcommit),
        )
        for n in nodes
    ]


async def load_holdings(session: AsyncSession) -> dict[str, list[str]]:
    """Holder id -> the GPU UUIDs recorded on its row, for every container and every endpoint worker that
    holds any: the pool's allocations as the database has them now."""
    holdings: dict[str, list[str]] = {}
    for model in (ContainerModel, WorkerModel):
        for holder, uuids in await session.execute(select(model.id, model.gpu_uuids)):
            if uuids:
                holdings[holder] = list(uuids)
    return holdings


async def load_placements(session: AsyncSession) -> dict[str, Placement]:
    """Holder id -> its node and the CPU and memory it holds there (its product's), for every container and every
    live endpoint worker whose row names a node: the nodes' CPU and memory in use as the database has them now."""
    placements: dict[str, Placement] = {}
    containers = (
        select(ContainerModel.id, ContainerModel.node_id, ProductModel.cpu, ProductModel.memory_mb)
        .join(ProductModel, ProductModel.id == ContainerModel.product_id)
        .where(ContainerModel.node_id != "")
    )
    workers = (
        select(WorkerModel.id, WorkerModel.node_id, ProductModel.cpu, ProductModel.memory_mb)
        .join(EndpointModel, EndpointModel.id == WorkerModel.endpoint_id)
        .join(ProductModel, ProductModel.id == EndpointModel.product_id)
        .where(WorkerModel.node_id != "", WorkerModel.status.not_in((WorkerStatus.FAILED, WorkerStatus.EXITED)))
    )
    for statement in (containers, workers):
        for holder, node_id, cpu, memory_mb in await session.execute(statement):
            placements[holder] = Placement(node_id, cpu, memory_mb)
    return placements


async def allocate_and_record(
    lock: asyncio.Lock,
    db: Database,
    allocator: GpuAllocator,
    holder: str,
    idc_id: str,
    gpu_model: str,
    count: int,
    min_cuda_version: str | None,
    record: Callable[[Allocation], Awaitable[bool]],
    *,
    cpu: float = 0.0,
    memory_mb: int = 0,
) -> Allocation | Unschedulable | None:
    """Choose a node for `holder` with `count` GPUs, `cpu` and `memory_mb` free, and write the choice with `record`
    (a guarded write of the holder's row) under `lock`, the one lock of every loop that places, after refreshing
    `allocator` from every row's holdings. The allocation once recorded; the `Unschedulable` (with its reason)
    when nothing fits; None when the record lost its guarded write (the row changed meanwhile; the next pass
    tries again)."""
    async with lock:
        async with db.read() as session:
            if count:
                allocator.hold_all(await load_holdings(session))
            allocator.place_all(await load_placements(session))
        try:
            allocation = allocator.allocate(holder, idc_id, gpu_model, count, min_cuda_version, cpu, memory_mb)
        except Unschedulable as exc:
            return exc
        return allocation if await record(allocation) else None


def describe(allocation: Allocation) -> str:
    """How an event names an allocation."""
    if not allocation.gpus:
        return f"node {allocation.node_id}"
    return f"GPUs {', '.join(allocation.uuids)} on node {allocation.node_id}"


class GpuAllocator:
    """One pass's view of every GPU and its holders (container ids). Holders are added, never guessed."""

    def __init__(self, nodes: Iterable[NodeInventory]) -> None:
        self.nodes = list(nodes)
        self._holders: dict[str, set[str]] = defaultdict(set)
        self._by_uuid = {gpu.uuid: gpu for node in self.nodes for gpu in node.gpus}
        self._placements: dict[str, Placement] = {}

    def place_all(self, placements: dict[str, Placement]) -> None:
        """Take `placements` (from `load_placements`) as every holder's CPU and memory: replaces what was known."""
        self._placements = dict(placements)

    def free(self, node: NodeInventory, holder: str) -> tuple[float, float]:
        """The vCPUs and MB of memory of `node` that no holder but `holder` holds (infinite when not known)."""
        used_cpu = used_memory = 0.0
        for other, placement in self._placements.items():
            if other != holder and placement.node_id == node.node_id:
                used_cpu += placement.cpu
                used_memory += placement.memory_mb
        cpu = node.cpus - used_cpu if node.cpus else math.inf
        memory = node.memory_mb - used_memory if node.memory_mb else math.inf
        return cpu, memory

    def _fits(self, node: NodeInventory, holder: str, cpu: float, memory_mb: int) -> bool:
        free_cpu, free_memory = self.free(node, holder)
        # A rounding error of float sums never makes the last vCPU unusable.
        return cpu <= free_cpu + 1e-9 and memory_mb <= free_memory

    def hold(self, holder: str, uuids: Iterable[str]) -> None:
        """Record that `holder` has `uuids` (from a row's `gpu_uuids` or an object's label)."""
        for uuid in uuids:
            self._holders[uuid].add(holder)

    def hold_all(self, holdings: dict[str, list[str]]) -> None:
        """`hold` each of `holdings` (from `load_holdings`): adds to what is held, never frees."""
        for holder, uuids in holdings.items():
            self.hold(holder, uuids)

    def release(self, holder: str) -> None:
        """Forget `holder`'s GPUs, CPU and memory (its row and objects are gone), so later allocations in the pass
        may use them."""
        for holders in self._holders.values():
            holders.discard(holder)
        self._placements.pop(holder, None)

    def gpu(self, uuid: str) -> GpuInfo | None:
        return self._by_uuid.get(uuid)

    @property
    def total(self) -> int:
        return len(self._by_uuid)

    @property
    def allocated(self) -> int:
        return sum(1 for uuid in self._by_uuid if self._holders.get(uuid))

    def _free_for(self, holder: str, gpu: GpuInfo) -> bool:
        """Whether `gpu` may go to `holder`: healthy, and held by no one else."""
        return gpu.healthy and not (self._holders.get(gpu.uuid, set()) - {holder})

    def allocate(
        self,
        holder: str,
        idc_id: str,
        gpu_model: str,
        count: int,
        min_cuda_version: str | None = None,
        cpu: float = 0.0,
        memory_mb: int = 0,
    ) -> Allocation:
        """A node of `idc_id` with `cpu` vCPUs and `memory_mb` free and, when `count` > 0, `count` free GPUs of
        `gpu_model` whose CUDA is at least `min_cuda_version`: all now held by `holder`. Picks the node with the
        fewest free GPUs (else the least free CPU) that still fits: packing keeps whole nodes free for large
        requests. An IDC with no node known places on none (""), counting nothing. Raises `Unschedulable`."""
        in_idc = [node for node in self.nodes if node.idc_id == idc_id]
        if count == 0:
            return self._place_cpu(holder, idc_id, in_idc, cpu, memory_mb)
        matching = [(node, [g for g in node.gpus if model_matches(gpu_model, g.model)]) for node in in_idc]
        matching = [(node, gpus) for node, gpus in matching if gpus]
        if not matching:
            raise Unschedulable(
                f"no {gpu_model} GPU exists on IDC {idc_id}", "choose a product this IDC offers", held=False
            )
        capable = [(node, gpus) for node, gpus in matching if cuda_satisfies(node.cuda_version, min_cuda_version)]
        if not capable:
            newest = max((node.cuda_version for node, _ in matching), key=version_tuple, default="")
            raise Unschedulable(
                f"no node of IDC {idc_id} has CUDA {min_cuda_version} or newer (the newest has {newest or 'none'})",
                "lower minCudaVersion or update the node's driver",
                held=False,
            )
        # Nodes that could take the request once others release what they hold.
        roomy = [node for node, gpus in capable if len(gpus) >= count and _could_hold(node, cpu, memory_mb)]
        best: tuple[NodeInventory, list[GpuInfo]] | None = None
        gpus_fit: list[NodeInventory] = []
        for node, gpus in capable:
            free = [gpu for gpu in gpus if self._free_for(holder, gpu)]
            if len(free) < count:
                continue
            gpus_fit.append(node)
            if self._fits(node, holder, cpu, memory_mb) and (best is None or len(free) < len(best[1])):
                best = (node, free)
        if best is None and not roomy:
            most = max(len(gpus) for _, gpus in capable)
            if most < count:
                raise Unschedulable(
                    f"no node of IDC {idc_id} has {count} {gpu_model} GPUs (the most on one: {most})",
                    "choose a product with fewer GPUs",
                    held=False,
                )
            enough = [node for node, gpus in capable if len(gpus) >= count]
            raise _too_large(idc_id, enough, cpu, memory_mb, f" with {count} {gpu_model} GPU{'s' if count > 1 else ''}")
        if best is None and gpus_fit:
            also = f"{count} free GPU{'s' if count > 1 else ''}, "
            raise self._no_room(idc_id, gpus_fit, holder, cpu, memory_mb, also)
        if best is None:
            total = sum(len(gpus) for _, gpus in capable)
            free_now = max(sum(1 for g in gpus if self._free_for(holder, g)) for _, gpus in capable)
            unhealthy = [g for _, gpus in capable for g in gpus if not g.healthy]
            taken = " or unhealthy" if unhealthy else ""
            if free_now == 0:
                detail = f"all {total} on IDC {idc_id} are in use{taken}"
            else:
                detail = f"at most {free_now} of {total} on IDC {idc_id} are free on one node"
            if unhealthy:
                detail += f" ({len(unhealthy)} unhealthy: {unhealthy[0].uuid} {unhealthy[0].health_reason})"
            raise Unschedulable(
                f"no free GPU: needs {count} \N{MULTIPLICATION SIGN} {gpu_model}, {detail}",
                "delete a container or try again later",
                held=True,
            )
        node, free = best
        chosen = tuple(free[:count])
        self.hold(holder, (gpu.uuid for gpu in chosen))
        self._placements[holder] = Placement(node.node_id, cpu, memory_mb)
        return Allocation(node.node_id, chosen)

    def _place_cpu(
        self, holder: str, idc_id: str, nodes: list[NodeInventory], cpu: float, memory_mb: int
    ) -> Allocation:
        if not nodes:
            return Allocation("", ())
        fitting = [node for node in nodes if self._fits(node, holder, cpu, memory_mb)]
        if not fitting and not any(_could_hold(node, cpu, memory_mb) for node in nodes):
            raise _too_large(idc_id, nodes, cpu, memory_mb)
        if not fitting:
            raise self._no_room(idc_id, nodes, holder, cpu, memory_mb)
        node = min(fitting, key=lambda n: self.free(n, holder))
        self._placements[holder] = Placement(node.node_id, cpu, memory_mb)
        return Allocation(node.node_id, ())

    def _no_room(
        self, idc_id: str, nodes: list[NodeInventory], holder: str, cpu: float, memory_mb: int, also: str = ""
    ) -> Unschedulable:
        """Why none of `nodes` can take `cpu` and `memory_mb` (and what else `also` names) now, though one could
        once others release theirs: the most any one has free."""
        node = max(nodes, key=lambda n: self.free(n, holder))
        free_cpu, free_memory = self.free(node, holder)

        def amount(free: float, total: float, unit: str) -> str:
            return "any" if math.isinf(free) else f"{max(free, 0):g} of {total:g}{unit}"

        return Unschedulable(
            f"no node of IDC {idc_id} has {also}{cpu:g} vCPUs and {memory_mb} MB free (the most free on one: "
            f"{amount(free_cpu, node.cpus, ' vCPUs')} and {amount(free_memory, node.memory_mb, ' MB')})",
            "stop or delete a container, or try again later",
            held=True,
        )


def _too_large(idc_id: str, nodes: list[NodeInventory], cpu: float, memory_mb: int, kind: str = "") -> Unschedulable:
    """Why none of `nodes` (those of `kind`) could take `cpu` and `memory_mb` even with nothing else on it."""
    node = max(nodes, key=lambda n: (n.cpus, n.memory_mb))
    return Unschedulable(
        f"no node of IDC {idc_id}{kind} has {cpu:g} vCPUs and {memory_mb} MB in all (the largest: "
        f"{node.cpus:g} vCPUs and {node.memory_mb} MB)",
        "choose a smaller product",
        held=False,
    )


def _could_hold(node: NodeInventory, cpu: float, memory_mb: int) -> bool:
    """Whether `node` has `cpu` and `memory_mb` in all (a size not known holds anything)."""
    return (not node.cpus or cpu <= node.cpus + 1e-9) and (not node.memory_mb or memory_mb <= node.memory_mb)
