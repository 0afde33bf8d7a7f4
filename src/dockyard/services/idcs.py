"""The IDCs a user may create containers in, with a status computed from their GPU capacity and whether their
runtime can be reached.

An unreachable runtime is the operator's to fix, so its details (the engine's address, the error) are recorded
for the operator (the log, `GET /admin/v1/idcs`, `/healthz` naming the IDC) and tenants get one sentence: the
IDC shows `maintenance` (GMI's statuses have no other for "cannot run anything now") and its containers
`unknown` with `unreachable_reason`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.status import GpuHealth, IdcStatus
from dockyard.db.base import utcnow
from dockyard.db.models import GpuModel, IdcModel, NodeModel
from dockyard.db.session import Database
from dockyard.errors import InvalidField
from dockyard.schemas.idcs import IdcInfo
from dockyard.services.inventory import gpu_holders

log = logging.getLogger(__name__)


def unreachable_reason(idc_id: str) -> str:
    """What a tenant is told about a runtime that cannot be reached: no address, no exception."""
    return f"the container runtime of IDC {idc_id} cannot be reached; the operator has been told"


async def record_runtime_errors(db: Database, errors: Mapping[str, str]) -> None:
    """Record each IDC's runtime error ("" while its runtime answers) where it differs from the row, and tell the
    operator in the log when one stops or starts answering. Read first, so a pass that changes nothing writes
    nothing; rows keep the time the error began across changes of its wording."""
    async with db.read() as session:
        rows = await session.execute(select(IdcModel.id, IdcModel.runtime_error).where(IdcModel.id.in_(errors)))
        recorded: dict[str, str] = {idc_id: error for idc_id, error in rows}
    for idc_id, error in errors.items():
        if recorded.get(idc_id, error) == error:
            continue
        async with db.write() as session:
            result = await session.execute(
                update(IdcModel)
                .where(IdcModel.id == idc_id, IdcModel.runtime_error != error)
                .values(
                    runtime_error=error,
                    runtime_error_since=func.coalesce(IdcModel.runtime_error_since, utcnow()) if error else None,
                )
            )
        if getattr(result, "rowcount", 0) != 1:
            continue  # written by another server meanwhile
        if error:
            log.warning(
                "IDC %s: its container runtime cannot be reached (%s); its containers show unknown and it takes "
                "no new ones until the runtime answers",
                idc_id,
                error,
            )
        else:
            log.info("IDC %s: its container runtime answers again", idc_id)


async def gpus_by_idc(session: AsyncSession, idc_id: str | None = None) -> dict[str, list[GpuModel]]:
    """Every GPU (real or simulated) of every node, grouped by the node's IDC; one IDC's when `idc_id` is given."""
    query = select(NodeModel.idc_id, GpuModel).join(NodeModel, GpuModel.node_id == NodeModel.id)
    if idc_id is not None:
        query = query.where(NodeModel.idc_id == idc_id)
    result: dict[str, list[GpuModel]] = defaultdict(list)
    for idc, gpu in await session.execute(query.order_by(GpuModel.node_id, GpuModel.index)):
        result[idc].append(gpu)
    return result


async def health_problems(session: AsyncSession) -> list[str]:
    """A sentence for each IDC whose runtime cannot be reached, for `/healthz`: anyone may read it, so it names the
    IDC and when, and leaves why to the admin API."""
    rows = await session.execute(
        select(IdcModel.id, IdcModel.runtime_error_since).where(IdcModel.runtime_error != "").order_by(IdcModel.id)
    )
    return [
        f"the container runtime of IDC {idc_id} cannot be reached"
        + (f" since {since.isoformat(timespec='seconds')}" if since else "")
        + "; GET /admin/v1/idcs says why"
        for idc_id, since in rows
    ]


async def get_usable(session: AsyncSession, idc_id: str, field: str = "idc") -> IdcModel:
    """The IDC, if it exists and takes new containers; else `InvalidField` on `field` saying what to do."""
    row = await session.get(IdcModel, idc_id)
    if row is None:
        raise InvalidField(field, f"no IDC {idc_id}; GET /api/v1/idcs lists them")
    if row.status == IdcStatus.MAINTENANCE:
        raise InvalidField(field, f"IDC {idc_id} is in maintenance and takes no new containers; pick another IDC")
    if row.runtime_error:
        raise InvalidField(field, f"{unreachable_reason(idc_id)}; it takes no new containers now: retry later")
    return row


def healthy(gpus: Iterable[GpuModel]) -> list[GpuModel]:
    """The GPUs of `gpus` that can take a new container or worker: those the GPU health loop has not marked."""
    return [gpu for gpu in gpus if gpu.health == GpuHealth.HEALTHY]


def computed_status(row: IdcModel, gpus: list[GpuModel], held: set[str]) -> IdcStatus:
    """`maintenance` as the operator set it or while its runtime cannot be reached; `full` when the IDC has GPUs and
    every one is held or unhealthy; else available."""
    if row.status == IdcStatus.MAINTENANCE or row.runtime_error:
        return IdcStatus.MAINTENANCE
    if gpus and all(gpu.uuid in held for gpu in healthy(gpus)):
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
