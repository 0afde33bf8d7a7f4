"""`/gpus/v2/registry-auths` (ours; PPIO v1 had `/repository/auths`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from dockyard.api.deps import ContextDep, IdempotencyKeyDep, PrincipalDep, ReadSessionDep, WriteSessionDep, answered
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.registry_auths import CreateRegistryAuthRequest, RegistryAuth, RegistryAuthId, RegistryAuthList
from dockyard.services import registry_auths as service

router = APIRouter(prefix="/gpus/v2/registry-auths", tags=["registry-auths"], responses=ERROR_RESPONSES)

AuthId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post("", response_model=RegistryAuthId, summary="Create a registry auth")
async def create_registry_auth(
    body: CreateRegistryAuthRequest,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    """Stores a registry user name and password (encrypted at rest) under a name, for endpoints whose image needs
    them."""
    return answered(await service.create(session, principal, body, idempotency_key, box=context.box))


@router.get("", response_model=RegistryAuthList, summary="List registry auths (passwords are never answered)")
async def list_registry_auths(principal: PrincipalDep, session: ReadSessionDep) -> RegistryAuthList:
    """Your organization's registry credentials, their passwords left out."""
    return RegistryAuthList(data=await service.list_all(session, principal))


@router.get("/{auth_id}", response_model=RegistryAuth, summary="Get a registry auth (its password is never answered)")
async def get_registry_auth(auth_id: AuthId, principal: PrincipalDep, session: ReadSessionDep) -> RegistryAuth:
    """One registry credential, its password left out; 404 when it is not one of your organization's."""
    return await service.get(session, principal, auth_id)


@router.delete("/{auth_id}", response_model=dict[str, str], summary="Delete a registry auth")
async def delete_registry_auth(auth_id: AuthId, principal: PrincipalDep, session: WriteSessionDep) -> dict[str, str]:
    """Removes the credential; 404 when it is not one of your organization's."""
    await service.delete(session, principal, auth_id)
    return {}
