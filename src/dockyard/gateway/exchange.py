"""One request on its way through the gateway: its request body and the watch for its client leaving.

The ASGI server tells an app that its client left only through `receive()` (an `http.disconnect` message), so
something must be waiting in `receive()` for the gateway to free a slot when a client goes. A task per request
for that costs about a tenth of the gateway's time per request, so the watch starts late (`WATCH_AFTER`):

- A request without a body, or whose body came whole with its head (the usual JSON request), reads it inline
  and starts no task; a timer starts the watcher if the request is still going `WATCH_AFTER` seconds after it
  arrived. A client that leaves is therefore seen at once after that, and at most `WATCH_AFTER` late before
  it: a request that quick either finished or is about to.
- A request whose body is still coming in starts its watcher at once, because the watcher is also the body's
  only reader: it buffers at most `HIGH_WATER` bytes ahead of the upstream send, which iterates the exchange.
  A queued request whose body is larger stops being read there, so its departure is only seen when a worker
  takes it or its deadline passes.

When the watcher sees `http.disconnect` before `finished` is set, it marks the client `gone` and cancels the
request's task, which leaves the queue or drops the upstream exchange; the dispatcher's context manager then
releases the slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Message, Receive, Send

from dockyard.gateway.metrics import EndpointMetrics
from dockyard.gateway.routes import EndpointRoute

log = logging.getLogger(__name__)

# Seconds a request runs before its client is watched (see the module docstring). Long enough that requests
# answered in the time a saturated gateway takes (tens of ms at 512 connections) start no watcher, which would
# make saturation dearer still; short beside an inference request that runs for seconds.
WATCH_AFTER = 0.25
# Request body bytes read ahead of the upstream send. Enough for a whole ordinary JSON request, so that a
# queued request's client is still watched; small enough that a full queue of uploads stays cheap.
HIGH_WATER = 256 * 1024


@dataclass(slots=True, eq=False)
class Exchange:
    """One request and the only reader of its ASGI `receive`. After `read_body()`, `body` is the whole body
    when it has come in (None: no body, or one still streaming, which iterating the exchange yields)."""

    endpoint: str
    route: EndpointRoute
    method: str
    target: str  # the path and query string on the worker
    headers: list[tuple[bytes, bytes]]
    receive: Receive
    task: asyncio.Task[Any]
    send: Send
    metrics: EndpointMetrics
    arrival: float
    deadline: float
    body: bytes | None = None
    streaming: bool = False
    gone: bool = False
    # Set just before the last message of the answer is sent: the ASGI server reports `http.disconnect` once
    # a response is complete, and that must not cancel the request's own clean-up.
    finished: bool = False
    _watcher: asyncio.Task[None] | None = None
    _timer: asyncio.TimerHandle | None = None
    _chunks: deque[bytes] = field(default_factory=deque)
    _buffered: int = 0
    _complete: bool = False
    _readable: asyncio.Event | None = None
    _drained: asyncio.Event | None = None

    @property
    def timeout(self) -> float:
        return self.route.config.request_timeout

    async def read_body(self, has_body: bool) -> bool:
        """Read what has come of the body and start the watch; False when the client has already left."""
        loop = asyncio.get_running_loop()
        if has_body:
            message = await self.receive()
            if message["type"] != "http.request":
                return False
            chunk: bytes = message.get("body", b"")
            if message.get("more_body", False):
                self.streaming = True
                self._readable, self._drained = asyncio.Event(), asyncio.Event()
                if chunk:
                    self._chunks.append(chunk)
                    self._buffered = len(chunk)
                self._watcher = loop.create_task(self._watch())
                return True
            self.body = chunk
        self._timer = loop.call_at(self.arrival + WATCH_AFTER, self._start_watching)
        return True

    def close(self) -> None:
        """The request is over: stop watching its client."""
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()

    def _start_watching(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        try:
            while True:
                if self.streaming and not self._complete:
                    assert self._drained is not None
                    while self._buffered >= HIGH_WATER:
                        self._drained.clear()
                        await self._drained.wait()
                message = await self.receive()
                if message["type"] != "http.request":
                    break
                if self.streaming:
                    self._take(message)
        except Exception:
            log.debug("reading the request failed; the client is taken as gone", exc_info=True)
        if not self.finished:
            self.gone = True
            self.task.cancel()

    def _take(self, message: Message) -> None:
        assert self._readable is not None
        body: bytes = message.get("body", b"")
        if body:
            self._chunks.append(body)
            self._buffered += len(body)
        if not message.get("more_body", False):
            self._complete = True
        self._readable.set()

    def __aiter__(self) -> Exchange:
        return self

    async def __anext__(self) -> bytes:
        assert self._readable is not None, "only a streaming body is iterated"
        assert self._drained is not None
        while not self._chunks:
            if self._complete:
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        self._drained.set()
        return chunk
