"""Organizations, members and API keys; authentication of a bearer token.

Keys are shown once at creation and stored as SHA-256 hashes. Lookups are cached for a few seconds per
process so that authentication costs no database round trip on a hot path; revocation waits out at most
that cache lifetime on other servers and is immediate on the one that revoked.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.config import new_token
from dockyard.context import ServerContext
from dockyard.db.base import utcnow
from dockyard.db.models import ApiKeyModel, MemberModel, OrganizationModel
from dockyard.errors import NotFound, Unauthorized
from dockyard.secrets import hash_api_key

KEY_PREFIX = "dy_"
_CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class Principal:
    """Who is calling: an organization's member through one of its keys, or the operator."""

    org_id: str
    member_id: str
    key_id: str
    is_admin: bool = False


OPERATOR = Principal(org_id="", member_id="", key_id="operator", is_admin=True)

_cache: dict[str, tuple[float, Principal | None]] = {}


def forget_cached_keys() -> None:
    _cache.clear()


async def authenticate(context: ServerContext, token: str, *, allow_admin_token: bool = False) -> Principal:
    admin_token = context.settings.admin_token
    if allow_admin_token and admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return OPERATOR
    digest = hash_api_key(token)
    now = time.monotonic()
    cached = _cache.get(digest)
    if cached is not None and cached[0] > now:
        principal = cached[1]
    else:
        async with context.db.read_session() as session:
            row = await session.scalar(
                select(ApiKeyModel).where(ApiKeyModel.key_hash == digest, ApiKeyModel.revoked_at.is_(None))
            )
        principal = (
            Principal(org_id=row.org_id, member_id=row.member_id, key_id=row.id, is_admin=row.is_admin) if row else None
        )
        _cache[digest] = (now + _CACHE_SECONDS, principal)
    if principal is None:
        raise Unauthorized("invalid API key; create one with 'dockyard admin create-key --org NAME'")
    return principal


async def org_of(context: ServerContext, token: str) -> str | None:
    """The organization of an API key, or None when it is not a valid key (the gateway's check: from the
    cache above, so a request pays a database round trip at most once per key per cache lifetime)."""
    try:
        return (await authenticate(context, token)).org_id
    except Unauthorized:
        return None


async def get_or_create_org(session: AsyncSession, name: str) -> OrganizationModel:
    org = await session.scalar(select(OrganizationModel).where(OrganizationModel.name == name))
    if org is None:
        org = OrganizationModel(name=name)
        session.add(org)
        await session.flush()
    return org


async def get_or_create_member(session: AsyncSession, org: OrganizationModel, name: str) -> MemberModel:
    member = await session.scalar(select(MemberModel).where(MemberModel.org_id == org.id, MemberModel.name == name))
    if member is None:
        member = MemberModel(org_id=org.id, name=name)
        session.add(member)
        await session.flush()
    return member


async def create_key(
    session: AsyncSession,
    org: OrganizationModel,
    member: MemberModel,
    *,
    name: str = "",
    is_admin: bool = False,
) -> tuple[ApiKeyModel, str]:
    """A new key for `member`; returns the row and the plaintext, which is never stored or shown again."""
    plaintext = KEY_PREFIX + new_token(24)
    row = ApiKeyModel(
        org_id=org.id,
        member_id=member.id,
        name=name,
        prefix=plaintext[:10],
        key_hash=hash_api_key(plaintext),
        is_admin=is_admin,
    )
    session.add(row)
    await session.flush()
    return row, plaintext


async def revoke_key(session: AsyncSession, key_id: str) -> None:
    row = await session.get(ApiKeyModel, key_id)
    if row is None or row.revoked_at is not None:
        raise NotFound(f"API key {key_id} not found")
    row.revoked_at = utcnow()
    await session.commit()
    forget_cached_keys()
