"""`dockyard gateway`: the sync gateway in a process of its own, beside the server, to spread request load.

This is its composition root, as app.py is the server's: it builds the data plane (gateway/), the control parts that
keep its routing table (control/) and the planes' channel that joins them (core/planes.py). It serves the same
`GatewayApp` as the server does, at `/{endpoint_id}/...`, plus `/healthz` and `/metrics` (read as
the server's is, with the metrics token, the admin token or an admin key).
It never migrates nor writes desired state: the server owns the schema and every row. What it needs comes
from the database in the background, never on a request:
- the endpoints and workers to route to (`Follower`, control/follower.py, as a server that does not hold the
  control lease does): read at once when the bus (PostgreSQL's LISTEN/NOTIFY, db/notify.py) says they changed
  and every `gateway_sync_interval` anyway, with its own prober pushing a starting worker ready the moment its
  health check answers;
- API keys, through the same short-lived cache the server uses.
Its load figures go the other way, to `gateway_reports`, where the server's autoscaler and reconciler read them:
a request reaching an endpoint at zero workers is reported at once and announced on the bus. It keeps its row in
`processes` (services/processes.py) and drains on SIGTERM as the server does (core/drain.py).

Point `DOCKYARD_GATEWAY_URL` at the gateways' address (a load balancer in front of several) so that the
endpoint URLs the API hands out lead there.
"""

from __future__ import annotations

import contextlib
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
from dockyard.control.follower import Follower
from dockyard.control.slots import slot_broker
from dockyard.core.drain import Drain
from dockyard.core.status import ProcessKind
from dockyard.db.notify import PostgresBus, bus_for
from dockyard.db.session import Database
from dockyard.errors import ApiError, error_body
from dockyard.gateway import metrics as gateway_metrics
from dockyard.gateway.proxy import GatewayApp
from dockyard.gateway.routes import RouteTable
from dockyard.logs import configure_logging
from dockyard.secrets import SecretBox
from dockyard.services import keys
from dockyard.services.processes import ProcessRecord
from dockyard.serving.front import Front

log = logging.getLogger(__name__)


def create_gateway_app(settings: Settings | None = None) -> ASGIApp:
    settings = settings or load_settings()
    db = Database(settings.resolved_database_url)
    bus = bus_for(db.url)
    context = ServerContext(settings=settings, db=db, box=SecretBox(settings.resolved_secret_key), bus=bus)
    planes = context.planes
    routes = RouteTable(
        on_demand=planes.demand,
        leased_slots=settings.global_concurrency,
        on_slots_wanted=planes.slots_wanted,
        on_slot_freed=planes.slot_freed,
    )
    process = ProcessRecord(db, ProcessKind.GATEWAY, f"{settings.host}:{settings.port}", settings.lease_seconds)
    drain = Drain(process.drain)
    gateway_id = process.id
    follower = Follower(context, routes, gateway_id)
    broker = slot_broker(context, routes, gateway_id)
    gateway = GatewayApp(
        routes, partial(keys.org_of, context), context.registry, on_worker_error=planes.worker_unreachable
    )
    gateway_metrics.register(context.registry, routes)

    async def healthz(request: Request) -> JSONResponse:
        if drain.draining:
            return JSONResponse({"status": "draining", "version": __version__, "gateway": gateway_id}, 503)
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
        if isinstance(bus, PostgresBus):
            await bus.start()
        await follower.start()
        if broker is not None:
            broker.start()
        await process.register()
        process.start()
        drain.install()
        log.info("dockyard gateway %s serving %d endpoint(s)", gateway_id, len(routes))
        try:
            yield
        finally:
            drain.uninstall()
            await drain.wait()
            await process.stop()
            with contextlib.suppress(Exception):
                await process.remove()
            await follower.stop()
            if broker is not None:
                await broker.stop()
            if isinstance(bus, PostgresBus):
                await bus.close()
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
