"""Wake-ups for async jobs, in this process and every other on the database, so that nothing on the job path
polls the database in a loop.

The database is the truth about jobs; these signals only say "look again now". A `job-take` held open with an
empty queue waits on `queued(endpoint_id)`; `runsync` and a `stream` reader wait on `changed(job_id)`; a held
job-stop poll waits on `worker(worker_id)`. Whoever commits a change that could end such a wait calls
`notify_queued`, `notify_changed` or `notify_worker` after the commit. Each is published on the bus (core/bus.py,
topics `JOB_QUEUED`, `JOB_CHANGED` and `WORKER_FLAGGED`), which wakes this process's watchers within the call and
every other process's soon after: a job submitted on server A ends a job-take held on server B. `EVERYTHING` (the
bus may have lost signals) wakes every watcher of its topic. A waiter that times out, or was woken by a change
that is not the one it wanted, simply reads the database again, so a missed or spurious signal costs at most one
wait, never a wrong answer; every wait is bounded and ends in a read.

Contract: `watch_queued(endpoint_id)`, `watch_changed(job_id)` and `watch_worker(worker_id)` register a
`Watch` at once; made before the read it guards, a notification committed after that read is never missed,
even when it comes before `Watch.wait(timeout)`, which returns True when notified within `timeout` seconds (or
before), False otherwise. All of it runs on the loop the notifications are made on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable
from types import TracebackType

from dockyard.core.bus import EVERYTHING, Bus, LocalBus, Topic

_Waiters = defaultdict[str, set[asyncio.Event]]


class Watch:
    """One registration for a key; see the module docstring. Leaving its `with` block ends it."""

    __slots__ = ("_event", "_key", "_waiters")

    def __init__(self, waiters: _Waiters, key: str) -> None:
        self._waiters = waiters
        self._key = key
        self._event = asyncio.Event()
        waiters[key].add(self._event)

    async def wait(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        return self._event.is_set()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        remaining = self._waiters.get(self._key)
        if remaining is not None:
            remaining.discard(self._event)
            if not remaining:
                del self._waiters[self._key]


class JobSignals:
    """The watches of this process, fed by `bus` (a `LocalBus` of its own when none is given)."""

    def __init__(self, bus: Bus | None = None) -> None:
        self.bus: Bus = bus if bus is not None else LocalBus()
        self._queued: _Waiters = defaultdict(set)
        self._changed: _Waiters = defaultdict(set)
        self._workers: _Waiters = defaultdict(set)
        for topic, waiters in (
            (Topic.JOB_QUEUED, self._queued),
            (Topic.JOB_CHANGED, self._changed),
            (Topic.WORKER_FLAGGED, self._workers),
        ):
            self.bus.subscribe(topic, _waker(waiters))

    def notify_queued(self, endpoint_id: str) -> None:
        """A job of `endpoint_id` entered its queue (submitted, retried, or put back after a lost lease)."""
        self.bus.publish(Topic.JOB_QUEUED, endpoint_id)

    def notify_changed(self, job_id: str) -> None:
        """Job `job_id` changed: it finished, was cancelled, or streamed a part."""
        self.bus.publish(Topic.JOB_CHANGED, job_id)

    def notify_worker(self, worker_id: str) -> None:
        """A job worker `worker_id` holds was flagged to stop (cancelled, or timed out)."""
        self.bus.publish(Topic.WORKER_FLAGGED, worker_id)

    def watch_queued(self, endpoint_id: str) -> Watch:
        return Watch(self._queued, endpoint_id)

    def watch_changed(self, job_id: str) -> Watch:
        return Watch(self._changed, job_id)

    def watch_worker(self, worker_id: str) -> Watch:
        return Watch(self._workers, worker_id)


def _waker(waiters: _Waiters) -> Callable[[str], None]:
    """The bus's subscriber for one kind of watch: wakes the watches of a key, or all of them on `EVERYTHING`."""

    def wake(key: str) -> None:
        if key == EVERYTHING:
            events = [event for keyed in waiters.values() for event in keyed]
            waiters.clear()
        else:
            events = list(waiters.pop(key, ()))
        for event in events:
            event.set()

    return wake
