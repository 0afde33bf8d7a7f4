"""GMI `/api/v1/ssh-keys` (ours)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from dockyard.api.deps import IdempotencyKeyDep, PrincipalDep, ReadSessionDep, WriteSessionDep, answered
from dockyard.schemas.common import ERROR_RESPONSES, IdResponse
from dockyard.schemas.ssh_keys import CreateSshKeyRequest, SshKey
from dockyard.services import ssh_keys as service

router = APIRouter(prefix="/api/v1/ssh-keys", tags=["ssh-keys"], responses=ERROR_RESPONSES)

SshKeyId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post("", response_model=IdResponse, summary="Add an SSH public key")
async def create_ssh_key(
    body: CreateSshKeyRequest,
    principal: PrincipalDep,
    session: WriteSessionDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    """Stores a public key (OpenSSH format) under a name; containers created with its id get it in
    `/root/.ssh/authorized_keys`."""
    return answered(await service.create(session, principal, body, idempotency_key))


@router.get("", response_model=list[SshKey], summary="List SSH keys")
async def list_ssh_keys(principal: PrincipalDep, session: ReadSessionDep) -> list[SshKey]:
    """Your organization's SSH keys, newest first, each with its SHA256 fingerprint."""
    return await service.list_all(session, principal)


@router.get("/{key_id}", response_model=SshKey, summary="Get an SSH key")
async def get_ssh_key(key_id: SshKeyId, principal: PrincipalDep, session: ReadSessionDep) -> SshKey:
    """One SSH key; 404 when it is not one of your organization's."""
    return await service.get(session, principal, key_id)


@router.delete("/{key_id}", response_model=dict[str, str], summary="Delete an SSH key")
async def delete_ssh_key(key_id: SshKeyId, principal: PrincipalDep, session: WriteSessionDep) -> dict[str, str]:
    """Removes the key; 404 when it is not one of your organization's."""
    await service.delete(session, principal, key_id)
    return {}
