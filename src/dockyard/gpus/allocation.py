"""GPU allocation: which GPUs, by UUID, a container or an endpoint worker gets, and on which node.

Nothing about allocations is kept in memory between passes. Each reconcile pass rebuilds who holds what
from two durable sources: the `gpu_uuids` of every container and worker row that still exists, and the
`dockyard.gpus` label of every runtime object this installation manages (a zombie holds its GPUs until it
is removed). After a crash the next pass therefore sees exactly the allocations that were in force.

Within one pass, `GpuAllocator.allocate` marks what it hands out before it returns, and it never awaits,
so rows reconciled concurrently in the same pass can never be given the same GPU. Containers and workers
draw from one pool but are reconciled by two loops, so each choice is made under the server's GPU lock
after `load_holdings` has refreshed the allocator with what the other loop recorded meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.db.models import ContainerModel, GpuModel, NodeModel, WorkerModel
from dockyard.db.session import Database
from dockyard.gpus.inventory import GpuInfo


class NoFreeGpu(Exception):
    """No node can take the request right now; `reason` says why in a sentence a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class NodeInventory:
    node_id: str
    idc_id: str
    cuda_version: str
    gpus: tuple[GpuInfo, ...]


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


async def load_inventory(session: AsyncSession) -> list[NodeInventory]:
    """Every node and its GPUs, ordered by index."""
    nodes = list(await session.scalars(select(NodeModel).order_by(NodeModel.id)))
    by_node: dict[str, list[GpuInfo]] = defaultdict(list)
    for gpu in await session.scalars(select(GpuModel).order_by(GpuModel.node_id, GpuModel.index)):
        by_node[gpu.node_id].append(
            GpuInfo(gpu.uuid, gpu.index, gpu.model, gpu.memory_mb, gpu.minor_number, gpu.simulated)
        )
    return [NodeInventory(n.id, n.idc_id, n.cuda_version, tuple(by_node[n.id])) for n in nodes]


async def load_holdings(session: AsyncSession) -> dict[str, list[str]]:
    """Holder id -> the GPU UUIDs recorded on its row, for every container and every endpoint worker that
    holds any: the pool's allocations as the database has them now."""
    holdings: dict[str, list[str]] = {}
    for model in (ContainerModel, WorkerModel):
        for holder, uuids in await session.execute(select(model.id, model.gpu_uuids)):
            if uuids:
                holdings[holder] = list(uuids)
    return holdings


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
) -> Allocation | NoFreeGpu | None:
    """Choose `count` GPUs for `holder` and write the choice with `record` (a guarded write of the holder's row)
    under `lock`, the one lock of every loop that hands out GPUs, after refreshing `allocator` from every row's
    holdings. The allocation once recorded; the `NoFreeGpu` (with its reason) when nothing fits; None when the
    record lost its guarded write (the row changed meanwhile; the next pass tries again)."""
    async with lock:
        async with db.read() as session:
            allocator.hold_all(await load_holdings(session))
        try:
            allocation = allocator.allocate(holder, idc_id, gpu_model, count, min_cuda_version)
        except NoFreeGpu as exc:
            return exc
        return allocation if await record(allocation) else None


def describe(allocation: Allocation) -> str:
    """How an event names an allocation."""
    return f"GPUs {', '.join(allocation.uuids)} on node {allocation.node_id}"


class GpuAllocator:
    """One pass's view of every GPU and its holders (container ids). Holders are added, never guessed."""

    def __init__(self, nodes: Iterable[NodeInventory]) -> None:
        self.nodes = list(nodes)
        self._holders: dict[str, set[str]] = defaultdict(set)
        self._by_uuid = {gpu.uuid: gpu for node in self.nodes for gpu in node.gpus}

    def hold(self, holder: str, uuids: Iterable[str]) -> None:
        """Record that `holder` has `uuids` (from a row's `gpu_uuids` or an object's label)."""
        for uuid in uuids:
            self._holders[uuid].add(holder)

    def hold_all(self, holdings: dict[str, list[str]]) -> None:
        """`hold` each of `holdings` (from `load_holdings`): adds to what is held, never frees."""
        for holder, uuids in holdings.items():
            self.hold(holder, uuids)

    def release(self, holder: str) -> None:
        """Forget `holder`'s GPUs (its row and objects are gone), so later allocations in the pass may use them."""
        for holders in self._holders.values():
            holders.discard(holder)

    def gpu(self, uuid: str) -> GpuInfo | None:
        return self._by_uuid.get(uuid)

    @property
    def total(self) -> int:
        return len(self._by_uuid)

    @property
    def allocated(self) -> int:
        return sum(1 for uuid in self._by_uuid if self._holders.get(uuid))

    def _free_for(self, holder: str, gpu: GpuInfo) -> bool:
        return not (self._holders.get(gpu.uuid, set()) - {holder})

    def allocate(
        self, holder: str, idc_id: str, gpu_model: str, count: int, min_cuda_version: str | None = None
    ) -> Allocation:
        """`count` free GPUs of `gpu_model` on one node of `idc_id` whose CUDA is at least `min_cuda_version`,
        now held by `holder`. Picks the node with the fewest free GPUs that still fit (packing keeps whole
        nodes free for large requests). Raises `NoFreeGpu` with the reason."""
        in_idc = [node for node in self.nodes if node.idc_id == idc_id]
        matching = [(node, [g for g in node.gpus if model_matches(gpu_model, g.model)]) for node in in_idc]
        matching = [(node, gpus) for node, gpus in matching if gpus]
        if not matching:
            raise NoFreeGpu(f"no {gpu_model} GPU exists on IDC {idc_id}; choose a product this IDC offers")
        capable = [(node, gpus) for node, gpus in matching if cuda_satisfies(node.cuda_version, min_cuda_version)]
        if not capable:
            newest = max((node.cuda_version for node, _ in matching), key=version_tuple, default="")
            raise NoFreeGpu(
                f"no node of IDC {idc_id} has CUDA {min_cuda_version} or newer (the newest has {newest or 'none'}); "
                "lower minCudaVersion or update the node's driver"
            )
        best: tuple[NodeInventory, list[GpuInfo]] | None = None
        for node, gpus in capable:
            free = [gpu for gpu in gpus if self._free_for(holder, gpu)]
            if len(free) >= count and (best is None or len(free) < len(best[1])):
                best = (node, free)
        if best is None:
            total = sum(len(gpus) for _, gpus in capable)
            free_now = max(sum(1 for g in gpus if self._free_for(holder, g)) for _, gpus in capable)
            if free_now == 0:
                detail = f"all {total} on IDC {idc_id} are in use"
            else:
                detail = f"at most {free_now} of {total} on IDC {idc_id} are free on one node"
            raise NoFreeGpu(
                f"no free GPU: needs {count} \N{MULTIPLICATION SIGN} {gpu_model}, {detail}; "
                "delete a container or try again later"
            )
        node, free = best
        chosen = tuple(free[:count])
        self.hold(holder, (gpu.uuid for gpu in chosen))
        return Allocation(node.node_id, chosen)
