"""The servers' HTTP/1.1 protocol: uvicorn's httptools protocol, with each response's head leaving together with
its body.

uvicorn writes a response's status line and headers the moment the app sends `http.response.start`, and the
body at `http.response.body`: two system calls, two TCP segments and two wake-ups of the client for a response
that fits in one. On this machine's kernel those writes are most of a small response's cost: a trivial ASGI app
under uvicorn spent 11 µs of system CPU per request with two writes and 6 µs with one (wrk, 64 connections,
2-core VM; 48,500 against 60,500 requests/s). `HttpProtocol` hands uvicorn a transport that holds a response's
head back until its body is written, within the same turn of the event loop, and writes the two in one call. A
head whose body does not follow in that turn (a stream waiting for its first chunk) is written at the end of
the turn, so a client never waits on a held head for longer than the loop takes to go round. Everything else
(bodies, streamed chunks, flow control, closing) passes through unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadHoldingTransport(asyncio.Transport):
    """`inner`, except that the first write after `expect_head()` (a response's head) is held until the next
    write joins it, or until the current turn of `loop` ends."""

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.inner = inner
        self.loop = loop
        self._expect_head = True  # a connection's first write is its first response's head
        self._head: bytes | None = None

    def expect_head(self) -> None:
        """The next write starts a response."""
        self._expect_head = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self.inner.write(head + data)
        elif self._expect_head:
            self._expect_head = False
            self._head = bytes(data)
            self.loop.call_soon(self.release)
        else:
            self.inner.write(data)

    def release(self) -> None:
        """Write a held head now (the turn it was written in has ended, or the connection closes). A connection
        already closing takes no more writes: its head is dropped, as its buffered bytes would be."""
        if self._head is not None:
            head, self._head = self._head, None
            if not self.inner.is_closing():
                self.inner.write(head)

    def close(self) -> None:
        self.release()
        self.inner.close()

    def abort(self) -> None:
        self._head = None
        self.inner.abort()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size() + len(self._head or b"")

    # The rest is the inner transport's.
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner.get_protocol()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.inner.get_write_buffer_limits()

    def write_eof(self) -> None:
        self.release()
        self.inner.write_eof()

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `HeadHoldingTransport` (see the module docstring); given to uvicorn
    as its `http` protocol class."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop))

    def on_response_complete(self) -> None:
        holding: HeadHoldingTransport = self.transport  # type: ignore[assignment]
        holding.expect_head()
        super().on_response_complete()
