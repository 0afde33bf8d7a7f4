"""Which ready worker serves the next request of one endpoint: a bounded FIFO queue and least-loaded dispatch.

One `EndpointDispatcher` per endpoint, living on one event loop; it knows nothing of HTTP or the database.

Contract:
- `async with dispatcher.acquire(deadline) as worker_id:` hands out the ready worker with the fewest requests in
  flight among those with a free slot (in flight < `max_concurrent_per_worker`); ties go to the worker that has
  been ready longest. The slot is held for the body and released in `__aexit__`, whatever ends the body (an
  exception, or the task cancelled because the client went away).
- With no free slot the request waits in a FIFO queue: a freed slot goes to the oldest waiter. When
  `queue_limit` requests already wait, `acquire` raises `QueueFull` at once, before any waiting. When
  `deadline` (on the running loop's clock, `loop.time()`, counted by the caller from the request's arrival)
  passes first, it raises `DispatchTimeout`; `turn_away()` raises `TurnedAway` in every waiter at once. A waiter
  cancelled while queued leaves the queue; one cancelled in the same tick as it was handed a slot gives that slot
  back.
- Readiness is pushed: `set_workers`, `worker_ready`, `worker_draining` and `worker_gone` change the ready set
  and, within the same call, hand every slot they free to the waiters, which resume on the loop's next turn.
  Nothing here polls or sleeps. A worker that is draining or gone gets no new request; the requests it already
  holds keep their slots until their holders release them.
- `on_demand()` is called synchronously when a request arrives and no worker is ready at all, so that the
  first request to an endpoint scaled to zero starts a worker without waiting for the autoscaler's next tick.
  It must be cheap and must not block; an exception from it is logged and the request is still served.
- The autoscaler's figures are O(1): `queued`, `in_flight`, `oldest_wait()`, `in_flight_by_worker` (a live
  read-only view holding every ready worker and every other worker with a request still in flight) and
  `idle_for(worker)` (seconds since its last request ended; 0 while it holds one).
- Leased slots (`leased=True`, when `max_concurrent_per_worker` holds across gateway processes): a worker takes at
  most as many requests from this dispatcher as `set_slots` last gave it (0 until then, and never more than
  `max_concurrent_per_worker`), the slots this process holds of it. `on_slots_wanted()` is called when a worker
  turns ready, and when a request queues while a ready worker holds fewer slots here than the limit;
  `on_slot_freed(worker)` when a request ends on a worker still holding as many requests as its slots or more
  (a slot to hand back), or on a worker that takes no new request. Both are cheap and never block, as
  `on_demand`. A lower count takes no request back: the worker gets no new one until it is below. Without
  `leased`, every ready worker has `max_concurrent_per_worker` slots and neither hook is called.
- A cold start's hand-off is timed: when `worker_ready` finds requests waiting, the first of them to resume
  with that worker adds the seconds since the push to `first_dispatch_seconds` and one to `first_dispatches`
  (totals, for `/metrics`), so readiness reaching a waiting request is measured, not assumed.

Everything runs synchronously between awaits on one loop, so no lock is needed and none is ever held while user
code runs. The fast path (a free slot, nobody waiting) allocates only the `Lease`; a queued request adds one
future, one timer handle and one queue node. Choosing a worker scans the ready workers: an endpoint runs at most
`max_replicas` (≤ 1000, usually a handful), and a scan keeps release and readiness changes O(1) where a heap
would need re-keying on every release.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType

log = logging.getLogger(__name__)


class DispatchError(Exception):
    """A request that could not be given a worker."""


class QueueFull(DispatchError):
    """The endpoint's queue is at its bound; the client should come back after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"queue full, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class TurnedAway(DispatchError):
    """The endpoint stopped taking requests while this one waited (it failed: no worker is coming)."""


class DispatchTimeout(DispatchError):
    """The request's deadline passed before a worker had a free slot for it."""


class Lease:
    """One request's claim on a worker slot; made by `EndpointDispatcher.acquire`, entered once."""

    __slots__ = ("_deadline", "_dispatcher", "_worker")

    def __init__(self, dispatcher: EndpointDispatcher, deadline: float) -> None:
        self._dispatcher = dispatcher
        self._deadline = deadline
        self._worker = ""

    async def __aenter__(self) -> str:
        dispatcher = self._dispatcher
        worker = dispatcher._take_free()
        if worker is None:
            worker = await dispatcher._wait(self._deadline)
        self._worker = worker
        return worker

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._dispatcher._release(self._worker)


class EndpointDispatcher:
    """The queue and the ready workers of one endpoint; see the module docstring for the contract."""

    def __init__(
        self,
        *,
        queue_limit: int,
        max_concurrent_per_worker: int,
        on_demand: Callable[[], None] | None = None,
        min_retry_after: float = 1.0,
        leased: bool = False,
        on_slots_wanted: Callable[[], None] | None = None,
        on_slot_freed: Callable[[str], None] | None = None,
    ) -> None:
        if queue_limit < 0:
            raise ValueError("queue_limit must be 0 or more")
        if max_concurrent_per_worker < 1:
            raise ValueError("max_concurrent_per_worker must be 1 or more")
        self.queue_limit = queue_limit
        self.max_concurrent_per_worker = max_concurrent_per_worker
        self.on_demand = on_demand
        self.min_retry_after = min_retry_after
        self.leased = leased
        self.on_slots_wanted = on_slots_wanted if leased else None
        self.on_slot_freed = on_slot_freed if leased else None
        # Leased: worker -> the slots this process holds of it (set_slots), kept while it is not ready too.
        self._slots: dict[str, int] = {}
        # Ready worker -> the requests it may hold at once from here: `max_concurrent_per_worker`, or leased, its
        # slots under that bound. One lookup in `_pick`, recomputed only when a bound or a slot count changes.
        self._caps: dict[str, int] = {}
        # Leased: ready workers holding fewer slots here than the limit, so a queued request asks for slots only
        # when asking can get it one.
        self._short = 0
        # A dict rather than a set: its insertion order makes ties go to the longest-ready worker, the same way
        # on every run.
        self._ready: dict[str, None] = {}
        self._load: dict[str, int] = {}
        self._load_view = MappingProxyType(self._load)
        self._in_flight = 0
        # worker -> loop time its load last fell to 0; absent while it holds a request.
        self._idle_since: dict[str, float] = {}
        # Waiter future -> loop time it was queued. OrderedDict pops its head and deletes from its middle in
        # O(1); a plain dict's pop-first degrades as deleted slots pile up at its front.
        self._waiters: OrderedDict[asyncio.Future[str], float] = OrderedDict()
        # Worker -> `perf_counter()` when it was pushed ready while requests waited, until the first of them resumes
        # with it. Not the loop's clock: uvloop's counts whole milliseconds, and a hand-off takes microseconds.
        self._ready_for_waiters: dict[str, float] = {}
        self.first_dispatches = 0
        self.first_dispatch_seconds = 0.0

    def reconfigure(self, *, queue_limit: int, max_concurrent_per_worker: int) -> None:
        """New bounds (an endpoint update). A lower cap takes no slot back: a worker above it gets no new request
        until it is below; a higher one hands the new slots to waiters at once."""
        if queue_limit < 0 or max_concurrent_per_worker < 1:
            raise ValueError("queue_limit must be 0 or more and max_concurrent_per_worker 1 or more")
        self.queue_limit = queue_limit
        self.max_concurrent_per_worker = max_concurrent_per_worker
        for worker in self._caps:
            self._caps[worker] = self._cap(worker)
        self._count_short()
        self._dispatch()

    def set_slots(self, worker_id: str, slots: int) -> None:
        """Leased: `worker_id` may hold `slots` requests from here (see the module docstring); more hands the new
        ones to waiters at once."""
        if slots < 0:
            raise ValueError("slots must be 0 or more")
        if slots:
            self._slots[worker_id] = slots
        else:
            self._slots.pop(worker_id, None)
        if worker_id in self._caps:
            self._caps[worker_id] = self._cap(worker_id)
            self._count_short()
            self._dispatch()

    def slots(self, worker_id: str) -> int:
        """The requests `worker_id` may hold at once from here now (0 when it is not ready)."""
        return self._caps.get(worker_id, 0)

    def _count_short(self) -> None:
        if self.leased:
            limit = self.max_concurrent_per_worker
            self._short = sum(1 for cap in self._caps.values() if cap < limit)

    def _cap(self, worker: str) -> int:
        if self.leased:
            return min(self._slots.get(worker, 0), self.max_concurrent_per_worker)
        return self.max_concurrent_per_worker

    # Figures for the autoscaler and /metrics.

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiters)

    @property
    def in_flight(self) -> int:
        """Requests holding a slot, on any worker."""
        return self._in_flight

    @property
    def in_flight_by_worker(self) -> Mapping[str, int]:
        """Live read-only view: ready workers (0 when idle) and any other worker still holding requests."""
        return self._load_view

    @property
    def ready_workers(self) -> int:
        """Workers that take new requests."""
        return len(self._ready)

    def is_ready(self, worker_id: str) -> bool:
        """Whether `worker_id` takes new requests."""
        return worker_id in self._ready

    def idle_for(self, worker_id: str) -> float:
        """Seconds `worker_id` has held no request (since it became ready, or its last request ended); 0 while
        it holds one or when it is unknown. Call it on the dispatcher's loop."""
        since = self._idle_since.get(worker_id)
        return 0.0 if since is None else asyncio.get_running_loop().time() - since

    def oldest_wait(self) -> float:
        """Seconds the oldest queued request has waited; 0 when none waits. Call it on the dispatcher's loop."""
        if not self._waiters:
            return 0.0
        queued_at = next(iter(self._waiters.values()))
        return asyncio.get_running_loop().time() - queued_at

    # Readiness, pushed by the health prober, worker pings and the reconciler.

    def set_workers(self, worker_ids: Iterable[str]) -> None:
        """Make exactly `worker_ids` the ready workers (after a restart or a full resync); the rest drain."""
        wanted = dict.fromkeys(worker_ids)
        for worker in [w for w in self._ready if w not in wanted]:
            self._retire(worker)
        for worker in wanted:
            if worker not in self._ready:
                self._became_ready(worker)
        self._dispatch()

    def worker_ready(self, worker_id: str) -> None:
        """`worker_id` takes requests from now on; waiters are handed its slots before this returns."""
        if worker_id in self._ready:
            return
        self._became_ready(worker_id)
        if self._waiters:
            self._ready_for_waiters[worker_id] = time.perf_counter()
        self._dispatch()

    def worker_draining(self, worker_id: str) -> None:
        """`worker_id` gets no new request; the ones it holds finish and release their slots as usual."""
        self._retire(worker_id)

    def worker_gone(self, worker_id: str) -> None:
        """`worker_id` no longer exists. Its holders see their upstream call fail and release as usual, so the
        bookkeeping is the same as for a drain; this name says what the caller observed."""
        self._retire(worker_id)

    # Dispatch.

    def turn_away(self) -> None:
        """Raise `TurnedAway` in every request waiting now, at once: the endpoint failed, so waiting out their
        deadlines would only delay the same answer."""
        waiters = list(self._waiters)
        self._waiters.clear()
        for future in waiters:
            if not future.done():
                future.set_exception(TurnedAway())

    def acquire(self, deadline: float) -> Lease:
        """A slot on a ready worker, held for the `async with` body; see the module docstring."""
        return Lease(self, deadline)

    def _take_free(self) -> str | None:
        """A slot at once, when one is free. While requests wait no slot is free (each freed slot goes to them
        in the call that frees it), so the scan is skipped."""
        if self._waiters:
            return None
        worker = self._pick()
        if worker is not None:
            self._claim(worker)
        return worker

    async def _wait(self, deadline: float) -> str:
        if not self._ready and self.on_demand is not None:
            try:
                self.on_demand()
            except Exception:
                log.exception("on_demand hook failed; the request waits for the autoscaler")
        if len(self._waiters) >= self.queue_limit:
            raise QueueFull(self._retry_after())
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline <= now:
            raise DispatchTimeout()
        future: asyncio.Future[str] = loop.create_future()
        self._waiters[future] = now
        if self._short and self.on_slots_wanted is not None:
            self._announce_wanted()
        timer = loop.call_at(deadline, self._expire, future)
        try:
            worker = await future
        except BaseException:
            self._waiters.pop(future, None)
            # Cancelled in the same tick as it was handed a slot: the future holds a worker that the body will
            # never release, so give the slot to the next waiter now. exception() also marks a timeout that
            # raced with the cancellation as retrieved, so asyncio does not log it as lost.
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release(future.result())
            raise
        finally:
            timer.cancel()
        if self._ready_for_waiters:
            self._count_first_dispatch(worker)
        return worker

    def _announce_wanted(self) -> None:
        assert self.on_slots_wanted is not None
        try:
            self.on_slots_wanted()
        except Exception:
            log.exception("on_slots_wanted hook failed; the request waits for a slot all the same")

    def _count_first_dispatch(self, worker: str) -> None:
        pushed = self._ready_for_waiters.pop(worker, None)
        if pushed is not None:
            self.first_dispatches += 1
            self.first_dispatch_seconds += time.perf_counter() - pushed

    def _expire(self, future: asyncio.Future[str]) -> None:
        if not future.done():
            del self._waiters[future]
            future.set_exception(DispatchTimeout())

    def _pick(self) -> str | None:
        """The least-loaded ready worker with a free slot."""
        best: str | None = None
        best_load = self.max_concurrent_per_worker
        load = self._load
        caps = self._caps
        for worker in self._ready:
            current = load[worker]
            if current < best_load and current < caps[worker]:
                if current == 0:
                    return worker
                best, best_load = worker, current
        return best

    def _dispatch(self) -> None:
        """Hand free slots to waiters, oldest first, until either runs out."""
        waiters = self._waiters
        while waiters:
            worker = self._pick()
            if worker is None:
                return
            future, _ = waiters.popitem(last=False)
            # A cancelled waiter's future is done before its task runs its cleanup; skip it.
            if future.done():
                continue
            self._claim(worker)
            future.set_result(worker)

    def _claim(self, worker: str) -> None:
        if not self._load[worker]:
            self._idle_since.pop(worker, None)
        self._load[worker] += 1
        self._in_flight += 1

    def _release(self, worker: str) -> None:
        remaining = self._load[worker] - 1
        self._in_flight -= 1
        if worker in self._ready:
            self._load[worker] = remaining
            if not remaining:
                self._idle_since[worker] = asyncio.get_running_loop().time()
            if self._waiters:
                self._dispatch()
            if self.on_slot_freed is not None and remaining >= self._caps[worker]:
                self._announce_freed(worker)
            return
        if remaining:
            self._load[worker] = remaining
        else:
            del self._load[worker]
        if self.on_slot_freed is not None:
            self._announce_freed(worker)

    def _announce_freed(self, worker: str) -> None:
        assert self.on_slot_freed is not None
        try:
            self.on_slot_freed(worker)
        except Exception:
            log.exception("on_slot_freed hook failed; the slot is handed back at the broker's next pass")

    def _became_ready(self, worker: str) -> None:
        self._ready[worker] = None
        self._caps[worker] = self._cap(worker)
        self._count_short()
        if not self._load.setdefault(worker, 0):
            self._idle_since[worker] = asyncio.get_running_loop().time()
        if self.on_slots_wanted is not None:
            self._announce_wanted()

    def _retire(self, worker: str) -> None:
        self._ready_for_waiters.pop(worker, None)
        if worker in self._ready:
            del self._ready[worker]
            del self._caps[worker]
            self._count_short()
            if self.on_slot_freed is not None:
                self._announce_freed(worker)
            if not self._load[worker]:
                del self._load[worker]
                self._idle_since.pop(worker, None)

    def _retry_after(self) -> float:
        """The oldest waiter has already waited this long and is still not served, so the queue turns over no
        faster than that; a client told to come back sooner would most likely be refused again."""
        return max(self.min_retry_after, self.oldest_wait())
