"""The products a user may create containers as, in words and numbers (GMI's product list)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.db.models import GpuModel, IdcModel, ProductModel
from dockyard.errors import InvalidField
from dockyard.gpus.allocation import model_matches
from dockyard.schemas.products import ProductInfo
from dockyard.services.idcs import gpus_by_idc


def matching_gpus(product: ProductModel, gpus: Iterable[GpuModel]) -> list[GpuModel]:
    """The GPUs a product can use: its `gpu_model` is a case-insensitive substring of the GPU's model name
    ("H100" matches "NVIDIA H100 80GB HBM3")."""
    return [gpu for gpu in gpus if model_matches(product.gpu_model, gpu.model)]


def _number(value: float) -> str:
    return f"{value:g}"


def _memory(memory_mb: int) -> str:
    if memory_mb >= 1024 and memory_mb % 1024 == 0:
        return f"{memory_mb // 1024} GiB"
    if memory_mb >= 1024:
        return f"{_number(round(memory_mb / 1024, 1))} GiB"
    return f"{memory_mb} MiB"


def describe(product: ProductModel, simulated: bool) -> str:
    """The product in words: GPUs (count, model, memory), vCPUs and RAM; GPUs marked simulated when they are."""
    parts = []
    if product.gpu_count > 0:
        gpu = f"{product.gpu_count} \N{MULTIPLICATION SIGN} {product.gpu_model}"
        if product.gpu_memory_mb > 0:
            gpu += f" {round(product.gpu_memory_mb / 1024)}GB"
        if simulated:
            gpu += " (simulated)"
        parts.append(gpu)
    parts.append(f"{_number(product.cpu)} vCPU")
    parts.append(f"{_memory(product.memory_mb)} RAM")
    return ", ".join(parts)


async def list_products(session: AsyncSession, idc_id: str | None) -> list[ProductInfo]:
    query = select(ProductModel).order_by(ProductModel.idc_id, ProductModel.id)
    if idc_id is not None:
        if await session.get(IdcModel, idc_id) is None:
            raise InvalidField("idc", f"no IDC {idc_id}; GET /api/v1/idcs lists them")
        query = query.where(ProductModel.idc_id == idc_id)
    gpus = await gpus_by_idc(session, idc_id)
    result = []
    for row in await session.scalars(query):
        usable = matching_gpus(row, gpus.get(row.idc_id, []))
        per_node = Counter(gpu.node_id for gpu in usable)
        # `valid` answers "can I order this here now": a GPU product on an IDC without enough of its GPUs on
        # one node would be refused at creation, so it is not offered as valid.
        placeable = row.gpu_count == 0 or max(per_node.values(), default=0) >= row.gpu_count
        result.append(
            ProductInfo(
                name=row.id,
                idc=row.idc_id,
                type=row.category,
                price=row.price_per_hour,
                valid=row.valid and placeable,
                spec=describe(row, any(gpu.simulated for gpu in usable)),
                gpu_model=row.gpu_model,
                product_line=row.product_line,
            )
        )
    return result
