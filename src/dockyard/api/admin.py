"""The operator's API, `/admin/v1` (ours): organizations and their keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from dockyard.api.deps import AdminDep, ReadSessionDep, WriteSessionDep
from dockyard.schemas.admin import (
    ApiKey,
    CreatedApiKey,
    CreateKeyRequest,
    CreateOrganizationRequest,
    Organization,
)
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.services import keys
from dockyard.services import organizations as service

router = APIRouter(prefix="/admin/v1", tags=["admin"], responses=ERROR_RESPONSES)

OrgId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post("/organizations", response_model=Organization, summary="Create an organization")
async def create_organization(body: CreateOrganizationRequest, _: AdminDep, session: WriteSessionDep) -> Organization:
    return await service.create_org(session, body.name)


@router.get("/organizations", response_model=list[Organization], summary="List organizations")
async def list_organizations(_: AdminDep, session: ReadSessionDep) -> list[Organization]:
    return await service.list_orgs(session)


@router.post("/organizations/{org_id}/keys", response_model=CreatedApiKey, summary="Create an API key")
async def create_api_key(org_id: OrgId, body: CreateKeyRequest, _: AdminDep, session: WriteSessionDep) -> CreatedApiKey:
    return await service.create_key(session, org_id, body)


@router.get("/organizations/{org_id}/keys", response_model=list[ApiKey], summary="List an organization's keys")
async def list_api_keys(org_id: OrgId, _: AdminDep, session: ReadSessionDep) -> list[ApiKey]:
    return await service.list_keys(session, org_id)


@router.delete("/keys/{key_id}", response_model=dict[str, str], summary="Revoke an API key")
async def revoke_api_key(
    key_id: Annotated[str, Path(min_length=1, max_length=64)], _: AdminDep, session: WriteSessionDep
) -> dict[str, str]:
    await keys.revoke_key(session, key_id)
    return {}
