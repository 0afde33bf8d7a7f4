"""The no-op HTTP worker every benchmark system fronts: an asyncio HTTP/1.1 responder on the standard library
only (its image has python3 and nothing else), so what is measured is the proxy in front, not the worker.

Contract: any method on any path answers `200` with the body `BODY` (`text/plain`, with Content-Length).
A query parameter `sleep_ms=N` (N a non-negative integer) delays that answer by N milliseconds without holding
up the connection's event loop, so a request can stand for work that takes time (the autoscaling benchmark).
Connections are kept alive until the client closes them, sends `Connection: close`, or speaks HTTP/1.0 without
`Connection: keep-alive`. A request body is read by its Content-Length and dropped; chunked request bodies are
not supported (no benchmark sends one). The port is `PORT` (default 8080) on every interface.

Ray Serve's replica answers with the same `BODY` (bench/ray_app.py), so every system returns the same bytes.
"""

from __future__ import annotations

import asyncio
import os
import signal

BODY = b"ok\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
MAX_HEAD = 64 * 1024


def _wants_close(head: bytes) -> bool:
    """Whether the request asks the connection to end after its answer (HTTP/1.1 keeps it by default)."""
    request_line, _, headers = head.partition(b"\r\n")
    connection = b""
    for line in headers.lower().split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip() == b"connection":
            connection = value.strip()
    if request_line.endswith(b"HTTP/1.0"):
        return connection != b"keep-alive"
    return connection == b"close"


def _sleep_s(head: bytes) -> float:
    """The delay a request's `sleep_ms` query parameter asks for, in seconds; 0 when absent."""
    target = head.partition(b"\r\n")[0].split(b" ")[1:2]
    query = target[0].partition(b"?")[2] if target else b""
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"sleep_ms":
            return int(value) / 1000
    return 0.0


def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            return int(value.strip() or b"0")
    return 0


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each request of one connection with `RESPONSE` until the connection ends."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if length := _content_length(head):
                await reader.readexactly(length)
            if delay := _sleep_s(head):
                await asyncio.sleep(delay)
            writer.write(RESPONSE)
            if _wants_close(head):
                break
            await writer.drain()
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass  # the client left, or sent something this responder does not speak: drop the connection
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve_connection, "0.0.0.0", port, limit=MAX_HEAD, backlog=4096)
    stop = asyncio.Event()
    # As PID 1 in its container the process gets no default SIGTERM handling: without this, every stop would
    # wait out the engine's grace period and end in SIGKILL.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        print(f"noop worker listening on {port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(os.environ.get("PORT", "8080"))))
