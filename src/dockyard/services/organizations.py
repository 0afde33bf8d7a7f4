"""The operator's view of organizations and their keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.db.models import ApiKeyModel, OrganizationModel
from dockyard.errors import BadRequest, Conflict, NotFound
from dockyard.schemas.admin import ApiKey, CreatedApiKey, CreateKeyRequest, Organization
from dockyard.services import keys


def _org_wire(row: OrganizationModel) -> Organization:
    return Organization(id=row.id, name=row.name, created_at=row.created_at)


def _key_wire(row: ApiKeyModel) -> ApiKey:
    return ApiKey(
        id=row.id,
        org_id=row.org_id,
        member_id=row.member_id,
        name=row.name,
        prefix=row.prefix,
        is_admin=row.is_admin,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def create_org(session: AsyncSession, name: str) -> Organization:
    if await session.scalar(select(OrganizationModel.id).where(OrganizationModel.name == name)):
        raise Conflict(f"an organization named {name} exists already")
    org = await keys.get_or_create_org(session, name)
    await session.commit()
    return _org_wire(org)


async def list_orgs(session: AsyncSession) -> list[Organization]:
    rows = await session.scalars(select(OrganizationModel).order_by(OrganizationModel.name))
    return [_org_wire(row) for row in rows]


async def _org(session: AsyncSession, org_id: str) -> OrganizationModel:
    org = await session.get(OrganizationModel, org_id)
    if org is None:
        raise NotFound(f"organization {org_id} not found")
    return org


async def create_key(session: AsyncSession, org_id: str, request: CreateKeyRequest) -> CreatedApiKey:
    org = await _org(session, org_id)
    member = await keys.get_or_create_member(session, org, request.member)
    row, plaintext = await keys.create_key(session, org, member, name=request.name, is_admin=request.is_admin)
    await session.commit()
    return CreatedApiKey(**_key_wire(row).model_dump(), key=plaintext)


async def list_keys(session: AsyncSession, org_id: str) -> list[ApiKey]:
    await _org(session, org_id)
    rows = await session.scalars(
        select(ApiKeyModel).where(ApiKeyModel.org_id == org_id).order_by(ApiKeyModel.created_at)
    )
    return [_key_wire(row) for row in rows]


async def list_all_keys(session: AsyncSession, org_name: str | None = None) -> list[ApiKey]:
    """Every organization's keys (or those of the organization named `org_name`), revoked ones included, oldest
    first."""
    statement = select(ApiKeyModel).order_by(ApiKeyModel.created_at)
    if org_name is not None:
        org_id = await session.scalar(select(OrganizationModel.id).where(OrganizationModel.name == org_name))
        if org_id is None:
            raise NotFound(f"no organization named {org_name}; `dockyard admin orgs list` shows them")
        statement = statement.where(ApiKeyModel.org_id == org_id)
    return [_key_wire(row) for row in await session.scalars(statement)]


async def revoke_key(session: AsyncSession, key: str) -> ApiKey:
    """`dockyard admin keys revoke KEY`: KEY is a key's id, a unique beginning of it, or the first characters of the
    key that `keys list` shows. Running servers stop taking it within their key cache's lifetime."""
    if len(key) < 4:
        raise BadRequest(f"KEY {key!r} is too short to pick one key: give at least 4 characters of its id")
    rows = list(
        await session.scalars(
            select(ApiKeyModel).where(
                ApiKeyModel.revoked_at.is_(None),
                (ApiKeyModel.id == key) | ApiKeyModel.id.startswith(key, autoescape=True) | (ApiKeyModel.prefix == key),
            )
        )
    )
    rows = [row for row in rows if row.id == key] or rows
    if len(rows) > 1:
        raise Conflict(f"{key} matches {len(rows)} keys; give more of the id (`dockyard admin keys list`)")
    # None found: the stored key's own lookup says it is unknown, or revoked already.
    return _key_wire(await keys.revoke_stored_key(session, rows[0].id if rows else key))


async def create_key_for_org_name(
    session: AsyncSession, org_name: str, member: str = "default", *, is_admin: bool = False
) -> str:
    """`dockyard admin create-key --org NAME`: the organization is created when missing."""
    org = await keys.get_or_create_org(session, org_name)
    member_row = await keys.get_or_create_member(session, org, member)
    _, plaintext = await keys.create_key(session, org, member_row, name="cli", is_admin=is_admin)
    await session.commit()
    return plaintext
