"""A fake sync worker for the gateway tests, and a way to serve any ASGI app on the test's own event loop.

Serving on the test's loop (rather than in a thread, like `tests/live.py`) keeps the gateway's dispatcher,
the fake workers and the test on one loop, so a test can call `routes.worker_ready` and read
`dispatcher.queued` directly, and a worker can hold a response on an `asyncio.Event` the test sets.

The worker's paths:
- `/wait`: answers once `release` is set.
- `/sleep?s=N`: answers after N seconds.
- `/stream?n=N` and `/sse?n=N`: N chunks (or server-sent events); after the first one it waits for `release`,
  and `stream_done` is set only once the last one has been sent.
- `/upload`: reads the body as it arrives, keeping a running count in `received`, and answers with its size
  and the order in which its chunks came.
- anything else: echoes the method, path, query string, headers and body as JSON.
Every request counts towards `current` and `peak` (the concurrency this worker saw) and `served`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send


class _LoopServer(uvicorn.Server):
    """uvicorn on the running loop, leaving the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def free_port() -> int:
    """A loopback port nothing listens on once this returns: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port on the running loop until the block ends; yields its base URL."""
    # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say so, and with
    # Nagle on every small response waits out the client's delayed ACK.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", proxy_headers=False, timeout_graceful_shutdown=5
    )
    server = _LoopServer(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the test server stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        listener.close()


class Worker:
    """The fake worker app and what it observed; see the module docstring."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.stream_done = False
        self.received = 0
        self.current = 0
        self.peak = 0
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            await self._handle(scope, receive, send)
            self.served += 1
        finally:
            self.current -= 1

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        query = dict(pair.split("=", 1) for pair in scope["query_string"].decode().split("&") if "=" in pair)
        if path == "/wait":
            await self.release.wait()
            await _answer(send, 200, b"released")
        elif path == "/sleep":
            await asyncio.sleep(float(query["s"]))
            await _answer(send, 200, b"slept")
        elif path in ("/stream", "/sse"):
            await self._stream(send, int(query["n"]), sse=path == "/sse")
        elif path == "/upload":
            sizes = []
            while True:
                message = await receive()
                body = message.get("body", b"")
                self.received += len(body)
                sizes.append(len(body))
                if not message.get("more_body", False):
                    break
            await _answer(send, 200, json.dumps({"size": self.received, "chunks": sizes}).encode())
        else:
            await _answer(send, 200, json.dumps(await _echo(scope, receive)).encode(), b"application/json")

    async def _stream(self, send: Send, count: int, *, sse: bool) -> None:
        content_type = b"text/event-stream" if sse else b"text/plain"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        for index in range(count):
            chunk = f"data: event-{index}\n\n" if sse else f"chunk-{index}\n"
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
            if index == 0:
                await self.release.wait()
        self.stream_done = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `condition()` holds, checking on every few loop turns; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while not condition():
        if loop.time() > give_up:
            raise AssertionError(f"condition still false after {timeout} s")
        await asyncio.sleep(0.005)


async def _echo(scope: Scope, receive: Receive) -> dict[str, Any]:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode(),
        "query": scope["query_string"].decode(),
        "headers": [[name.decode(), value.decode()] for name, value in scope["headers"]],
        "body": body.decode(),
    }


async def _answer(send: Send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
