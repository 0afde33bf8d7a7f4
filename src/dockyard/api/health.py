"""Liveness (`/healthz`), without a key, and Prometheus metrics, the operator's (`keys.authorize_metrics`)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from dockyard import __version__
from dockyard.api.deps import ContextDep
from dockyard.services import idcs, keys

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="Liveness: 200 while the server and its database answer (`degraded` with reasons when an IDC's runtime "
    "cannot be reached), 503 when the database cannot be or the server is draining",
)
async def healthz(context: ContextDep) -> JSONResponse:
    """An unreachable container runtime leaves this 200: restarting the server (a Kubernetes liveness probe) or
    taking it out of a load balancer would not bring the engine back, and the API, the gateway and the job queues
    still serve; `degraded` and the reasons are for monitoring. Without its database the server can serve nothing,
    so that is 503; so is a server draining after SIGTERM (`draining`), so that a load balancer takes it out."""
    if context.drain.draining:
        body = {"status": "draining", "version": __version__, "reasons": ["the server is shutting down"]}
        return JSONResponse(body, status_code=503)
    try:
        async with context.db.read_session() as session:
            problems = await idcs.health_problems(session)
    except (SQLAlchemyError, OSError) as exc:  # a driver's refused connection may surface as a bare OSError
        log.warning("healthz: the database cannot be reached (%s)", type(exc).__name__)
        body = {"status": "unavailable", "version": __version__, "reasons": ["the database cannot be reached"]}
        return JSONResponse(body, status_code=503)
    status = "degraded" if problems else "ok"
    return JSONResponse({"status": status, "version": __version__, "reasons": problems})


@router.get(
    "/metrics",
    summary="Prometheus metrics, with DOCKYARD_METRICS_TOKEN, the admin token or an admin key",
    response_class=Response,
)
async def metrics(context: ContextDep, authorization: Annotated[str | None, Header()] = None) -> Response:
    """The server's Prometheus metrics (requests, gateway queues and workers, reconcile loops, jobs). It names
    every organization's endpoints, so it answers only the operator's credentials: 401 without, 403 with an
    ordinary API key."""
    await keys.authorize_metrics(context, authorization)
    return Response(generate_latest(context.registry), media_type=CONTENT_TYPE_LATEST)
