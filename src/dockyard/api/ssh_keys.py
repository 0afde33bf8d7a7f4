"""GMI `/api/v1/ssh-keys` (ours)."""

from __future__ import annotations

from fastapi import APIRouter

from dockyard.schemas.common import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1/ssh-keys", tags=["ssh-keys"], responses=ERROR_RESPONSES)
