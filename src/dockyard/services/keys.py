"""Organizations, members and API keys; authentication of a bearer token.

Keys are shown once at creation and stored as SHA-256 hashes. Lookups are cached for a few seconds by each
server (its context's `KeyCache`) so that authentication costs no database round trip on a hot path; revocation
waits out at most that cache lifetime on other servers and is immediate on the one that revoked.

A key's lookup is single-flight: when its entry expires, the first request looks it up and the others of that
moment are answered from the expired entry meanwhile (stale while revalidating), so an expiry under load costs
one query, not one per request in flight (at 512 concurrent gateway requests, 512 queries queued on the
database every cache lifetime, a multi-second stall). A key never seen waits for its one lookup, shared by
every request that brings it. A revocation forgets the cache and any lookup then in flight, so a lookup that
read the key before the revocation cannot put it back.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.config import new_token
from dockyard.context import ServerContext
from dockyard.core.callers import Principal
from dockyard.db.base import utcnow
from dockyard.db.models import ApiKeyModel, MemberModel, OrganizationModel
from dockyard.errors import Forbidden, NotFound, Unauthorized
from dockyard.secrets import hash_api_key

log = logging.getLogger(__name__)

KEY_PREFIX = "dy_"
_CACHE_SECONDS = 10.0


OPERATOR = Principal(org_id="", member_id="", key_id="operator", is_admin=True)


async def authenticate(context: ServerContext, token: str, *, allow_admin_token: bool = False) -> Principal:
    admin_token = context.settings.admin_token
    if allow_admin_token and admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return OPERATOR
    digest = hash_api_key(token)
    cache = context.keys
    cached = cache.entries.get(digest)
    if cached is not None and cached[0] > time.monotonic():
        principal = cached[1]
    else:
        key = (asyncio.get_running_loop(), digest)
        lookup = cache.lookups.get(key)
        if lookup is None:
            lookup = cache.lookups[key] = asyncio.create_task(_look_up(context, digest))
            lookup.add_done_callback(_log_failure)
        # An expired entry answers while its lookup runs; a key never seen waits for it (shielded: one request
        # leaving must not cancel the lookup the others share).
        principal = cached[1] if cached is not None else await asyncio.shield(lookup)
    if principal is None:
        raise Unauthorized("invalid API key; create one with 'dockyard admin create-key --org NAME'")
    return principal


async def authorize_metrics(context: ServerContext, authorization: str | None) -> None:
    """Let the caller read `/metrics`, or raise `Unauthorized` (401, with a `WWW-Authenticate` challenge) or
    `Forbidden`. The metrics name every organization's endpoints, so they are the operator's, as the Kubernetes
    API server's and Vault's are: read with `DOCKYARD_METRICS_TOKEN` (a scrape-only bearer token for Prometheus'
    `authorization` setting), the admin token, or an admin key."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    metrics_token = context.settings.metrics_token
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "/metrics needs 'Authorization: Bearer <token>' with DOCKYARD_METRICS_TOKEN, "
            "DOCKYARD_ADMIN_TOKEN or an admin key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if metrics_token and hmac.compare_digest(token.encode(), metrics_token.encode()):
        return
    principal = await authenticate(context, token, allow_admin_token=True)
    if not principal.is_admin:
        raise Forbidden("/metrics is the operator's: scrape it with DOCKYARD_METRICS_TOKEN or an admin key")


async def _look_up(context: ServerContext, digest: str) -> Principal | None:
    """Read the key's row, cache what it says (unless the cache was forgotten meanwhile) and return it."""
    key = (asyncio.get_running_loop(), digest)
    cache = context.keys
    try:
        async with context.db.read_session() as session:
            row = await session.scalar(
                select(ApiKeyModel).where(ApiKeyModel.key_hash == digest, ApiKeyModel.revoked_at.is_(None))
            )
        principal = (
            Principal(org_id=row.org_id, member_id=row.member_id, key_id=row.id, is_admin=row.is_admin) if row else None
        )
        if cache.lookups.get(key) is asyncio.current_task():
            cache.entries[digest] = (time.monotonic() + _CACHE_SECONDS, principal)
        return principal
    finally:
        if cache.lookups.get(key) is asyncio.current_task():
            del cache.lookups[key]


def _log_failure(lookup: asyncio.Task[Principal | None]) -> None:
    """A failed lookup that only stale answers were waiting on is logged here, not lost."""
    if not lookup.cancelled() and (error := lookup.exception()) is not None:
        log.warning("looking up an API key failed: %s", error)


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


async def revoke_stored_key(session: AsyncSession, key_id: str) -> ApiKeyModel:
    """Mark the key revoked and commit. Servers stop taking it once their cache entry of it expires
    (`_CACHE_SECONDS`); the one that revoked it at once (`revoke_key`)."""
    row = await session.get(ApiKeyModel, key_id)
    if row is None or row.revoked_at is not None:
        raise NotFound(f"API key {key_id} not found; `dockyard admin keys list` shows every key and its state")
    row.revoked_at = utcnow()
    await session.commit()
    return row


async def revoke_key(context: ServerContext, session: AsyncSession, key_id: str) -> None:
    await revoke_stored_key(session, key_id)
    context.keys.forget()
