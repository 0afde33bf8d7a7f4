"""`dockyard server`."""

from __future__ import annotations

import os
from typing import Annotated

import typer


def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on (env DOCKYARD_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on (env DOCKYARD_PORT)")] = None,
    config: Annotated[str | None, typer.Option(help="a YAML config file (env DOCKYARD_CONFIG)")] = None,
) -> None:
    import uvicorn

    if config:
        os.environ["DOCKYARD_CONFIG"] = config
    if host:
        os.environ["DOCKYARD_HOST"] = host
    if port:
        os.environ["DOCKYARD_PORT"] = str(port)
    from dockyard.config import load_settings
    from dockyard.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        "dockyard.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=15,
    )
