"""The server's composition root: the FastAPI application (routers, error handlers, middleware), the data plane
in front of it (the gateway, its routing table and the serving front), the control plane's loops, the planes'
channel that joins them, and the lifespan that migrates the database, connects the runtimes and runs the loops."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from starlette.types import ASGIApp, Receive, Scope, Send

from dockyard import __version__
from dockyard.api import (
    admin,
    containers,
    endpoint_logs,
    endpoint_workers,
    endpoints,
    health,
    idcs,
    jobs,
    network_storages,
    products,
    quotas,
    regions,
    registry_auths,
    ssh_keys,
    templates,
    worker_webhooks,
)
from dockyard.api.jobs_lean import LeanJobs
from dockyard.config import Settings, load_settings
from dockyard.context import ServerContext
from dockyard.control.autoscaler import Autoscaler
from dockyard.control.follower import Follower
from dockyard.control.slots import slot_broker
from dockyard.core.drain import Drain
from dockyard.core.status import ProcessKind
from dockyard.db.migrate import migrate
from dockyard.db.models import IdcModel
from dockyard.db.notify import PostgresBus, bus_for
from dockyard.db.session import Database
from dockyard.errors import error_response, install_error_handlers
from dockyard.gateway import metrics as gateway_metrics
from dockyard.gateway.proxy import GatewayApp
from dockyard.gateway.routes import RouteTable
from dockyard.gpus.health import NvmlHealth
from dockyard.logs import add_secrets, configure_logging
from dockyard.middleware import BodyLimitMiddleware, JsonDepthMiddleware, MetricsMiddleware
from dockyard.openapi import install_docs
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.reconcilers.gpu_health import GpuHealthLoop
from dockyard.reconcilers.job_webhooks import WebhookDeliveries
from dockyard.reconcilers.jobs import JobReaper
from dockyard.reconcilers.network_storages import NetworkStorageReconciler
from dockyard.reconcilers.supervisor import Loop, Supervisor
from dockyard.runtimes.base import Runtime
from dockyard.runtimes.factory import build_runtime
from dockyard.secrets import SecretBox
from dockyard.services import keys
from dockyard.services.bootstrap import bootstrap, local_node_id
from dockyard.services.processes import ProcessRecord
from dockyard.serving.front import Front, server_front

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[IdcModel, ServerContext], Runtime]

DESCRIPTION = """
Dockyard serves several API families on one server, each wire-compatible with the platform it comes from:

* **Serverless endpoints** (`/gpus/v2`): PPIO's GPU API v2, snake_case, unix-second timestamps.
* **Sync endpoints' calls** (`/{endpoint_id}/{path}`): the gateway, which proxies any method to a worker.
* **Async endpoints' jobs** (`/v1/{endpoint_id}/...`, `/v2/{endpoint_id}/...`): the `ppio-gpus` and `runpod`
  clients' job API; their workers call the webhooks under `/gpus/v2/workers` with their own keys.
* **GPU containers** (`/api/v1`): GMI Cloud's Cluster Engine API, camelCase, RFC 3339 timestamps.
* **Operator** (`/admin/v1`): organizations, keys, quotas, IDCs, products, nodes and GPUs.

Authenticate with `Authorization: Bearer <api key>` (**Authorize** above takes it; each route names the key it
needs). Every error has the body `{"code", "reason", "message", "details"}`; validation errors name the field.
"""


def build_loops(context: ServerContext, routes: RouteTable) -> list[Loop]:
    """The reconcile loops this server runs while it holds the lease; `routes` is its gateway's table. The
    autoscaler and the endpoint reconciler's prober listen on the planes' channel until they are closed: for a
    request that found no ready worker, and for a worker the proxy could not reach."""
    return [
        ContainerReconciler(context),
        NetworkStorageReconciler(context),
        EndpointReconciler(context, routes),
        Autoscaler(context, routes),
        JobReaper(context),
        WebhookDeliveries(context),
        GpuHealthLoop(context, local_node_id(), NvmlHealth()),
    ]


class Role:
    """What this server runs beside its gateway for its role (`Supervisor`'s `on_role`): as a follower, a
    `Follower` (control/follower.py) made by `follower`, so its table is fed and its load reaches the leader; as the
    leader, nothing, since its loops feed the table."""

    def __init__(self, follower: Callable[[], Follower]) -> None:
        self.follower = follower
        self._running: Follower | None = None

    async def switch(self, leading: bool) -> None:
        if leading:
            await self.stop()
        elif self._running is None:
            follower = self.follower()
            try:
                await follower.start()
            except BaseException:
                await follower.stop()
                raise
            self._running = follower

    async def stop(self) -> None:
        """Stop the follower's parts, if they run."""
        running, self._running = self._running, None
        if running is not None:
            await running.stop()


async def _on_stale(_: object, exc: Exception) -> object:
    return error_response(
        409,
        "the object changed while this request was updating it; read it again and retry",
        reason="CONFLICT",
    )


async def _on_integrity(_: object, exc: Exception) -> object:
    return error_response(409, "this would conflict with an existing object", reason="CONFLICT")


class DockyardApp(FastAPI):
    """The API, with the sync gateway in front of all of it: `front` (serving/front.py) sends an endpoint's
    traffic to the gateway before FastAPI's own per-request work (its middleware stack, its telemetry checks),
    and everything else towards `serve_api`, FastAPI itself (through `LeanJobs`, api/jobs_lean.py, which serves
    the job API's `run` and `status` itself, while the `lean_job_routes` setting is on)."""

    def __init__(self, front: Callable[[ASGIApp], Front], **options: Any) -> None:
        """`front(serve_api)` builds the front over this app's FastAPI; `options` are FastAPI's."""
        super().__init__(**options)
        self.front = front(self.serve_api)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def serve_api(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, runtime_factory: RuntimeFactory | None = None) -> DockyardApp:
    """Build the application. `runtime_factory` replaces the real runtimes (tests give an in-memory one)."""
    settings = settings or load_settings()
    add_secrets(settings.resolved_secret_key, *settings.log_secrets())
    db = Database(settings.resolved_database_url)
    registry = CollectorRegistry()
    bus = bus_for(db.url)
    process = ProcessRecord(db, ProcessKind.SERVER, f"{settings.host}:{settings.port}", settings.lease_seconds)

    def follower() -> Follower:  # called once the server runs, when everything below is built
        return Follower(context, routes, supervisor.holder)

    role = Role(follower)
    supervisor = Supervisor(db, registry, lease_seconds=settings.lease_seconds, process=process, on_role=role.switch)

    async def release() -> None:
        """On SIGTERM: the lease goes at once, and the row, marked draining, is heartbeaten until the end."""
        await supervisor.stop()
        process.start()

    drain = Drain(process.drain, release)
    context = ServerContext(
        settings=settings,
        db=db,
        box=SecretBox(settings.resolved_secret_key),
        registry=registry,
        waker=supervisor.wake,
        runtime_factory=runtime_factory or (lambda idc, ctx: build_runtime(idc, ctx.settings, ctx.installation_id)),
        drain=drain,
        bus=bus,
    )
    routes = RouteTable(
        on_demand=context.planes.demand,
        leased_slots=settings.global_concurrency,
        on_slots_wanted=context.planes.slots_wanted,
        on_slot_freed=context.planes.slot_freed,
    )
    context.planes.subscribe(endpoint_changed=routes.upsert)
    broker = slot_broker(context, routes, process.id)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_id = ""

        async def _bootstrap() -> None:
            nonlocal install_id
            install_id = await bootstrap(db, settings)

        await migrate(db.url, after=_bootstrap)
        context.installation_id = install_id
        if isinstance(bus, PostgresBus):
            await bus.start()
        async with db.read() as session:
            for idc in await session.scalars(select(IdcModel)):
                context.attach_runtime(idc)
        await process.register()
        if broker is not None:
            broker.start()
        if settings.run_reconcilers:
            # Every server starts as a follower, its table read from the database before it serves a request: a
            # server restarted beside a leader would otherwise answer 404 for every endpoint until its first try
            # for the lease, and one that takes the lease until its endpoint loop's first pass.
            await role.switch(False)
            await supervisor.start(build_loops(context, routes))
        else:
            process.start()
        drain.install()
        log.info("dockyard %s serving on %s (installation %s)", __version__, settings.masked_database_url, install_id)
        try:
            yield
        finally:
            drain.uninstall()
            await drain.wait()
            await supervisor.stop()
            await role.stop()
            if broker is not None:
                await broker.stop()
            await process.stop()
            with contextlib.suppress(Exception):
                await process.remove()
            if isinstance(bus, PostgresBus):
                await bus.close()
            for runtime in context.runtimes.values():
                await runtime.close()
            await db.dispose()

    gateway = GatewayApp(
        routes, partial(keys.org_of, context), context.registry, on_worker_error=context.planes.worker_unreachable
    )
    app = DockyardApp(
        partial(
            server_front,
            gateway=gateway,
            routes=routes,
            settings=settings,
            lean_jobs=partial(LeanJobs, context=context),
        ),
        title="Dockyard",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: openapi.install_docs serves them offline
        redoc_url=None,
    )
    app.state.context = context
    install_docs(app)
    gateway_metrics.register(context.registry, routes)
    install_error_handlers(app)
    app.add_exception_handler(StaleDataError, _on_stale)  # type: ignore[arg-type]
    app.add_exception_handler(IntegrityError, _on_integrity)  # type: ignore[arg-type]
    # products before containers: `/api/v1/containers/products` must not be taken for a container id.
    # Starlette tries routes in order, one regular expression each: the job API and the workers' webhooks, the
    # routes called thousands of times a second, go first (their first segments, `/v1`, `/v2` and
    # `/gpus/v2/workers`, are no other route's).
    for router in (
        jobs.router,
        worker_webhooks.router,
        health.router,
        admin.router,
        templates.router,
        products.router,
        containers.router,
        ssh_keys.router,
        idcs.router,
        network_storages.router,
        registry_auths.router,
        regions.router,
        quotas.router,
        endpoints.router,
        endpoint_workers.router,
        endpoint_logs.router,
    ):
        app.include_router(router)
    app.add_middleware(JsonDepthMiddleware)  # inside the size bound: it holds what it checks
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, registry=context.registry)
    return app


def create_app_from_env() -> DockyardApp:
    """uvicorn's factory entry point: settings from the environment and the config file."""
    settings = load_settings()
    configure_logging(settings)
    return create_app(settings)
