"""`/gpus/v2/network-storages` (ours), shared by containers' `storages` and endpoints' `volumes`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from dockyard.api.deps import ContextDep, IdempotencyKeyDep, PrincipalDep, ReadSessionDep, WriteSessionDep, answered
from dockyard.core.loops import LoopName
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.network_storages import (
    CreateNetworkStorageRequest,
    NetworkStorage,
    NetworkStorageId,
    NetworkStorageList,
    UpdateNetworkStorageRequest,
)
from dockyard.services import network_storages as service

router = APIRouter(prefix="/gpus/v2/network-storages", tags=["network-storages"], responses=ERROR_RESPONSES)

StorageId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post("", response_model=NetworkStorageId, summary="Create a network storage")
async def create_network_storage(
    body: CreateNetworkStorageRequest,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    """Makes a volume of `size_gb` in an IDC (counted against the `storage_gb` quota) that containers and endpoints
    mount by its id."""
    return answered(await service.create(session, principal, body, idempotency_key, settings=context.settings))


@router.get("", response_model=NetworkStorageList, summary="List network storages")
async def list_network_storages(principal: PrincipalDep, session: ReadSessionDep) -> NetworkStorageList:
    """Your organization's network storages with their declared sizes."""
    return NetworkStorageList(data=await service.list_all(session, principal))


@router.get("/{storage_id}", response_model=NetworkStorage, summary="Get a network storage")
async def get_network_storage(
    storage_id: StorageId, principal: PrincipalDep, session: ReadSessionDep
) -> NetworkStorage:
    """One network storage; 404 when it is not one of your organization's."""
    return await service.get(session, principal, storage_id)


@router.put("/{storage_id}", response_model=dict[str, str], summary="Grow a network storage")
async def resize_network_storage(
    storage_id: StorageId,
    body: UpdateNetworkStorageRequest,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
) -> dict[str, str]:
    """Raises the storage's declared size, within the `storage_gb` quota; a volume already made keeps its first
    cap."""
    await service.resize(session, principal, storage_id, body, settings=context.settings)
    return {}


@router.delete("/{storage_id}", response_model=dict[str, str], summary="Delete a network storage (not while mounted)")
async def delete_network_storage(
    storage_id: StorageId, context: ContextDep, principal: PrincipalDep, session: WriteSessionDep
) -> dict[str, str]:
    """Removes the storage; refused while a container or endpoint mounts it."""
    await service.delete(session, principal, storage_id)
    context.wake(LoopName.NETWORK_STORAGES)
    return {}
