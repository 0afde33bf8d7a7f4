"""GMI `/api/v1/containers/products` and PPIO `/gpus/v2/products`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from dockyard.api.deps import PrincipalDep, ReadSessionDep
from dockyard.core.status import ProductCategory
from dockyard.schemas.common import ERROR_RESPONSES
from dockyard.schemas.containers import ID_PATTERN
from dockyard.schemas.products import PpioProductList, ProductInfo
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
    """The products a container may run as, per IDC: GPU model and count, CPUs, memory, price per hour, and
    `valid`, whether it can be ordered there now."""
    return await service.list_products(session, idc)


@router.get("/gpus/v2/products", response_model=PpioProductList, summary="List products (PPIO)")
async def list_ppio_products(
    _: PrincipalDep,
    session: ReadSessionDep,
    category: Annotated[ProductCategory | None, Query(description="only this category's")] = None,
    region_ids: Annotated[
        str | None, Query(max_length=1024, description="comma-separated region ids: only these regions'")
    ] = None,
) -> PpioProductList:
    """The products in PPIO's shape, instance and serverless (for endpoints), optionally only one category's or
    some regions'."""
    return PpioProductList(data=await service.list_ppio_products(session, category, region_ids))
