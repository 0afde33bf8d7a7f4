"""GMI `/api/v1/containers/products`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from dockyard.api.deps import PrincipalDep, ReadSessionDep
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.containers import ID_PATTERN
from dockyard.schemas.products import ProductInfo
from dockyard.services import products as service

router = APIRouter(tags=["products"], responses=ERROR_RESPONSES)


@router.get("/api/v1/containers/products", response_model=list[ProductInfo], summary="List container products")
async def list_products(
    _: PrincipalDep,
    session: ReadSessionDep,
    idc: Annotated[
        str | None, Query(min_length=1, max_length=50, pattern=ID_PATTERN, description="only this IDC's")
    ] = None,
) -> list[ProductInfo]:
    return await service.list_products(session, idc)
