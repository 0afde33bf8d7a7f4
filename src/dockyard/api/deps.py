"""Typed dependency aliases shared by every router (the FastAPI full-stack template's pattern)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.context import ServerContext
from dockyard.core.callers import Principal, presented_key
from dockyard.errors import Forbidden, Unauthorized
from dockyard.services.idempotency import Answer
from dockyard.services.keys import authenticate


async def get_context(request: Request) -> ServerContext:
    # Async although it awaits nothing: FastAPI runs a plain function dependency in its thread pool, a thread
    # hop on every request for what is an attribute read.
    context: ServerContext = request.app.state.context
    return context


ContextDep = Annotated[ServerContext, Depends(get_context)]


async def get_read_session(context: ContextDep) -> AsyncIterator[AsyncSession]:
    async with context.db.read_session() as session:
        yield session


async def get_write_session(context: ContextDep) -> AsyncIterator[AsyncSession]:
    """A session whose first statement takes the write lock (SQLite); services commit it themselves."""
    async with context.db.write_session() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]
WriteSessionDep = Annotated[AsyncSession, Depends(get_write_session)]


def bearer_token(authorization: str | None) -> str:
    """The key of `Authorization` (`core.callers.presented_key`: Bearer or bare); 401 when it carries none."""
    if not authorization:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <api key>'")
    token = presented_key(authorization)
    if token is None:
        raise Unauthorized("malformed Authorization header; send 'Authorization: Bearer <api key>'")
    return token


async def get_principal(context: ContextDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    return await authenticate(context, bearer_token(authorization))


async def get_admin(context: ContextDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    token = bearer_token(authorization)
    principal = await authenticate(context, token, allow_admin_token=True)
    if not principal.is_admin:
        raise Forbidden("this route is for the operator: use an admin key or DOCKYARD_ADMIN_TOKEN")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]


IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="replaying the same body with the same key within 24 h answers the first answer again",
    ),
]


def answered(answer: Answer) -> JSONResponse:
    """A write's answer on the wire; a replay of a stored one says so in `Idempotent-Replayed`."""
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)
