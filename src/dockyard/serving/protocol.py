"""The servers' HTTP/1.1 protocol: uvicorn's httptools protocol, with each response's head leaving together with
its body.

uvicorn writes a response's status line and headers the moment the app sends `http.response.start`, and the body at
`http.response.body`: two system calls, two TCP segments and two wake-ups of the client for a response that fits in
one. Those writes are most of a small response's cost: a trivial ASGI app under uvicorn spends markedly less system
CPU per request with one write than with two (bench/RESULTS.md, "A response's head and body in one write").
`HttpProtocol` hands uvicorn a transport that holds a response's head back until its body is written, within the
same turn of the event loop, and writes the two in one call. A head whose body does not follow in that turn (a
stream waiting for its first chunk) is written at the end of the turn, so a client never waits on a held head for
longer than the loop takes to go round. Everything else (bodies, streamed chunks, flow control, closing) passes
through unchanged.

The protocol also bounds what a connection may hold, where uvicorn does not (`ConnectionLimits`):

- A request's head must arrive whole within `header_timeout` of its first byte (of the connection's opening, for
  its first request): a client that trickles it (slowloris) is answered 408 and closed, and a connection that
  sent nothing is closed. Its body may pause at most `body_timeout` between reads (408 while no answer has
  started, else closed). Between requests, uvicorn's own keep-alive timeout applies.
- At most `max_connections` connections per server process. One more is made room for by closing the
  connection idle the longest (waiting for a request, none in progress), as nginx reuses its oldest idle
  keep-alive connection when it runs out; with none idle, the new one is answered 503 and closed. So a crowd of
  idle sockets cannot keep `/healthz` or a new client out, and the process never runs out of descriptors.

The deadlines are checked by one timer per server, a few times per the shortest of them, rather than armed and
cancelled per request: a request pays for a few attribute writes, not for timer handles.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
import weakref
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from dockyard.config import Settings
from dockyard.errors import error_body

log = logging.getLogger(__name__)

# Descriptors a server process keeps for itself beyond its clients' connections: database and engine pools, its
# listening sockets, files.
RESERVED_FDS = 128
MIN_CONNECTIONS = 16  # the connection cap is never derived below this, however low the descriptor limit
UNLIMITED_FDS = 1 << 20  # what an unlimited hard limit is raised to (Linux's default nr_open)
_WARN_EVERY = 60.0  # seconds between two warnings that the connection cap was reached


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


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may hold (see the module docstring); None: no such bound, as in plain uvicorn."""

    header_timeout: float | None = None
    body_timeout: float | None = None
    max_connections: int | None = None


class _Waiting(Enum):
    """What a connection's deadline is for."""

    HEAD = "head"
    BODY = "body"


class _Connections:
    """The state the connections of one server share: which are idle (in the order they became so), and the
    timer that checks every connection's deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, state: ServerState, limits: ConnectionLimits) -> None:
        self.loop = loop
        self.state = state
        timeouts = [timeout for timeout in (limits.header_timeout, limits.body_timeout) if timeout]
        self.sweep_every = min(1.0, min(timeouts) / 4) if timeouts else 0.0
        self.idle: dict[HttpProtocol, None] = {}  # insertion-ordered: the first is idle the longest
        self.warned_at = -_WARN_EVERY
        self.sweeping = False

    def start_sweeping(self) -> None:
        if self.sweep_every and not self.sweeping:
            self.sweeping = True
            self.loop.call_later(self.sweep_every, self.sweep)

    def sweep(self) -> None:
        self.loop.call_later(self.sweep_every, self.sweep)
        now = self.loop.time()
        for connection in list(self.state.connections):
            if isinstance(connection, HttpProtocol) and connection.deadline and now >= connection.deadline:
                connection.deadline_passed(now)

    def warn(self, message: str, *args: object) -> None:
        """Log `message` at most once a minute: under a flood of connections, once per connection would flood."""
        now = time.monotonic()
        if now - self.warned_at >= _WARN_EVERY:
            self.warned_at = now
            log.warning(message, *args)


_shared: weakref.WeakKeyDictionary[ServerState, _Connections] = weakref.WeakKeyDictionary()


def _response(status: int, phrase: str, message: str) -> bytes:
    """A whole closing response with Dockyard's error body, for answers the protocol gives on its own."""
    body = json.dumps(error_body(status, message)).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n"
    )
    retry = "retry-after: 1\r\n" if status == 503 else ""
    return f"{head}{retry}\r\n".encode() + body


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `HeadHoldingTransport` (over the plain transport when `head_with_body`
    is off), bounded by `limits` (see the module docstring); given to uvicorn as its `http` protocol class, or as
    `protocol_for`'s partial of it."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        limits: ConnectionLimits = ConnectionLimits(),
        head_with_body: bool = True,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.head_with_body = head_with_body
        shared = _shared.get(server_state)
        if shared is None:
            shared = _shared[server_state] = _Connections(self.loop, server_state, limits)
        self.shared = shared
        self.deadline = 0.0  # loop time by which what `waiting` names must arrive; 0: none
        self.waiting = _Waiting.HEAD
        self.request_started = False  # a byte of the request being read has arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop) if self.head_with_body else transport)
        self.shared.start_sweeping()
        cap = self.limits.max_connections
        if cap and len(self.connections) > cap and not self._make_room(cap):
            return
        self._expect(_Waiting.HEAD, self.limits.header_timeout)
        self.shared.idle[self] = None

    def _make_room(self, cap: int) -> bool:
        """Close the connection idle the longest for this one; with none idle, refuse this one (False)."""
        oldest = next(iter(self.shared.idle), None)
        if oldest is not None:
            self.shared.warn("%d connections, the limit: closing the ones idle the longest for new ones", cap)
            oldest.close_idle()
            return True
        self.shared.warn("%d connections, the limit, and none idle: refusing new ones with 503", cap)
        self.transport.write(_response(503, "Service Unavailable", "the server is at its connection limit; retry"))
        self.transport.close()
        return False

    def close_idle(self) -> None:
        self.shared.idle.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.idle.pop(self, None)
        self.deadline = 0.0
        super().connection_lost(exc)

    def _expect(self, waiting: _Waiting, timeout: float | None) -> None:
        self.waiting = waiting
        self.deadline = self.loop.time() + timeout if timeout else 0.0

    def data_received(self, data: bytes) -> None:
        if not self.request_started:
            self.request_started = True
            if self.shared.idle.pop(self, 0) is None and not self.deadline:  # idle between requests until now
                self._expect(_Waiting.HEAD, self.limits.header_timeout)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.request_started = True
        if not self.deadline:  # a request pipelined behind one still being answered
            self._expect(_Waiting.HEAD, self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._expect(_Waiting.BODY, self.limits.body_timeout)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self.deadline:
            self.deadline = self.loop.time() + (self.limits.body_timeout or 0.0)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.deadline = 0.0
        self.request_started = False

    def on_response_complete(self) -> None:
        if self.head_with_body:
            holding: HeadHoldingTransport = self.transport  # type: ignore[assignment]
            holding.expect_head()
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None and not self.request_started:  # waiting for the next request
            self.shared.idle[self] = None

    def deadline_passed(self, now: float) -> None:
        """What `waiting` names did not arrive in time: 408 where no answer has started, then close."""
        held_back = self.waiting is _Waiting.BODY and self.cycle is not None and self.cycle.waiting_for_100_continue
        if self.flow.read_paused or held_back:  # the server, not the client, holds the bytes back: wait on
            timeout = self.limits.body_timeout if self.waiting is _Waiting.BODY else self.limits.header_timeout
            self.deadline = now + (timeout or 0.0)
            return
        self.deadline = 0.0
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and not self.cycle.response_complete
        if self.waiting is _Waiting.BODY and answering and not self.cycle.response_started:
            # The app is waiting for the body: it is told the client left, and its answer goes nowhere.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
            answering = False
        if self.request_started and not answering:
            what = "request head" if self.waiting is _Waiting.HEAD else "request body"
            self.transport.write(_response(408, "Request Timeout", f"the {what} did not arrive in time; send it again"))
        self.transport.close()


def protocol_for(settings: Settings, max_connections: int) -> type[HttpProtocol]:
    """`HttpProtocol` bounded by the settings' timeouts and `max_connections`, writing heads with bodies as the
    settings' `head_with_body` says. A partial rather than a subclass: uvicorn only calls it, and a partial of this
    module's class pickles, as `--workers` processes need."""
    limits = ConnectionLimits(settings.header_timeout_seconds, settings.body_timeout_seconds, max_connections)
    return cast(type[HttpProtocol], partial(HttpProtocol, limits=limits, head_with_body=settings.head_with_body))


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's open-files limit to its hard limit (an unlimited one to `UNLIMITED_FDS`); the limits
    before and after. Where the kernel refuses, the limit stays as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_FDS if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, target


def connection_cap(setting: int, fd_limit: int) -> int:
    """The most connections one process may hold with `fd_limit` descriptors: `setting` (0: no setting), never
    more than half of what `RESERVED_FDS` leaves (a proxied request holds a second descriptor, its upstream)."""
    limit = UNLIMITED_FDS if fd_limit == resource.RLIM_INFINITY else fd_limit
    derived = max(MIN_CONNECTIONS, (limit - RESERVED_FDS) // 2)
    return min(setting, derived) if setting else derived
