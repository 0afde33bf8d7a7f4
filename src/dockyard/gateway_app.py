"""`dockyard gateway`: the sync gateway in a process of its own, beside the server, to spread request load.

This is its composition root, as app.py is the server's: it builds the data plane (gateway/), the control parts that
keep its routing table (control/) and the planes' channel that joins them (core/planes.py). It serves the same
`GatewayApp` as the server does, at `/{endpoint_id}/...`, plus `/healthz` and `/metrics` (read as
the server's is, with the metrics token, the admin token or an admin key).
It never migrates nor writes desired state: the server owns the schema and every row. What it needs comes
from the database in the background, never on a request:
- the endpoints and workers to route to, every `gateway_sync_interval` (`RouteSync`), with its own prober
  pushing a starting worker ready the moment its health check answers;
- API keys, through the same short-lived cache the server uses.
Its load figures go the other way, to `gateway_reports` (`Reporter`), where the server's autoscaler and
reconciler read them: a request reaching an endpoint at zero workers is reported at once.

Point `DOCKYARD_GATEWAY_URL` at the gateways' address (a load balancer in front of several) so that the
endpoint URLs the API hands out lead there.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from dockyard import __version__
from dockyard.config import Settings, load_settings
from dockyard.context import ServerContext
from dockyard.control.prober import HealthProber
from dockyard.control.reports import Reporter
from dockyard.control.route_sync import RouteSync
from dockyard.control.slots import process_name, slot_broker
from dockyard.db.session import Database
from dockyard.errors import ApiError, error_body
from dockyard.gateway import metrics as gateway_metrics
from dockyard.gateway.proxy import GatewayApp
from dockyard.gateway.routes import RouteTable
from dockyard.logs import configure_logging
from dockyard.secrets import SecretBox
from dockyard.services import keys
from dockyard.serving.front import Front

log = logging.getLogger(__name__)


async def _recorded_elsewhere(*_: str) -> None:
    """The prober's callbacks: the server's reconciler records worker status; this process only routes."""


def create_gateway_app(settings: Settings | None = None) -> ASGIApp:
    settings = settings or load_settings()
    db = Database(settings.resolved_database_url)
    context = ServerContext(settings=settings, db=db, box=SecretBox(settings.resolved_secret_key))
    planes = context.planes
    routes = RouteTable(
        on_demand=planes.demand,
        leased_slots=settings.global_concurrency,
        on_slots_wanted=planes.slots_wanted,
        on_slot_freed=planes.slot_freed,
    )
    gateway_id = process_name()
    broker = slot_broker(context, routes, gateway_id)
    reporter = Reporter(db, routes, gateway_id, settings.gateway_report_interval)
    prober = HealthProber(routes, settings, on_ready=_recorded_elsewhere, on_unhealthy=_recorded_elsewhere)
    planes.subscribe(demand=reporter.demand, worker_unreachable=prober.recheck)
    sync = RouteSync(db, settings, routes, prober)
    gateway = GatewayApp(
        routes, partial(keys.org_of, context), context.registry, on_worker_error=planes.worker_unreachable
    )
    gateway_metrics.register(context.registry, routes)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__, "gateway": gateway_id, "endpoints": len(routes)})

    async def metrics(request: Request) -> Response:
        try:
            await keys.authorize_metrics(context, request.headers.get("authorization"))
        except ApiError as exc:
            return JSONResponse(error_body(exc.status_code, exc.message), exc.status_code, headers=exc.headers)
        return Response(generate_latest(context.registry), media_type=CONTENT_TYPE_LATEST)

    async def unknown(request: Request) -> JSONResponse:
        endpoint_id = request.path_params["path"].split("/", 1)[0]
        message = f"no endpoint {endpoint_id} here; GET /gpus/v2/endpoints on the server lists yours"
        return JSONResponse(error_body(404, message, reason="NOT_FOUND"), status_code=404)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sync.sync_once()
        sync.start()
        reporter.start()
        if broker is not None:
            broker.start()
        log.info("dockyard gateway %s serving %d endpoint(s)", gateway_id, len(routes))
        try:
            yield
        finally:
            await sync.stop()
            await reporter.stop()
            if broker is not None:
                await broker.stop()
            await prober.close()
            await db.dispose()

    api = Starlette(
        routes=[Route("/healthz", healthz), Route("/metrics", metrics), Route("/{path:path}", unknown, methods=None)],
        lifespan=lifespan,
    )
    return Front(api, gateway, routes, freeze_gc=settings.gc_freeze)


def create_gateway_app_from_env() -> ASGIApp:
    """uvicorn's factory entry point for `dockyard gateway`."""
    settings = load_settings()
    configure_logging(settings)
    return create_gateway_app(settings)
