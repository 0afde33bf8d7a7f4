"""GMI `/api/v1/templates`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from dockyard.api.deps import ContextDep, IdempotencyKeyDep, PrincipalDep, ReadSessionDep, WriteSessionDep, answered
from dockyard.schemas.common import ERROR_RESPONSES, IdResponse, Page
from dockyard.schemas.templates import CreateTemplateRequest, Template, UpdateTemplateRequest
from dockyard.services import templates as service

router = APIRouter(prefix="/api/v1/templates", tags=["templates"], responses=ERROR_RESPONSES)

TemplateId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post("", response_model=IdResponse, status_code=200, summary="Create a template")
async def create_template(
    body: CreateTemplateRequest,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    """Records an image with its defaults (command, args, env, ports, registry credentials) and answers its id.
    Secret values are encrypted at rest and answered masked."""
    return answered(await service.create(session, principal, body, idempotency_key, box=context.box))


@router.get("", response_model=Page[Template], summary="List templates")
async def list_templates(
    context: ContextDep,
    principal: PrincipalDep,
    session: ReadSessionDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=1000)] = 50,
) -> Page[Template]:
    """Your organization's templates, a page at a time, newest first."""
    return await service.list_page(session, principal, page=page, page_size=page_size, box=context.box)


@router.get("/{template_id}", response_model=Template, summary="Get a template")
async def get_template(
    template_id: TemplateId, context: ContextDep, principal: PrincipalDep, session: ReadSessionDep
) -> Template:
    """One template, its secret values masked; 404 when it is not one of your organization's."""
    return await service.get(session, principal, template_id, box=context.box)


@router.put("/{template_id}", response_model=Template, summary="Replace a template")
async def update_template(
    template_id: TemplateId,
    body: UpdateTemplateRequest,
    context: ContextDep,
    principal: PrincipalDep,
    session: WriteSessionDep,
) -> Template:
    """Replaces the template's fields with the body's (the same checks as a create)."""
    return await service.update(session, principal, template_id, body, box=context.box)


@router.delete("/{template_id}", response_model=dict[str, str], summary="Delete a template")
async def delete_template(template_id: TemplateId, principal: PrincipalDep, session: WriteSessionDep) -> dict[str, str]:
    """Removes the template; 404 when it is not one of your organization's."""
    await service.delete(session, principal, template_id)
    return {}
