"""The one rule of tenancy for every organization-owned object: another organization's object is as missing
as a wrong id (404, never 403), so that existence does not leak across organizations."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.callers import Principal
from dockyard.errors import NotFound

RowT = TypeVar("RowT")


async def owned_row(
    session: AsyncSession, principal: Principal, model: type[RowT], object_id: str, noun: str, listing: str
) -> RowT:
    """The row `object_id` of `model` if the caller's organization owns it; else NotFound naming `noun` and
    the route (`listing`) that lists the caller's own."""
    row: Any = await session.get(model, object_id)
    if row is None or row.org_id != principal.org_id:
        raise NotFound(f"{noun} {object_id} not found; {listing} lists yours")
    return row  # type: ignore[no-any-return]
