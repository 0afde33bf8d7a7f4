"""GMI `/api/v1/containers`."""

from __future__ import annotations

from fastapi import APIRouter

from dockyard.schemas.common import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1/containers", tags=["containers"], responses=ERROR_RESPONSES)
