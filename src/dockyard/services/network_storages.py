"""Network storages: named volumes on an IDC's runtime, mounted by containers (`storages[].id`) and endpoint
workers (`volumes[].id`). Deletion is a state: DELETE marks the row `deleting` and the reconciler removes
the volume, then the row."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.config import Settings
from dockyard.core.callers import Principal
from dockyard.core.status import DesiredState, NetworkStorageStatus
from dockyard.core.workload import VolumeSpec
from dockyard.db.models import ContainerModel, EndpointModel, IdcModel, NetworkStorageModel
from dockyard.errors import Conflict, InvalidField, NotFound
from dockyard.schemas.network_storages import (
    CreateNetworkStorageRequest,
    NetworkStorage,
    UpdateNetworkStorageRequest,
)
from dockyard.services import idempotency, quotas
from dockyard.services.tenancy import owned_row


@dataclass
class Mounters:
    """Who mounts one storage: containers, and endpoints (each of whose workers does)."""

    containers: list[str] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [*self.containers, *self.endpoints]

    def __str__(self) -> str:
        """ "containers A, B and endpoints C", for a sentence."""
        kinds = (("containers", self.containers), ("endpoints", self.endpoints))
        return " and ".join(f"{kind} {', '.join(ids)}" for kind, ids in kinds if ids)


async def mounts(session: AsyncSession, org_id: str, storage_ids: Iterable[str]) -> dict[str, Mounters]:
    """Storage id -> the organization's containers and endpoints, not being deleted, whose spec mounts it."""
    wanted = set(storage_ids)
    result = {storage_id: Mounters() for storage_id in wanted}
    for model in (ContainerModel, EndpointModel):
        rows = await session.execute(
            select(model.id, model.spec)
            .where(model.org_id == org_id, model.desired != DesiredState.DELETED)
            .order_by(model.id)
        )
        for owner_id, spec in rows:
            for volume in (spec or {}).get("volumes") or ():
                storage_id = volume.get("storage_id")
                if storage_id not in wanted:
                    continue
                owners = result[storage_id].containers if model is ContainerModel else result[storage_id].endpoints
                if owner_id not in owners:
                    owners.append(owner_id)
    return result


def _wire(row: NetworkStorageModel, mounted_by: Mounters) -> NetworkStorage:
    return NetworkStorage(
        id=row.id,
        name=row.name,
        region_id=row.idc_id,
        size_gb=row.size_gb,
        status=row.status,
        mounted_by=mounted_by.ids,
        created_at=row.created_at,
    )


async def get_row(session: AsyncSession, principal: Principal, storage_id: str) -> NetworkStorageModel:
    """The storage if it is this organization's; another organization's is as missing as a wrong id."""
    return await owned_row(
        session, principal, NetworkStorageModel, storage_id, "network storage", "GET /gpus/v2/network-storages"
    )


async def create(
    session: AsyncSession,
    principal: Principal,
    request: CreateNetworkStorageRequest,
    idempotency_key: str | None = None,
    *,
    settings: Settings,
) -> idempotency.Answer:
    """Record the storage (its volume is made when a container first mounts it) and answer `{"id"}`; once per
    Idempotency-Key. Its size counts against the organization's `storage_gb` quota."""

    async def add() -> dict[str, str]:
        if await session.get(IdcModel, request.region_id) is None:
            raise InvalidField("region_id", f"no region {request.region_id}; GET /gpus/v2/regions lists them")
        await quotas.admit(session, principal.org_id, {quotas.Resource.STORAGE_GB: request.size_gb}, settings=settings)
        row = NetworkStorageModel(
            org_id=principal.org_id, name=request.name, idc_id=request.region_id, size_gb=request.size_gb
        )
        session.add(row)
        await session.flush()
        return {"id": row.id}

    body = request.model_dump(mode="json")
    operation = "POST /gpus/v2/network-storages"
    answer = await idempotency.once(session, principal.org_id, idempotency_key, operation, body, add)
    await session.commit()
    return answer


async def get(session: AsyncSession, principal: Principal, storage_id: str) -> NetworkStorage:
    row = await get_row(session, principal, storage_id)
    return _wire(row, (await mounts(session, principal.org_id, [row.id]))[row.id])


async def list_all(session: AsyncSession, principal: Principal) -> list[NetworkStorage]:
    rows = list(
        await session.scalars(
            select(NetworkStorageModel)
            .where(NetworkStorageModel.org_id == principal.org_id)
            .order_by(NetworkStorageModel.created_at.desc(), NetworkStorageModel.id)
        )
    )
    mounted = await mounts(session, principal.org_id, [row.id for row in rows])
    return [_wire(row, mounted[row.id]) for row in rows]


async def resize(
    session: AsyncSession,
    principal: Principal,
    storage_id: str,
    request: UpdateNetworkStorageRequest,
    *,
    settings: Settings,
) -> None:
    """Grow the storage; the growth counts against the organization's `storage_gb` quota."""
    row = await get_row(session, principal, storage_id)
    if row.status == NetworkStorageStatus.DELETING:
        raise Conflict(f"network storage {storage_id} is being deleted; create a new one")
    if request.size_gb < row.size_gb:
        raise InvalidField(
            "size_gb", f"storages only grow: {request.size_gb} is below the current {row.size_gb}; send at least that"
        )
    growth = request.size_gb - row.size_gb
    await quotas.admit(session, principal.org_id, {quotas.Resource.STORAGE_GB: growth}, settings=settings)
    row.size_gb = request.size_gb
    await session.commit()


async def delete(session: AsyncSession, principal: Principal, storage_id: str) -> None:
    """Mark it `deleting` (the reconciler removes the volume, then the row); refused while mounted."""
    row = await get_row(session, principal, storage_id)
    users = (await mounts(session, principal.org_id, [row.id]))[row.id]
    if users.ids:
        raise Conflict(
            f"network storage {storage_id} is mounted by {users}; delete them or remove the storage from them first",
            details=[{"field": "id", "message": f"mounted by {user}"} for user in users.ids],
        )
    if row.status != NetworkStorageStatus.DELETING:
        row.status = NetworkStorageStatus.DELETING
        await session.commit()


async def volume_specs(
    session: AsyncSession,
    principal: Principal,
    idc_id: str,
    requested: Sequence[tuple[str, str]],
    *,
    field: str,
    path_field: str,
    place: str,
) -> list[VolumeSpec]:
    """The `(storage id, mount path)` pairs a workload asks for, as volumes: each storage the caller's, in
    `idc_id`, not being deleted, and each path used once. Errors name `field[i].id` or `field[i].<path_field>`;
    `place` is what the API family calls an IDC ("IDC", "region")."""
    volumes: list[VolumeSpec] = []
    paths: set[str] = set()
    for index, (storage_id, mount_path) in enumerate(requested):
        item = f"{field}[{index}]"
        try:
            row = await get_row(session, principal, storage_id)
        except NotFound:
            raise InvalidField(
                f"{item}.id", f"network storage {storage_id} not found; POST /gpus/v2/network-storages creates one"
            ) from None
        if row.idc_id != idc_id:
            raise InvalidField(
                f"{item}.id", f"network storage {storage_id} is in {place} {row.idc_id}, not {idc_id}; use one there"
            )
        if row.status == NetworkStorageStatus.DELETING:
            raise InvalidField(f"{item}.id", f"network storage {storage_id} is being deleted; use another one")
        path = mount_path.rstrip("/") or "/"
        if path in paths:
            raise InvalidField(f"{item}.{path_field}", f"{path} is mounted twice; give each storage its own path")
        paths.add(path)
        volumes.append(VolumeSpec(storage_id=storage_id, mount_path=path, size_gb=row.size_gb))
    return volumes
