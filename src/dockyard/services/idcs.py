"""The IDCs a user may create containers in, with a status computed from their GPU capacity."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.status import IdcStatus
from dockyard.db.models import GpuModel, IdcModel, NodeModel
from dockyard.errors import InvalidField
from dockyard.schemas.idcs import IdcInfo
from dockyard.services.inventory import gpu_holders


async def gpus_by_idc(session: AsyncSession, idc_id: str | None = None) -> dict[str, list[GpuModel]]:
    """Every GPU (real or simulated) of every node, grouped by the node's IDC; one IDC's when `idc_id` is given."""
    query = select(NodeModel.idc_id, GpuModel).join(NodeModel, GpuModel.node_id == NodeModel.id)
    if idc_id is not None:
        query = query.where(NodeModel.idc_id == idc_id)
    result: dict[str, list[GpuModel]] = defaultdict(list)
    for idc, gpu in await session.execute(query.order_by(GpuModel.node_id, GpuModel.index)):
        result[idc].append(gpu)
    return result


async def get_usable(session: AsyncSession, idc_id: str, field: str = "idc") -> IdcModel:
    """The IDC, if it exists and takes new containers; else `InvalidField` on `field` saying what to do."""
    row = await session.get(IdcModel, idc_id)
    if row is None:
        raise InvalidField(field, f"no IDC {idc_id}; GET /api/v1/idcs lists them")
    if row.status == IdcStatus.MAINTENANCE:
        raise InvalidField(field, f"IDC {idc_id} is in maintenance and takes no new containers; pick another IDC")
    return row


def computed_status(row: IdcModel, gpus: list[GpuModel], held: set[str]) -> IdcStatus:
    """`maintenance` as the operator set it; `full` when the IDC has GPUs and every one is held; else available."""
    if row.status == IdcStatus.MAINTENANCE:
        return IdcStatus.MAINTENANCE
    if gpus and all(gpu.uuid in held for gpu in gpus):
        return IdcStatus.FULL
    return IdcStatus.AVAILABLE


async def list_idcs(session: AsyncSession) -> list[IdcInfo]:
    rows = await session.scalars(select(IdcModel).order_by(IdcModel.id))
    gpus = await gpus_by_idc(session)
    held = set(await gpu_holders(session))
    return [
        IdcInfo(
            idc_id=row.id,
            name=row.name,
            country=row.country,
            country_subdivision=row.country_subdivision,
            status=computed_status(row, gpus.get(row.id, []), held),
        )
        for row in rows
    ]
