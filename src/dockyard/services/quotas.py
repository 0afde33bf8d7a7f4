"""Per-organization quotas: how much one organization may hold at once, set by the operator per organization and
defaulting to the installation's `DOCKYARD_QUOTA_*` settings.

What counts, always as the database says now:
- `containers`: containers not being deleted; `gpus`, `vcpus`, `memory_mb`: their products' figures, plus those
  of every endpoint worker wanted;
- `endpoints`: endpoints not being deleted; `workers`: the workers they want (the autoscaler's figure within
  `min_replicas` and `max_replicas`). A `min_replicas` is admitted when it is asked for (create, PUT); the
  autoscaler scales up only as far as the quotas leave room (`worker_room`), and says so when it holds back;
- `storage_gb`: the declared sizes of network storages not being deleted;
- `queued_jobs`: jobs `IN_QUEUE`.

Admission is atomic per organization: `admit` locks the organization's row, counts, and refuses an ask that would
pass a limit; the caller writes the new rows in the same transaction, so of concurrent asks for the last unit
exactly one gets it. On PostgreSQL the lock is `SELECT ... FOR NO KEY UPDATE`, which queues the organization's
admissions behind each other without blocking writes that merely reference the organization (foreign keys take
`FOR KEY SHARE`); on SQLite every write transaction already starts with `BEGIN IMMEDIATE` on the one writer
connection (db/session.py), so writers are serialized and the lock clause is left out by SQLAlchemy. A limit
lowered below what is held refuses new asks only: nothing running is taken away.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.config import Settings
from dockyard.core.status import DesiredState, JobStatus, NetworkStorageStatus
from dockyard.db.models import (
    ContainerModel,
    EndpointModel,
    JobModel,
    NetworkStorageModel,
    OrganizationModel,
    OrganizationQuotaModel,
    ProductModel,
)
from dockyard.errors import NotFound, QuotaExceeded
from dockyard.schemas.admin import SetQuotasRequest
from dockyard.schemas.quotas import Quota, Quotas


class Resource(StrEnum):
    """A quota's name: the key in `/quotas` bodies, the `DOCKYARD_QUOTA_<NAME>` setting and the table column."""

    # In the order an ask is checked (the count of things first) and listed.
    CONTAINERS = "containers"
    ENDPOINTS = "endpoints"
    WORKERS = "workers"
    GPUS = "gpus"
    VCPUS = "vcpus"
    MEMORY_MB = "memory_mb"
    STORAGE_GB = "storage_gb"
    QUEUED_JOBS = "queued_jobs"


# How a refusal names each quota and its unit.
_LABELS: dict[Resource, tuple[str, str]] = {
    Resource.GPUS: ("GPUs", ""),
    Resource.VCPUS: ("vCPUs", ""),
    Resource.MEMORY_MB: ("memory", " MB"),
    Resource.CONTAINERS: ("containers", ""),
    Resource.ENDPOINTS: ("endpoints", ""),
    Resource.WORKERS: ("endpoint workers", ""),
    Resource.STORAGE_GB: ("network storage", " GB"),
    Resource.QUEUED_JOBS: ("queued jobs", ""),
}
_COMPUTE = (Resource.GPUS, Resource.VCPUS, Resource.MEMORY_MB)

Amounts = Mapping[Resource, float]


def _figure(value: float, unit: str) -> str:
    return f"{value:g}{unit}"


def refusal(resource: Resource, limit: float, used: float, asked: float, org_name: str, org_id: str) -> QuotaExceeded:
    """The error for an ask of `asked` past `limit` with `used` held: names the quota, the figures and the way out."""
    label, unit = _LABELS[resource]
    message = (
        f"quota: {label} {_figure(used, unit)} used + {_figure(asked, unit)} asked > {_figure(limit, unit)} allowed "
        f"for organization {org_name}; delete what you no longer need or ask the operator to raise it "
        f"(PUT /admin/v1/organizations/{org_id}/quotas)"
    )
    return QuotaExceeded(message, quota=resource.value, limit=limit, used=used, asked=asked)


def container_amounts(product: ProductModel, count: int = 1) -> dict[Resource, float]:
    """What `count` containers of `product` hold."""
    return {
        Resource.CONTAINERS: count,
        Resource.GPUS: count * product.gpu_count,
        Resource.VCPUS: count * product.cpu,
        Resource.MEMORY_MB: count * product.memory_mb,
    }


def wanted_workers(desired_replicas: int, worker_config: Mapping[str, Any]) -> int:
    """The workers an endpoint wants: the autoscaler's figure within the worker_config's bounds."""
    low, high = int(worker_config.get("min_replicas", 0)), int(worker_config.get("max_replicas", 0))
    return max(low, min(desired_replicas, high))


def worker_amounts(worker_config: Mapping[str, Any], cpu: float, memory_mb: int, workers: int) -> dict[Resource, float]:
    """What `workers` workers of an endpoint hold (its worker_config's GPUs, its product's CPU and memory)."""
    return {
        Resource.WORKERS: workers,
        Resource.GPUS: workers * int(worker_config.get("gpu_num", 0)),
        Resource.VCPUS: workers * cpu,
        Resource.MEMORY_MB: workers * memory_mb,
    }


def endpoint_amounts(row: EndpointModel, product: ProductModel | None) -> dict[Resource, float]:
    """What the endpoint `row` holds: itself and its wanted workers."""
    cpu, memory_mb = (product.cpu, product.memory_mb) if product is not None else (0.0, 0)
    workers = wanted_workers(row.desired_replicas, row.worker_config)
    return {Resource.ENDPOINTS: 1, **worker_amounts(row.worker_config, cpu, memory_mb, workers)}


def _add(total: dict[Resource, float], amounts: Amounts) -> None:
    for resource, amount in amounts.items():
        total[resource] = total.get(resource, 0.0) + amount


async def limits(
    session: AsyncSession, org_id: str, *, settings: Settings
) -> tuple[dict[Resource, int], set[Resource]]:
    """The limits in force for the organization, and which of them the operator set (the rest are defaults)."""
    row = await session.get(OrganizationQuotaModel, org_id)
    result: dict[Resource, int] = {}
    own: set[Resource] = set()
    for resource in Resource:
        value = getattr(row, resource.value) if row is not None else None
        if value is None:
            result[resource] = int(getattr(settings, f"quota_{resource.value}"))
        else:
            result[resource] = int(value)
            own.add(resource)
    return result, own


async def usage(
    session: AsyncSession, org_id: str, resources: Iterable[Resource] = tuple(Resource), *, except_endpoint: str = ""
) -> dict[Resource, float]:
    """What the organization holds now of each of `resources` (see the module docstring), leaving out the
    endpoint `except_endpoint` (one being changed, whose new figures are the ask)."""
    wanted = set(resources)
    used: dict[Resource, float] = dict.fromkeys(wanted, 0.0)
    if wanted & {Resource.CONTAINERS, *_COMPUTE}:
        containers = await session.execute(
            select(
                func.count(ContainerModel.id),
                func.coalesce(func.sum(ProductModel.gpu_count), 0),
                func.coalesce(func.sum(ProductModel.cpu), 0.0),
                func.coalesce(func.sum(ProductModel.memory_mb), 0),
            )
            .select_from(ContainerModel)
            .outerjoin(ProductModel, ProductModel.id == ContainerModel.product_id)
            .where(ContainerModel.org_id == org_id, ContainerModel.desired != DesiredState.DELETED)
        )
        count, gpus, cpu, memory_mb = containers.one()
        held = {Resource.CONTAINERS: count, Resource.GPUS: gpus, Resource.VCPUS: cpu, Resource.MEMORY_MB: memory_mb}
        _add(used, held)
    if wanted & {Resource.ENDPOINTS, Resource.WORKERS, *_COMPUTE}:
        endpoints = await session.execute(
            select(
                EndpointModel.desired_replicas, EndpointModel.worker_config, ProductModel.cpu, ProductModel.memory_mb
            )
            .outerjoin(ProductModel, ProductModel.id == EndpointModel.product_id)
            .where(
                EndpointModel.org_id == org_id,
                EndpointModel.desired != DesiredState.DELETED,
                EndpointModel.id != except_endpoint,
            )
        )
        for desired_replicas, worker_config, cpu, memory_mb in endpoints:
            workers = wanted_workers(desired_replicas, worker_config)
            _add(used, {Resource.ENDPOINTS: 1, **worker_amounts(worker_config, cpu or 0.0, memory_mb or 0, workers)})
    if Resource.STORAGE_GB in wanted:
        used[Resource.STORAGE_GB] = float(
            await session.scalar(
                select(func.coalesce(func.sum(NetworkStorageModel.size_gb), 0)).where(
                    NetworkStorageModel.org_id == org_id, NetworkStorageModel.status != NetworkStorageStatus.DELETING
                )
            )
            or 0
        )
    if Resource.QUEUED_JOBS in wanted:
        used[Resource.QUEUED_JOBS] = float(await queued_jobs(session, org_id))
    return {resource: float(used[resource]) for resource in wanted}


async def queued_jobs(session: AsyncSession, org_id: str) -> int:
    """The organization's jobs IN_QUEUE (read off the (org_id, status) index)."""
    queued = (JobModel.org_id == org_id, JobModel.status == JobStatus.IN_QUEUE)
    count = await session.scalar(select(func.count()).select_from(JobModel).where(*queued))
    return int(count or 0)


async def lock(session: AsyncSession, org_id: str) -> str:
    """Take the organization's quota lock for the rest of the transaction (see the module docstring); its name."""
    name = await session.scalar(
        select(OrganizationModel.name).where(OrganizationModel.id == org_id).with_for_update(key_share=True)
    )
    if name is None:
        raise NotFound(f"organization {org_id} not found")
    return name


async def admit(
    session: AsyncSession,
    org_id: str,
    asked: Amounts,
    *,
    before: Amounts | None = None,
    except_endpoint: str = "",
    settings: Settings,
) -> None:
    """Refuse, with `QuotaExceeded`, an ask that would take the organization past a limit; else return, holding
    the organization's lock until the caller's transaction ends, so the rows it then writes are counted by the
    next admission. `before` is what the thing being changed held so far (a PUT): a figure that does not grow is
    never refused, even over a limit the operator has since lowered."""
    name = await lock(session, org_id)
    limit, _ = await limits(session, org_id, settings=settings)
    asked = {resource: amount for resource, amount in asked.items() if amount > 0}
    used = await usage(session, org_id, asked, except_endpoint=except_endpoint)
    for resource in Resource:
        amount = asked.get(resource, 0.0)
        if amount <= (before or {}).get(resource, 0.0):
            continue
        if used[resource] + amount > limit[resource]:
            raise refusal(resource, limit[resource], used[resource], amount, name, org_id)


async def worker_room(
    session: AsyncSession, row: EndpointModel, per_worker: Amounts, *, settings: Settings
) -> tuple[int, Callable[[int], str]]:
    """How many workers the endpoint `row` may want in all, given what the rest of its organization holds (under
    the organization's lock, for the caller's transaction), and a function that says why a count above that is
    held back."""
    name = await lock(session, row.org_id)
    limit, _ = await limits(session, row.org_id, settings=settings)
    used = await usage(session, row.org_id, (Resource.WORKERS, *_COMPUTE), except_endpoint=row.id)
    room = {
        resource: math.floor((limit[resource] - used[resource]) / amount)
        for resource, amount in per_worker.items()
        if amount > 0
    }
    fits = max(0, min(room.values(), default=0))

    def why(workers: int) -> str:
        resource = min(room, key=lambda r: room[r])
        error = refusal(resource, limit[resource], used[resource], workers * per_worker[resource], name, row.org_id)
        return error.message

    return fits, why


def _wire(limit: dict[Resource, int], own: set[Resource], used: dict[Resource, float], org_id: str) -> Quotas:
    return Quotas(
        org_id=org_id,
        quotas=[
            Quota(name=resource.value, limit=limit[resource], used=used[resource], default=resource not in own)
            for resource in Resource
        ],
    )


async def get(session: AsyncSession, org_id: str, *, settings: Settings) -> Quotas:
    """Every quota of the organization with what it holds now."""
    if await session.get(OrganizationModel, org_id) is None:
        raise NotFound(f"organization {org_id} not found; GET /admin/v1/organizations lists them")
    limit, own = await limits(session, org_id, settings=settings)
    return _wire(limit, own, await usage(session, org_id), org_id)


async def set_limits(session: AsyncSession, org_id: str, request: SetQuotasRequest, *, settings: Settings) -> Quotas:
    """Set the limits the request names (null: back to the installation's default); the others stay as they are."""
    if await session.get(OrganizationModel, org_id) is None:
        raise NotFound(f"organization {org_id} not found; GET /admin/v1/organizations lists them")
    row = await session.get(OrganizationQuotaModel, org_id)
    if row is None:
        row = OrganizationQuotaModel(org_id=org_id)
        session.add(row)
    for name in request.model_fields_set:
        setattr(row, Resource(name).value, getattr(request, name))
    await session.commit()
    return await get(session, org_id, settings=settings)
