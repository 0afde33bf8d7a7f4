"""The servers' outermost ASGI app: endpoint traffic to the sync gateway, everything else to the API.

The gateway shares the server's port, so an endpoint's URL is `{public_url}/{endpoint_id}/...`. `Front` looks at
the first path segment of each HTTP request: when it is shaped like an endpoint id (a UUID), the request goes to
the `GatewayApp` untouched (no API middleware, no FastAPI routing on the hot path); any other path, and every
websocket and lifespan event, goes to the API app: in the server, `server_front`'s choice, api/jobs_lean.py's
`LeanJobs` over FastAPI (the job API's `run` and `status` skip FastAPI the same way) unless the `lean_job_routes`
setting is off; in a stand-alone gateway, its own few routes. The two never collide: endpoint ids are
UUIDs, and the API's paths start with fixed words (`/gpus`, `/api`, `/admin`, `/metrics`, `/healthz`, `/docs`,
...). An id that is not in the table (a mistyped or deleted endpoint, or one that never was) goes to the gateway
too, which answers it exactly as it answers another organization's endpoint: which ids exist does not leak.

The lifespan goes to the API app as it is. When the API reports its startup complete, `Front` freezes the garbage
collector's view of every object made so far (`gc.freeze()`, unless `freeze_gc` is off: the `gc_freeze` setting):
the app, its imports and its caches live as long as the process, and without the freeze each full collection walks
all of them, a pause seen under load as the gateway's p99 (bench/RESULTS.md, "Garbage collection under load"). When
the API reports its shutdown complete, `Front` first closes the gateway's upstream connections, so the server leaves
no pooled sockets behind.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dockyard.config import Settings
from dockyard.gateway.proxy import GatewayApp
from dockyard.gateway.routes import RouteTable

_ENDPOINT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # db.base.new_id's shape
_ID_LENGTH = 36


class Front:
    """Routes each request to the gateway or the API app; see the module docstring."""

    def __init__(self, api: ASGIApp, gateway: GatewayApp, routes: RouteTable, *, freeze_gc: bool) -> None:
        self.api = api
        self.gateway = gateway
        self.routes = routes
        self.freeze_gc = freeze_gc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            end = path.find("/", 1)
            segment = path[1:] if end < 0 else path[1:end]
            if segment in self.routes or (len(segment) == _ID_LENGTH and _ENDPOINT_ID.fullmatch(segment)):
                await self.gateway(scope, receive, send)
                return
        elif kind == "lifespan":
            await self.api(scope, receive, self._closing(send))
            return
        await self.api(scope, receive, send)

    def _closing(self, send: Send) -> Send:
        async def closing_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                if self.freeze_gc:
                    gc.freeze()
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.gateway.aclose()
            await send(message)

        return closing_send


def server_front(
    fastapi: ASGIApp,
    *,
    gateway: GatewayApp,
    routes: RouteTable,
    settings: Settings,
    lean_jobs: Callable[[ASGIApp], ASGIApp],
) -> Front:
    """The server's front over `fastapi` (the API itself), with the speed-ups `settings` switch on: the job API's
    lean routes, `lean_jobs(fastapi)`, between the front and FastAPI (`lean_job_routes`), and the garbage
    collector's freeze (`gc_freeze`)."""
    api = lean_jobs(fastapi) if settings.lean_job_routes else fastapi
    return Front(api, gateway, routes, freeze_gc=settings.gc_freeze)
