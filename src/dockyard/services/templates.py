"""Templates: an organization's images with their defaults. Containers copy the spec at creation, so
changing or deleting a template never changes a running container."""

from __future__ import annotations

import shlex

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.callers import Principal
from dockyard.core.workload import WorkloadSpec
from dockyard.db.models import TemplateModel
from dockyard.schemas.common import Page
from dockyard.schemas.templates import CreateTemplateRequest, Template, TemplateCredential
from dockyard.secrets import SecretBox, mask
from dockyard.services import idempotency
from dockyard.services.tenancy import owned_row
from dockyard.services.workloads import (
    encrypt_credential,
    encrypt_envs,
    gmi_envs_in,
    gmi_envs_out,
    gmi_ports_in,
    gmi_ports_out,
    split_command,
)


def _spec(request: CreateTemplateRequest, previous: WorkloadSpec | None, box: SecretBox) -> WorkloadSpec:
    credential = None
    if request.credential is not None:
        credential = encrypt_credential(
            request.credential.username,
            request.credential.secret,
            previous.credential if previous else None,
            box=box,
        )
    return WorkloadSpec(
        image=request.path,
        credential=credential,
        command=split_command(request.command),
        args=list(request.args),
        envs=encrypt_envs(gmi_envs_in(request.envs), previous.envs if previous else (), box=box),
        ports=gmi_ports_in(request.ports),
    )


def to_wire(row: TemplateModel, box: SecretBox) -> Template:
    spec = WorkloadSpec.model_validate(row.spec)
    credential = None
    if spec.credential is not None:
        credential = TemplateCredential(
            username=spec.credential.username, secret=mask(box.decrypt(spec.credential.secret))
        )
    return Template(
        id=row.id,
        name=row.name,
        path=spec.image,
        credential=credential,
        command=shlex.join(spec.command),
        args=spec.args,
        envs=gmi_envs_out(spec.envs, box=box),
        ports=gmi_ports_out(spec.ports),
        org_id=row.org_id,
        created_at=row.created_at,
        modified_at=row.modified_at,
    )


async def get_row(session: AsyncSession, principal: Principal, template_id: str) -> TemplateModel:
    """The template if it is this organization's; another organization's is as missing as a wrong id."""
    return await owned_row(session, principal, TemplateModel, template_id, "template", "GET /api/v1/templates")


async def create(
    session: AsyncSession,
    principal: Principal,
    request: CreateTemplateRequest,
    idempotency_key: str | None = None,
    *,
    box: SecretBox,
) -> idempotency.Answer:
    """Record the template and answer `{"id"}`; once per Idempotency-Key."""

    async def add() -> dict[str, str]:
        row = TemplateModel(
            org_id=principal.org_id,
            member_id=principal.member_id,
            name=request.name,
            spec=_spec(request, None, box).model_dump(mode="json"),
        )
        session.add(row)
        await session.flush()
        return {"id": row.id}

    body = request.model_dump(mode="json", by_alias=True)
    answer = await idempotency.once(session, principal.org_id, idempotency_key, "POST /api/v1/templates", body, add)
    await session.commit()
    return answer


async def update(
    session: AsyncSession, principal: Principal, template_id: str, request: CreateTemplateRequest, *, box: SecretBox
) -> Template:
    row = await get_row(session, principal, template_id)
    row.name = request.name
    row.spec = _spec(request, WorkloadSpec.model_validate(row.spec), box).model_dump(mode="json")
    await session.commit()
    return to_wire(row, box)


async def delete(session: AsyncSession, principal: Principal, template_id: str) -> None:
    row = await get_row(session, principal, template_id)
    await session.delete(row)
    await session.commit()


async def get(session: AsyncSession, principal: Principal, template_id: str, *, box: SecretBox) -> Template:
    return to_wire(await get_row(session, principal, template_id), box)


async def list_page(
    session: AsyncSession, principal: Principal, *, page: int, page_size: int, box: SecretBox
) -> Page[Template]:
    where = TemplateModel.org_id == principal.org_id
    total = await session.scalar(select(func.count()).select_from(TemplateModel).where(where)) or 0
    rows = await session.scalars(
        select(TemplateModel)
        .where(where)
        .order_by(TemplateModel.created_at.desc(), TemplateModel.id)
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    return Page[Template](items=[to_wire(row, box) for row in rows], total=total, page=page, page_size=page_size)
