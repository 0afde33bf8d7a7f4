"""Registry auths: an organization's credentials for private image registries, which endpoints name by
`registry_auth_id`. The password is encrypted at rest and leaves only through `resolve`, for pulling images."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.callers import Principal
from dockyard.db.models import RegistryAuthModel
from dockyard.runtimes import base as runtime
from dockyard.schemas.registry_auths import CreateRegistryAuthRequest, RegistryAuth
from dockyard.secrets import SecretBox
from dockyard.services import idempotency
from dockyard.services.tenancy import owned_row


def _wire(row: RegistryAuthModel) -> RegistryAuth:
    return RegistryAuth(id=row.id, name=row.name, username=row.username, created_at=row.created_at)


async def get_row(session: AsyncSession, principal: Principal, auth_id: str) -> RegistryAuthModel:
    """The registry auth if it is this organization's; another organization's is as missing as a wrong id."""
    return await owned_row(
        session, principal, RegistryAuthModel, auth_id, "registry auth", "GET /gpus/v2/registry-auths"
    )


async def create(
    session: AsyncSession,
    principal: Principal,
    request: CreateRegistryAuthRequest,
    idempotency_key: str | None = None,
    *,
    box: SecretBox,
) -> idempotency.Answer:
    """Record the credentials (password encrypted) and answer `{"id"}`; once per Idempotency-Key."""

    async def add() -> dict[str, str]:
        row = RegistryAuthModel(
            org_id=principal.org_id,
            name=request.name,
            username=request.username,
            password=box.encrypt(request.password),
        )
        session.add(row)
        await session.flush()
        return {"id": row.id}

    # Only a digest of the body is kept (as for templates' credentials), so a retry with another password is
    # told apart without storing the password.
    body = request.model_dump(mode="json")
    operation = "POST /gpus/v2/registry-auths"
    answer = await idempotency.once(session, principal.org_id, idempotency_key, operation, body, add)
    await session.commit()
    return answer


async def get(session: AsyncSession, principal: Principal, auth_id: str) -> RegistryAuth:
    return _wire(await get_row(session, principal, auth_id))


async def list_all(session: AsyncSession, principal: Principal) -> list[RegistryAuth]:
    rows = await session.scalars(
        select(RegistryAuthModel)
        .where(RegistryAuthModel.org_id == principal.org_id)
        .order_by(RegistryAuthModel.created_at.desc(), RegistryAuthModel.id)
    )
    return [_wire(row) for row in rows]


async def delete(session: AsyncSession, principal: Principal, auth_id: str) -> None:
    await session.delete(await get_row(session, principal, auth_id))
    await session.commit()


async def resolve(session: AsyncSession, org_id: str, auth_id: str, *, box: SecretBox) -> runtime.RegistryAuth | None:
    """The organization's credentials with the password decrypted, for a runtime's image pull; None when the id
    is not one of the organization's (deleted since, or never its own)."""
    row = await session.get(RegistryAuthModel, auth_id)
    if row is None or row.org_id != org_id:
        return None
    return runtime.RegistryAuth(username=row.username, password=box.decrypt(row.password))
