"""Liveness, without a key, and Prometheus metrics, the operator's (`keys.authorize_metrics`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from dockyard import __version__
from dockyard.api.deps import ContextDep
from dockyard.services import keys

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the server answers and its database does")
async def healthz(context: ContextDep) -> dict[str, str]:
    async with context.db.read_session() as session:
        await session.execute(text("SELECT 1"))
    return {"status": "ok", "version": __version__}


@router.get(
    "/metrics",
    summary="Prometheus metrics, with DOCKYARD_METRICS_TOKEN, the admin token or an admin key",
    response_class=Response,
)
async def metrics(context: ContextDep, authorization: Annotated[str | None, Header()] = None) -> Response:
    await keys.authorize_metrics(context, authorization)
    return Response(generate_latest(context.registry), media_type=CONTENT_TYPE_LATEST)
