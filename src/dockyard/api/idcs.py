"""GMI `/api/v1/idcs`."""

from __future__ import annotations

from fastapi import APIRouter

from dockyard.schemas.common import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1/idcs", tags=["idcs"], responses=ERROR_RESPONSES)
