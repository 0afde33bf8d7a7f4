"""Draining: what a server or a gateway does between SIGTERM and its exit.

uvicorn handles SIGTERM by closing its listening sockets (no new connection), letting the requests in flight
finish for up to its graceful-shutdown timeout (`DOCKYARD_DRAIN_SECONDS`), and only then running the app's
shutdown. `Drain.install()` chains a handler in front of uvicorn's so that the app learns of the signal at once:
`/healthz` answers 503 `{"status": "draining"}` on any connection still open, and the callbacks given to `Drain`
run (a server releases its control lease and marks its process row draining) without waiting for the requests.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """Whether this process is draining; `callbacks` run once, in tasks, when it starts to."""

    def __init__(self, *callbacks: Callable[[], Awaitable[None]]) -> None:
        self.draining = False
        self._callbacks = callbacks
        self._tasks: set[asyncio.Task[None]] = set()
        self._previous: dict[int, Any] = {}

    def begin(self) -> None:
        """Start draining (idempotent); call it on the event loop."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: no new connections; finishing the requests in flight")
        for callback in self._callbacks:
            task = asyncio.get_running_loop().create_task(self._run(callback))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def install(self) -> None:
        """Put `begin` in front of the current SIGTERM and SIGINT handlers (uvicorn's), which still run. Only the
        main thread may handle signals: elsewhere (a test serving an app in a thread) nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            previous = signal.getsignal(sig)
            self._previous[sig] = previous

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.begin)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    async def wait(self) -> None:
        """Until the callbacks started by `begin` have ended."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    @staticmethod
    async def _run(callback: Callable[[], Awaitable[None]]) -> None:
        try:
            await callback()
        except Exception:
            log.exception("a drain step failed")
