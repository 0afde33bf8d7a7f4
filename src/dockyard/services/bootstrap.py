"""What a fresh install has, created once at start (idempotently, under the migration lock):
the installation id, the `local` IDC bound to the local container engine, its node with the GPU
inventory found on this host, and the default products: CPU-only ones, so that everything works on a
machine without GPUs, beside the GPU ones.
"""

from __future__ import annotations

import socket

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.config import Settings
from dockyard.core.status import GpuSource, ProductCategory, RuntimeKind
from dockyard.db.base import new_id, utcnow
from dockyard.db.models import GpuModel, IdcModel, NodeModel, ProductModel, SettingModel
from dockyard.db.session import Database
from dockyard.gpus.inventory import Inventory, discover_nvml, simulated_inventory

LOCAL_IDC = "local"

# (id, category, gpu_model, gpu_count, gpu_memory_mb, cpu, memory_mb, price_per_hour, product_line)
DEFAULT_PRODUCTS: list[tuple[str, ProductCategory, str, int, int, float, int, float, str]] = [
    ("cpu.small", ProductCategory.INSTANCE, "", 0, 0, 1.0, 1024, 0.02, "cpu"),
    ("cpu.large", ProductCategory.INSTANCE, "", 0, 0, 2.0, 4096, 0.08, "cpu"),
    ("gpu.h100.1x", ProductCategory.INSTANCE, "H100", 1, 81559, 16.0, 128 * 1024, 2.49, "h100"),
    ("gpu.h100.8x", ProductCategory.INSTANCE, "H100", 8, 81559, 128.0, 1024 * 1024, 19.92, "h100"),
    ("serverless.cpu", ProductCategory.SERVERLESS, "", 0, 0, 1.0, 1024, 0.02, "cpu"),
    ("serverless.h100", ProductCategory.SERVERLESS, "H100", 1, 81559, 16.0, 128 * 1024, 2.99, "h100"),
]


def local_node_id() -> str:
    return f"{LOCAL_IDC}-{socket.gethostname()}"


async def installation_id(session: AsyncSession) -> str:
    row = await session.get(SettingModel, "installation_id")
    if row is None:
        row = SettingModel(key="installation_id", value=new_id()[:8])
        session.add(row)
        await session.flush()
    return row.value


def discover_inventory(node_id: str, settings: Settings) -> Inventory:
    if settings.simulated_gpus:
        return simulated_inventory(
            node_id,
            settings.simulated_gpus,
            settings.simulated_driver_version,
            settings.simulated_cuda_version,
        )
    return discover_nvml() or Inventory(GpuSource.NONE)


async def record_inventory(session: AsyncSession, node: NodeModel, inventory: Inventory) -> None:
    """Replace the node's GPU rows with `inventory`; allocations live on containers, so none is lost."""
    node.gpu_source = inventory.source
    node.driver_version = inventory.driver_version
    node.cuda_version = inventory.cuda_version
    node.seen_at = utcnow()
    await session.execute(delete(GpuModel).where(GpuModel.node_id == node.id))
    for gpu in inventory.gpus:
        session.add(
            GpuModel(
                uuid=gpu.uuid,
                node_id=node.id,
                index=gpu.index,
                model=gpu.model,
                memory_mb=gpu.memory_mb,
                minor_number=gpu.minor_number,
                simulated=gpu.simulated,
            )
        )


async def bootstrap(db: Database, settings: Settings) -> str:
    """Create the defaults that are missing and refresh the local node's inventory; returns the
    installation id."""
    async with db.write() as session:
        install_id = await installation_id(session)
        idc = await session.get(IdcModel, LOCAL_IDC)
        if idc is None:
            session.add(
                IdcModel(
                    id=LOCAL_IDC,
                    name="Local container engine",
                    country="",
                    runtime_kind=RuntimeKind.ENGINE,
                    runtime_url=settings.engine_url,
                )
            )
            await session.flush()
        existing = set(await session.scalars(select(ProductModel.id)))
        for pid, category, gpu_model, gpus, gpu_mem, cpu, mem, price, line in DEFAULT_PRODUCTS:
            if pid not in existing:
                session.add(
                    ProductModel(
                        id=pid,
                        idc_id=LOCAL_IDC,
                        category=category,
                        gpu_model=gpu_model,
                        gpu_count=gpus,
                        gpu_memory_mb=gpu_mem,
                        cpu=cpu,
                        memory_mb=mem,
                        price_per_hour=price,
                        product_line=line,
                    )
                )
        node_id = local_node_id()
        node = await session.get(NodeModel, node_id)
        if node is None:
            node = NodeModel(id=node_id, idc_id=LOCAL_IDC)
            session.add(node)
            await session.flush()
        inventory = discover_inventory(node_id, settings)
        # A simulated inventory declared through the operator's API outlives restarts: finding no GPU here is
        # what made it necessary. NVML or DOCKYARD_SIMULATED_GPUS replace it; count 0 through the API clears it.
        if not (inventory.source == GpuSource.NONE and node.gpu_source == GpuSource.SIMULATED):
            await record_inventory(session, node, inventory)
    return install_id
