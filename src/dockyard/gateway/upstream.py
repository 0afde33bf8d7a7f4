"""The gateway's HTTP/1.1 client to its workers: a keep-alive connection pool per worker, on asyncio protocols
and httptools' parser (the one uvicorn serves the gateway's own side with).

Why not a general client. Measured against one no-op worker, behind the same uvicorn front, this module's shape
makes several times aiohttp's throughput and httpx's pool far less than either, since httpcore scans every pooled
connection per request (bench/RESULTS.md, "The gateway's upstream client"). A proxy needs none of what costs a
general client its time (URL objects, cookie jars, redirects, decompression, per-request tracing and timeout
objects); it needs bytes in, bytes out, and a parser in C.

Contract:
- `UpstreamPool(address)` holds the connections to one worker, `http://host:port` (the routing table's
  address). `request(method, target, headers, body, deadline)` sends one request and returns its
  `UpstreamResponse` once the status line and headers are in. `target` is the path and query, sent byte for
  byte; `headers` go as given (lowercase names, no hop-by-hop ones: the caller filters them); the pool adds
  `Host` and, for a streamed body without `Content-Length`, chunked framing.
- `body` is None, `bytes` (sent with the head in one write), or an async iterator of chunks, sent as it
  yields them while the response is awaited (a worker may answer before reading it all), under the
  transport's flow control.
- Errors: `ConnectFailed` when no connection could be made (nothing was sent: safe to retry elsewhere);
  `UpstreamError` for anything after that (the connection broke, the answer was not HTTP); `TimeoutError`
  when `deadline` (the running loop's clock) passes before the response head. Each message names the cause.
- The body comes through `UpstreamResponse.next_chunk()` -> `(chunk, last)`: `last` is True with the final
  bytes (possibly empty), so a small answer that arrived whole is relayed in one piece. At most `_HIGH_WATER`
  bytes are buffered ahead of the reader; past that the worker's socket is not read.
- `release()` ends the exchange (idempotent). A connection whose answer was read to its end, whose request
  was sent whole, and which the worker did not ask to close goes back to the pool; any other is closed, so a
  half-read answer never leaks into the next request. After a `HEAD` the connection is closed too: the parser
  cannot be told that a `HEAD` answer's `Content-Length` announces no body.
- Idle connections are reused newest first; one idle for `keepalive_expiry` seconds is closed, by a timer
  while the pool has idle connections, so the gateway retires it before the worker's own idle timeout could
  close it under a new request, and a burst's connections do not stay open on the worker (whose file
  descriptors may be few) once the burst is over. `aclose()` closes every connection; a later request opens
  new ones.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

# Response bytes read ahead of the client; the same bound the gateway holds request bodies to.
_HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    """The exchange with the worker failed after a connection was made."""


class ConnectFailed(UpstreamError):
    """No connection to the worker could be made, so nothing was sent."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the parser of its responses. Between `begin()` and the end of the
    answer it belongs to one exchange; the parser's callbacks fill the exchange's head and body."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reusable = True
        self._head: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._informational = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self.complete = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport, though uvloop's is not a subclass of asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the worker's answer is not valid HTTP/1.1: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._pool._forget(self)
        if self._head is not None and not self.complete and self._error is None:
            if self.status and exc is None and not _framed(self.headers):
                # An answer with neither Content-Length nor chunked framing ends when its connection does.
                self.complete = True
                self._wake_reader()
            else:
                reason = f" ({exc})" if exc else ""
                when = "before its answer was complete" if self.status else "without answering"
                self._fail(UpstreamError(f"the worker closed the connection {when}{reason}"))
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the final one follows on the same connection.
            self._informational = True
            self.headers = []
            return
        self.status = status
        if not self._parser.should_keep_alive():
            self.reusable = False
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= _HIGH_WATER and self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self._wake_reader()

    # The exchange's side

    def begin(self, head: asyncio.Future[None]) -> None:
        self._head = head
        self.status = 0
        self.headers = []
        self.complete = False
        self._error = None

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        while self._writing_paused and not self.closed:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain
        if self.closed:
            raise UpstreamError("the worker closed the connection while the request was being sent")

    async def next_chunk(self) -> tuple[bytes, bool]:
        while not self._chunks and not self.complete:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks.popleft() if self._chunks else b""
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused and self._transport is not None and not self.closed:
            self._reading_paused = False
            self._transport.resume_reading()
        return chunk, self.complete

    def finish(self) -> None:
        """The exchange is over: back to the pool when the connection can carry another, else closed."""
        self._head = None
        if self.complete and self.reusable and not self.closed:
            self._pool._put(self)
        else:
            self.close()

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None and not self.closed:
            self._transport.close()

    def _fail(self, error: Exception) -> None:
        self._error = error
        self.reusable = False
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake_writer(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None


class UpstreamResponse:
    """A worker's answer whose head is in; see the module docstring for reading and releasing it."""

    __slots__ = ("_connection", "_sender", "headers", "status")

    def __init__(self, connection: _Connection, sender: asyncio.Task[None] | None) -> None:
        self._connection = connection
        self._sender = sender
        self.status = connection.status
        self.headers = connection.headers

    async def next_chunk(self) -> tuple[bytes, bool]:
        return await self._connection.next_chunk()

    def release(self) -> None:
        connection = self._connection
        if self._sender is not None and not self._sender.done():
            # The worker answered before taking the whole request body: the connection cannot carry another.
            self._sender.cancel()
            connection.reusable = False
        connection.finish()


class UpstreamPool:
    """Keep-alive connections to one worker; see the module docstring."""

    def __init__(self, address: str, *, connect_timeout: float, keepalive_expiry: float) -> None:
        parts = urlsplit(address)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"a worker address is http://host:port, not {address!r}")
        self.address = address
        self._host, self._port = parts.hostname, parts.port
        self._host_header = parts.netloc.encode("latin-1")
        self._connect_timeout = connect_timeout
        self._keepalive_expiry = keepalive_expiry
        self._idle: deque[_Connection] = deque()  # oldest idle first
        self._open: set[_Connection] = set()
        self._sweep_timer: asyncio.TimerHandle | None = None

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None,
        deadline: float,
    ) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        connection = self._take(loop.time()) or await self._connect()
        head: asyncio.Future[None] = loop.create_future()
        connection.begin(head)
        streamed = None if body is None or isinstance(body, bytes) else body
        lines = [method.encode("latin-1"), b" ", target.encode("latin-1"), b" HTTP/1.1\r\nhost: ", self._host_header]
        has_length = False
        for name, value in headers:
            lines += (b"\r\n", name, b": ", value)
            if name == b"content-length":
                has_length = True
        chunked = streamed is not None and not has_length
        if chunked:
            lines.append(b"\r\ntransfer-encoding: chunked")
        elif isinstance(body, bytes) and not has_length:
            # A body the client sent chunked and that arrived whole goes up with its length.
            lines += (b"\r\ncontent-length: ", str(len(body)).encode())
        lines.append(b"\r\n\r\n")
        if isinstance(body, bytes):
            lines.append(body)
        connection.write(b"".join(lines))
        if method == "HEAD":
            connection.reusable = False
        sender = None if streamed is None else loop.create_task(_send_body(connection, streamed, chunked))
        timer = loop.call_at(deadline, _expire, head)
        try:
            await head
        except BaseException:
            if sender is not None:
                sender.cancel()
            connection.reusable = False
            connection.finish()
            raise
        finally:
            timer.cancel()
        if method == "HEAD":
            connection.complete = True
        return UpstreamResponse(connection, sender)

    def aclose(self) -> None:
        """Close every connection, idle or in use."""
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None

    def _take(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._keepalive_expiry:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(lambda: _Connection(self), self._host, self._port)
        except TimeoutError as exc:
            raise ConnectFailed(f"connecting to {self.address} took longer than {self._connect_timeout:g} s") from exc
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConnectFailed(f"cannot connect to {self.address}: {reason}") from exc
        if connection.closed:
            # Closed by the worker between the handshake and now: nothing was sent, so it is a refusal.
            raise ConnectFailed(f"{self.address} closed the connection as soon as it was made")
        self._open.add(connection)
        return connection

    def _put(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self._idle.append(connection)
        if self._sweep_timer is None:
            self._sweep_timer = loop.call_at(connection.idle_since + self._keepalive_expiry, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for `keepalive_expiry`; come back when the next one will be."""
        self._sweep_timer = None
        loop = asyncio.get_running_loop()
        expired = loop.time() - self._keepalive_expiry
        while self._idle and self._idle[0].idle_since <= expired:
            self._idle.popleft().close()
        if self._idle:
            self._sweep_timer = loop.call_at(self._idle[0].idle_since + self._keepalive_expiry, self._sweep)

    def _forget(self, connection: _Connection) -> None:
        """A connection closed (by either side): it leaves the pool."""
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)


def _expire(head: asyncio.Future[None]) -> None:
    if not head.done():
        head.set_exception(TimeoutError())


async def _send_body(connection: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    """Stream a request body up, framed as chunks when it has no Content-Length. A failure here is seen by the
    exchange as the worker's (the connection breaks or the worker answers early)."""
    try:
        async for chunk in body:
            if not chunk:
                continue
            connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await connection.drain()
        if chunked:
            connection.write(b"0\r\n\r\n")
    except UpstreamError:
        connection.reusable = False
