"""The operator's catalog: IDCs (regions, each bound to one runtime) and the products they sell."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.context import ServerContext
from dockyard.core.status import DesiredState, IdcStatus
from dockyard.db.models import ContainerModel, IdcModel, ProductModel
from dockyard.errors import Conflict, InvalidField, NotFound
from dockyard.runtimes.factory import IMPLEMENTED_KINDS
from dockyard.schemas.admin import (
    CreateIdcRequest,
    CreateProductRequest,
    Idc,
    Product,
    ProductFields,
    UpdateIdcRequest,
    UpdateProductRequest,
)

# The kinds `dockyard.runtimes.factory.build_runtime` can build in this build; an IDC bound to any other
# could never run anything, so it is refused when it is declared rather than when a container lands on it.

# `full` is observed from capacity, never set by hand.
SETTABLE_IDC_STATUSES: tuple[IdcStatus, ...] = (IdcStatus.AVAILABLE, IdcStatus.MAINTENANCE)


def idc_wire(row: IdcModel) -> Idc:
    return Idc(
        id=row.id,
        name=row.name,
        country=row.country,
        country_subdivision=row.country_subdivision,
        status=row.status,
        runtime_kind=row.runtime_kind,
        runtime_url=row.runtime_url,
        runtime_error=row.runtime_error,
        runtime_error_since=row.runtime_error_since,
        created_at=row.created_at,
    )


def product_wire(row: ProductModel) -> Product:
    return Product(
        id=row.id,
        idc_id=row.idc_id,
        category=row.category,
        gpu_model=row.gpu_model,
        gpu_count=row.gpu_count,
        gpu_memory_mb=row.gpu_memory_mb,
        cpu=row.cpu,
        memory_mb=row.memory_mb,
        pids_limit=row.pids_limit,
        disk_gb=row.disk_gb,
        price_per_hour=row.price_per_hour,
        product_line=row.product_line,
        valid=row.valid,
        created_at=row.created_at,
        modified_at=row.modified_at,
    )


async def get_idc_row(session: AsyncSession, idc_id: str) -> IdcModel:
    row = await session.get(IdcModel, idc_id)
    if row is None:
        raise NotFound(f"IDC {idc_id} not found; GET /admin/v1/idcs lists them")
    return row


async def list_idcs(session: AsyncSession) -> list[Idc]:
    return [idc_wire(row) for row in await session.scalars(select(IdcModel).order_by(IdcModel.id))]


async def create_idc(session: AsyncSession, request: CreateIdcRequest, *, context: ServerContext) -> Idc:
    if request.runtime_kind not in IMPLEMENTED_KINDS:
        available = ", ".join(kind.value for kind in IMPLEMENTED_KINDS)
        raise InvalidField(
            "runtime_kind",
            f"{request.runtime_kind.value} runtimes are not available in this build; use one of: {available}",
        )
    if await session.get(IdcModel, request.id) is not None:
        raise Conflict(f"an IDC with id {request.id} exists already; choose another id or PATCH that one")
    row = IdcModel(
        id=request.id,
        name=request.name,
        country=request.country,
        country_subdivision=request.country_subdivision,
        runtime_kind=request.runtime_kind,
        runtime_url=request.runtime_url,
    )
    session.add(row)
    await session.commit()
    context.attach_runtime(row)
    return idc_wire(row)


async def update_idc(session: AsyncSession, idc_id: str, request: UpdateIdcRequest) -> Idc:
    row = await get_idc_row(session, idc_id)
    if request.status is not None:
        if request.status not in SETTABLE_IDC_STATUSES:
            raise InvalidField("status", "set available or maintenance; full is observed, not set")
        row.status = request.status
    if request.name is not None:
        row.name = request.name
    await session.commit()
    return idc_wire(row)


async def _product_row(session: AsyncSession, product_id: str) -> ProductModel:
    row = await session.get(ProductModel, product_id)
    if row is None:
        raise NotFound(f"product {product_id} not found; GET /admin/v1/products lists them")
    return row


async def _check_fields(session: AsyncSession, fields: ProductFields) -> None:
    if await session.get(IdcModel, fields.idc_id) is None:
        raise InvalidField("idc_id", f"no IDC {fields.idc_id}; create it first with POST /admin/v1/idcs")
    if fields.gpu_count > 0 and not fields.gpu_model.strip():
        raise InvalidField("gpu_model", "name the GPU model when gpu_count is above 0")


def _assign(row: ProductModel, fields: ProductFields) -> None:
    row.idc_id = fields.idc_id
    row.category = fields.category
    row.gpu_model = fields.gpu_model
    row.gpu_count = fields.gpu_count
    row.gpu_memory_mb = fields.gpu_memory_mb
    row.cpu = fields.cpu
    row.memory_mb = fields.memory_mb
    row.pids_limit = fields.pids_limit
    row.disk_gb = fields.disk_gb
    row.price_per_hour = fields.price_per_hour
    row.product_line = fields.product_line
    row.valid = fields.valid


async def list_products(session: AsyncSession) -> list[Product]:
    rows = await session.scalars(select(ProductModel).order_by(ProductModel.idc_id, ProductModel.id))
    return [product_wire(row) for row in rows]


async def get_product(session: AsyncSession, product_id: str) -> Product:
    return product_wire(await _product_row(session, product_id))


async def create_product(session: AsyncSession, request: CreateProductRequest) -> Product:
    await _check_fields(session, request)
    if await session.get(ProductModel, request.id) is not None:
        raise Conflict(f"a product with id {request.id} exists already; choose another id or PUT that one")
    row = ProductModel(id=request.id)
    _assign(row, request)
    session.add(row)
    await session.commit()
    return product_wire(row)


async def update_product(session: AsyncSession, product_id: str, request: UpdateProductRequest) -> Product:
    """Replace a product's definition. Running containers keep the limits they were created with."""
    row = await _product_row(session, product_id)
    await _check_fields(session, request)
    _assign(row, request)
    await session.commit()
    return product_wire(row)


async def delete_product(session: AsyncSession, product_id: str) -> None:
    """Refused while a container that is not being deleted uses it: its limits come from the product."""
    row = await _product_row(session, product_id)
    users = list(
        await session.scalars(
            select(ContainerModel.id)
            .where(ContainerModel.product_id == product_id, ContainerModel.desired != DesiredState.DELETED)
            .order_by(ContainerModel.id)
            .limit(5)
        )
    )
    if users:
        raise Conflict(
            f"product {product_id} is used by containers {', '.join(users)}; delete them first "
            "or set valid=false to stop selling it",
            details=[{"field": "product_id", "message": f"used by {container}"} for container in users],
        )
    await session.delete(row)
    await session.commit()
