"""GMI `/api/v1/containers/products`."""

from __future__ import annotations

from fastapi import APIRouter

from dockyard.schemas.common import ERROR_RESPONSES

router = APIRouter(tags=["products"], responses=ERROR_RESPONSES)
