"""In-process wake-ups for async jobs, so that nothing on the job path polls the database in a loop.

The database is the truth about jobs; these signals only say "look again now". A `job-take` held open with an
empty queue waits on `queued(endpoint_id)`; `runsync` and a `stream` reader wait on `changed(job_id)`. Whoever
commits a change that could end such a wait calls `notify_queued` or `notify_changed` after the commit. A
waiter that times out, or was woken by a change that is not the one it wanted, simply reads the database
again, so a missed or spurious signal costs at most one wait, never a wrong answer (and across processes,
where no signal reaches, every wait is bounded and ends in a read).

Contract: `wait_queued(endpoint_id, timeout)` and `wait_changed(job_id, timeout)` return True when signalled
within `timeout` seconds, False otherwise; both must run on the loop the notifications are made on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict


class JobSignals:
    def __init__(self) -> None:
        self._queued: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._changed: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    @staticmethod
    def _notify(waiters: defaultdict[str, set[asyncio.Event]], key: str) -> None:
        for event in waiters.pop(key, ()):
            event.set()

    @staticmethod
    async def _wait(waiters: defaultdict[str, set[asyncio.Event]], key: str, timeout: float) -> bool:
        event = asyncio.Event()
        waiters[key].add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
            return event.is_set()
        finally:
            remaining = waiters.get(key)
            if remaining is not None:
                remaining.discard(event)
                if not remaining:
                    del waiters[key]

    def notify_queued(self, endpoint_id: str) -> None:
        """A job of `endpoint_id` entered its queue (submitted, retried, or put back after a lost lease)."""
        self._notify(self._queued, endpoint_id)

    def notify_changed(self, job_id: str) -> None:
        """Job `job_id` changed: it finished, was cancelled, or streamed a part."""
        self._notify(self._changed, job_id)

    async def wait_queued(self, endpoint_id: str, timeout: float) -> bool:
        return await self._wait(self._queued, endpoint_id, timeout)

    async def wait_changed(self, job_id: str, timeout: float) -> bool:
        return await self._wait(self._changed, job_id, timeout)
