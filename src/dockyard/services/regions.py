"""Regions: PPIO's name for IDCs, with the same computed status as GMI's IDC list."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.schemas.regions import Region
from dockyard.services.idcs import list_idcs


async def list_regions(session: AsyncSession) -> list[Region]:
    return [
        Region(id=idc.idc_id, name=idc.name, country=idc.country, status=idc.status) for idc in await list_idcs(session)
    ]
