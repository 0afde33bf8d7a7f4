"""`dockyard server` and `dockyard gateway`."""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Annotated

import typer

HostOption = Annotated[str | None, typer.Option(help="address to listen on (env DOCKYARD_HOST)")]
ConfigOption = Annotated[str | None, typer.Option(help="a YAML config file (env DOCKYARD_CONFIG)")]


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _run(factory: str, host: str | None, port: int | None, config: str | None, workers: int = 1) -> None:
    """Serve the ASGI app that `factory` builds, with the settings the environment and options give, in
    `workers` processes sharing the listening socket."""
    import uvicorn

    if config:
        os.environ["DOCKYARD_CONFIG"] = config
    if host:
        os.environ["DOCKYARD_HOST"] = host
    if port:
        os.environ["DOCKYARD_PORT"] = str(port)
    from dockyard.config import load_settings
    from dockyard.logs import configure_logging
    from dockyard.serving.protocol import connection_cap, protocol_for, raise_fd_limit

    settings = load_settings()
    configure_logging(settings)
    before, fd_limit = raise_fd_limit()  # the worker processes inherit it
    max_connections = connection_cap(settings.max_connections, fd_limit)
    logging.getLogger(__name__).info(
        "open files limit %d (raised from %d); at most %d connections per process", fd_limit, before, max_connections
    )
    # After its graceful shutdown uvicorn raises the signal again under the handler it found: this one makes a
    # drained process exit 0 rather than die of the signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # uvicorn's httptools protocol, writing a response's head with its body, with header and body timeouts and
        # the connection cap; uvicorn's own keep-alive timeout between requests.
        http=protocol_for(settings, max_connections),
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        log_config=None,
        access_log=False,
        # The gateway builds X-Forwarded-For from the peer and the header as it came; uvicorn's rewrite of the
        # peer from that same header would name the client twice, and the API uses no client address.
        proxy_headers=False,
        # SIGTERM: uvicorn stops accepting and gives the requests in flight this long (core/drain.py).
        timeout_graceful_shutdown=settings.drain_seconds,
        workers=workers,
    )


def serve(
    host: HostOption = None,
    port: Annotated[int | None, typer.Option(help="port to listen on (env DOCKYARD_PORT)")] = None,
    config: ConfigOption = None,
) -> None:
    _run("dockyard.app:create_app_from_env", host, port, config)


def gateway(
    host: HostOption = None,
    port: Annotated[int, typer.Option(help="port to listen on")] = 8081,
    config: ConfigOption = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="processes serving the gateway on this port, each with its own upstream connections, prober and "
            "load report; one Python process uses one core, so give it as many as it has cores to itself",
        ),
    ] = 1,
) -> None:
    """Run a stand-alone sync gateway beside the server, on the same database; point DOCKYARD_GATEWAY_URL at it."""
    _run("dockyard.gateway_app:create_gateway_app_from_env", host, port, config, workers)
