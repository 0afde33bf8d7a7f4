"""Liveness and Prometheus metrics; neither needs a key."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from dockyard import __version__
from dockyard.api.deps import ContextDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the server answers and its database does")
async def healthz(context: ContextDep) -> dict[str, str]:
    async with context.db.read_session() as session:
        await session.execute(text("SELECT 1"))
    return {"status": "ok", "version": __version__}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(context: ContextDep) -> Response:
    return Response(generate_latest(context.registry), media_type=CONTENT_TYPE_LATEST)
