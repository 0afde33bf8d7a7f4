"""A Dockyard app served for real: uvicorn on a free loopback port, in a background thread, for the tests
that need a socket (streamed request bodies, clients that speak HTTP rather than ASGI)."""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from starlette.types import ASGIApp

from dockyard.config import Settings
from dockyard.serving.protocol import connection_cap, protocol_for


@contextmanager
def serving(app: ASGIApp, host: str = "127.0.0.1", port: int = 0, settings: Settings | None = None) -> Iterator[str]:
    """Run `app` (its lifespan included) on `host` and `port` (0: a free one) until the block ends; yields its
    base URL (on loopback, which reaches any address the app listens on). Its connections are bounded by
    `settings`, else by those of the app, else by the defaults."""
    # IPPROTO_TCP named explicitly: asyncio only turns Nagle off (TCP_NODELAY) on accepted sockets of a listener
    # made so, and with Nagle on each small keep-alive answer stalls about 40 ms.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind((host, port))
    port = listener.getsockname()[1]
    # The servers' own HTTP protocol (serving/protocol.py) with the app's connection settings (the defaults for an
    # app that has none), so what these tests see is what `dockyard server` serves.
    context = getattr(getattr(app, "state", None), "context", None)
    settings = settings or (context.settings if context is not None else Settings())
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=protocol_for(settings, connection_cap(settings.max_connections, fd_limit)),
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the test server did not start; its log above says why")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def free_port() -> int:
    """A TCP port free now, for a server whose settings must name its port before it listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
