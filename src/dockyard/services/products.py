"""The products a user may create containers and endpoint workers as, in words and numbers: GMI's product list
and PPIO's, judged alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.status import ProductCategory
from dockyard.db.models import GpuModel, IdcModel, ProductModel
from dockyard.errors import InvalidField
from dockyard.gpus.allocation import model_matches
from dockyard.schemas.products import PpioProduct, ProductInfo
from dockyard.services.idcs import gpus_by_idc, healthy


def matching_gpus(product: ProductModel, gpus: Iterable[GpuModel]) -> list[GpuModel]:
    """The GPUs a product can use: healthy ones (services/idcs.py `healthy`) whose model name holds its `gpu_model`,
    in any case ("H100" matches "NVIDIA H100 80GB HBM3")."""
    return [gpu for gpu in healthy(gpus) if model_matches(product.gpu_model, gpu.model)]


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


@dataclass(frozen=True)
class Offer:
    """A product as offered in its IDC now: whether it can be ordered, and its spec in words."""

    product: ProductModel
    orderable: bool
    spec: str


async def _offers(session: AsyncSession, query: Select[ProductModel], idc_id: str | None) -> list[Offer]:
    """The products `query` selects, each judged against its IDC's GPUs (only `idc_id`'s are read when given)."""
    gpus = await gpus_by_idc(session, idc_id)
    result = []
    for row in await session.scalars(query):
        usable = matching_gpus(row, gpus.get(row.idc_id, []))
        per_node = Counter(gpu.node_id for gpu in usable)
        # "Can I order this here now": a GPU product on an IDC without enough of its GPUs on one node would be
        # refused at creation, so it is not offered as orderable.
        placeable = row.gpu_count == 0 or max(per_node.values(), default=0) >= row.gpu_count
        result.append(Offer(row, row.valid and placeable, describe(row, any(gpu.simulated for gpu in usable))))
    return result


async def offer(session: AsyncSession, product_id: str) -> Offer | None:
    """The one product as offered in its IDC now, judged as the product lists judge it; None when unknown."""
    offers = await _offers(session, select(ProductModel).where(ProductModel.id == product_id), None)
    return offers[0] if offers else None


async def list_products(session: AsyncSession, idc_id: str | None) -> list[ProductInfo]:
    query = select(ProductModel).order_by(ProductModel.idc_id, ProductModel.id)
    if idc_id is not None:
        if await session.get(IdcModel, idc_id) is None:
            raise InvalidField("idc", f"no IDC {idc_id}; GET /api/v1/idcs lists them")
        query = query.where(ProductModel.idc_id == idc_id)
    return [
        ProductInfo(
            name=offer.product.id,
            idc=offer.product.idc_id,
            type=offer.product.category,
            price=offer.product.price_per_hour,
            valid=offer.orderable,
            spec=offer.spec,
            gpu_model=offer.product.gpu_model,
            product_line=offer.product.product_line,
        )
        for offer in await _offers(session, query, idc_id)
    ]


async def list_ppio_products(
    session: AsyncSession, category: ProductCategory | None, region_ids: str | None
) -> list[PpioProduct]:
    """PPIO's product list: every product, or those of `category` and of the comma-separated `region_ids`
    (blank entries ignored); an unknown region is an `InvalidField` on `region_ids`."""
    query = select(ProductModel).order_by(ProductModel.idc_id, ProductModel.id)
    if category is not None:
        query = query.where(ProductModel.category == category)
    wanted = sorted({part.strip() for part in (region_ids or "").split(",") if part.strip()})
    if wanted:
        known = set(await session.scalars(select(IdcModel.id).where(IdcModel.id.in_(wanted))))
        unknown = [region for region in wanted if region not in known]
        if unknown:
            raise InvalidField("region_ids", f"no region {', '.join(unknown)}; GET /gpus/v2/regions lists them")
        query = query.where(ProductModel.idc_id.in_(wanted))
    return [
        PpioProduct(
            id=offer.product.id,
            name=offer.product.id,
            category=offer.product.category,
            region_id=offer.product.idc_id,
            gpu_model=offer.product.gpu_model,
            gpu_num=offer.product.gpu_count,
            gpu_memory_gb=round(offer.product.gpu_memory_mb / 1024),
            cpu_num=offer.product.cpu,
            memory_gb=round(offer.product.memory_mb / 1024, 2),
            disk_gb=offer.product.disk_gb,
            price_per_hour=offer.product.price_per_hour,
            available=offer.orderable,
            spec=offer.spec,
        )
        for offer in await _offers(session, query, None)
    ]
