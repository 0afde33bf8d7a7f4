"""The slot broker: a worker's `max_concurrent_per_worker` holds across every gateway process on the database.

A worker's request slots (worker id, slot number below the endpoint's limit) are leases in the database
(`worker_slots`), each held by at most one process at a time, and a gateway sends a worker at most as many
requests at once as it holds slots of it. The slots move between processes by demand.

Why this design. Knative enforces the limit next to the worker (its queue-proxy, a sidecar in the pod); Dockyard
runs the user's image as it is and cannot put a process inside it, and a hop through an owner gateway per worker
would cost every request a second proxy pass. Knative's activators split each revision's slots evenly among the
live activators; an even split of 2 slots over 3 gateways leaves one with none, so its requests would starve. Here
the split follows demand, and it is strict: a process uses only the slots it holds, so the worker never sees more
than its limit whatever the number of gateways.

Rules (one `SlotBroker` per process, one task, woken at once by its data plane and by the bus):
- No database on a request's path. A request uses a slot this process holds (the dispatcher's per-worker count,
  `RouteTable.set_slots`) or waits in its endpoint's queue, with today's FIFO and deadline, while the broker takes
  free slots for it (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's single writer serializes the same statement)
  or marks slots that other processes hold as wanted and publishes `Topic.SLOTS` with the worker's id.
- A worker that turns ready in this process's table has all its free slots taken at once, whether or not a request
  waits; one still starting (before its health check passes), at once when requests wait here for its endpoint
  (the cold start they caused). They are kept while the worker is in the table (starting, ready or draining)
  unless another process wants them: when it turns ready, the requests waiting for it are handed its
  slots in the same call, with no database on the way, so a cold start's hand-off costs what it did before slots
  were leased. A process alone keeps what it took.
- A holder whose slot is wanted releases it at once when no request of its own is on it; a busy wanted slot gets
  no new request once the holder has held its worker's slots for `slot_quantum_seconds`, and is released when the
  request on it ends. Each release is published, so the process that wants it takes it at once.
- Leases. A slot expires `slot_lease_seconds` after its holder's last renewal (the database's clock on PostgreSQL);
  a holder renews all its slots in one statement every third of that. It uses them only while that lease is valid
  by its own monotonic clock, counted from before the renewal was sent and stopped a sixth of the lease early: a
  holder that cannot renew gives its slots no new request before they can expire for others (the requests already
  on them run to their end). A holder that dies frees its slots at most `slot_lease_seconds` after its last
  renewal; another process takes them at its next pass after that (a bus message, a request waiting, or its
  retry every third of the lease while its requests wait).
- The rows of a worker go with the worker's row (a foreign key that cascades); the slots of a worker that left
  this process's table are released at the broker's next pass.
- The holder learns that its slots are wanted from the bus (`Topic.SLOTS`) at once, and from every renewal, whose
  statement returns the wants too: a lost message costs a third of a lease, never a slot held twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.core.bus import EVERYTHING, Bus, Topic
from dockyard.db.base import utcnow
from dockyard.db.models import WorkerSlotModel
from dockyard.db.session import Database, is_sqlite
from dockyard.gateway.routes import RouteTable

log = logging.getLogger(__name__)

Slots = WorkerSlotModel
_LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)  # a new row's expiry: free


@dataclass
class _Held:
    """The slots this process holds of one worker."""

    endpoint_id: str
    slots: set[int] = field(default_factory=set)
    wanted: set[int] = field(default_factory=set)  # of `slots`, those another process wants
    taken_at: float = 0.0  # monotonic time of the last take


@dataclass(frozen=True)
class _Worker:
    endpoint_id: str
    ready: bool
    in_flight: int
    limit: int
    queued: int  # the endpoint's requests waiting here


class SlotBroker:
    """See the module docstring. `holder` names this process in the rows; `clock` is monotonic."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        routes: RouteTable,
        bus: Bus,
        holder: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.routes = routes
        self.bus = bus
        self.holder = holder
        self.clock = clock
        self.lease = settings.slot_lease_seconds
        self.quantum = settings.slot_quantum_seconds
        self.renew_every = self.lease / 3
        self._postgres = not is_sqlite(db.url)
        self.held: dict[str, _Held] = {}
        self._valid_until = 0.0  # monotonic: the slots held are used until then
        self._renew_at = 0.0
        self._rows_made: dict[str, int] = {}  # worker -> slot rows known to exist (0 .. n-1)
        self._tried: set[str] = set()  # workers in the table whose free slots were taken once
        self._blocked: dict[str, float] = {}  # worker -> until when a take that found nothing is not tried again
        self._wanting: set[str] = set()  # workers with slots this process marked wanted
        self._check: set[str] = set()  # held workers whose wants the bus says changed
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe = bus.subscribe(Topic.SLOTS, self._on_bus)

    # Announcements: the planes' channel (this process's data plane) and the bus (every process).

    def slots_wanted(self, endpoint_id: str) -> None:
        self._wake.set()

    def slot_freed(self, endpoint_id: str, worker_id: str) -> None:
        self._wake.set()

    def _on_bus(self, key: str) -> None:
        if key == EVERYTHING:
            self._check.update(self.held)
            self._blocked.clear()
        else:
            self._check.add(key)
            self._blocked.pop(key, None)
        self._wake.set()

    # The task.

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="slot-broker")

    async def stop(self) -> None:
        """Stop, and hand every slot held back at once (a process that shuts down frees its slots for the others
        now, not at their expiry)."""
        self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        workers = list(self.held)
        for worker_id, held in self.held.items():
            self.routes.set_slots(held.endpoint_id, worker_id, 0)
        self.held.clear()
        try:
            async with self.db.write() as session:
                await session.execute(update(Slots).where(Slots.holder == self.holder).values(holder=""))
        except Exception:
            log.exception("the slots held could not be handed back; they come free at their expiry")
            return
        for worker_id in workers:
            self.bus.publish(Topic.SLOTS, worker_id)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                due = await self.pass_once()
            except Exception:
                log.exception("slot broker pass failed; trying again shortly")
                due = self.renew_every / 4
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(due, 0.0))

    async def pass_once(self) -> float:
        """Renew, hand back, take and want as the table stands now; returns the seconds until a pass is due."""
        now = self.clock()
        if self.held and now >= self._renew_at:
            await self._renew()
        now = self.clock()
        if self.held and now >= self._valid_until - self.lease / 6:
            log.warning(
                "slot leases of %s could not be renewed in time; their workers get no new request here", self.holder
            )
            for worker_id, held in self.held.items():
                self.routes.set_slots(held.endpoint_id, worker_id, 0)
            self.held.clear()
        if self._check:
            await self._read_wants()
        view = self._view()
        due = self.renew_every
        for worker_id in list(self.held):
            due = min(due, await self._give_back(worker_id, view.get(worker_id), now))
        await self._take_and_want(view, now)
        if self.held:
            due = min(due, self._renew_at - self.clock(), self._valid_until - self.lease / 6 - self.clock())
        return due

    # The table, as the broker reads it.

    def _view(self) -> dict[str, _Worker]:
        view: dict[str, _Worker] = {}
        for figures in self.routes.figures():
            route = self.routes.get(figures.endpoint_id)
            if route is None:
                continue
            limit = route.config.max_concurrent_per_worker
            for worker in figures.workers:
                view[worker.worker_id] = _Worker(
                    figures.endpoint_id, worker.ready, worker.in_flight, limit, figures.queued
                )
        return view

    # Holding.

    def _expiry(self) -> Any:
        """The expiry of a slot taken or renewed now: on the database's clock on PostgreSQL."""
        if self._postgres:
            return func.now() + timedelta(seconds=self.lease)
        return utcnow() + timedelta(seconds=self.lease)

    def _now(self) -> Any:
        return func.now() if self._postgres else utcnow()

    def _leased(self, started: float) -> None:
        """A take or renewal sent at `started` (monotonic) succeeded: the slots are good until a lease later."""
        self._valid_until = started + self.lease
        self._renew_at = started + self.renew_every

    async def _renew(self) -> None:
        started = self.clock()
        try:
            async with self.db.write() as session:
                rows = (
                    await session.execute(
                        update(Slots)
                        .where(Slots.holder == self.holder)
                        .values(expires_at=self._expiry())
                        .returning(Slots.worker_id, Slots.slot, Slots.wanted_by)
                    )
                ).all()
        except Exception:
            log.exception("slot lease renewal failed; retrying")
            self._renew_at = self.clock() + self.renew_every / 4
            return
        self._leased(started)
        in_db: dict[str, dict[int, str]] = {}
        for worker_id, slot, wanted_by in rows:
            in_db.setdefault(worker_id, {})[slot] = wanted_by
        strays: list[tuple[str, int]] = []
        for worker_id, slots in in_db.items():
            held = self.held.get(worker_id)
            strays += [(worker_id, s) for s in slots if held is None or s not in held.slots]
        for worker_id, held in list(self.held.items()):
            slots = in_db.get(worker_id, {})
            held.slots &= set(slots)
            held.wanted = {s for s in held.slots if slots[s] not in ("", self.holder)}
            if not held.slots:
                del self.held[worker_id]
            self.routes.set_slots(held.endpoint_id, worker_id, len(held.slots))
        if strays:
            await self._release_rows(strays)

    async def _read_wants(self) -> None:
        workers = [w for w in self._check if w in self.held]
        self._check.clear()
        if not workers:
            return
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(Slots.worker_id, Slots.slot, Slots.wanted_by).where(
                        Slots.worker_id.in_(workers), Slots.holder == self.holder
                    )
                )
            ).all()
        for worker_id in workers:
            self.held[worker_id].wanted = set()
        for worker_id, slot, wanted_by in rows:
            held = self.held[worker_id]
            if slot in held.slots and wanted_by not in ("", self.holder):
                held.wanted.add(slot)

    async def _give_back(self, worker_id: str, worker: _Worker | None, now: float) -> float:
        """Hand back what this process should no longer hold of one worker; returns the seconds until a busy
        wanted slot's quantum ends (the renewal interval when none is pending)."""
        held = self.held[worker_id]
        due = self.renew_every
        in_flight = worker.in_flight if worker is not None else 0
        if worker is None:
            keep = 0
        else:
            keep = sum(1 for s in held.slots if s < worker.limit)  # a lowered limit's higher slots are not used
            wanted = len(held.wanted & held.slots)
            if wanted:
                idle = max(keep - in_flight, 0)
                now_free = min(wanted, idle)
                busy = wanted - now_free
                keep -= now_free
                if busy and now - held.taken_at >= self.quantum:
                    keep -= busy
                elif busy:
                    due = held.taken_at + self.quantum - now
        self.routes.set_slots(held.endpoint_id, worker_id, keep)
        surplus = len(held.slots) - max(keep, in_flight)
        if surplus > 0:
            limit = worker.limit if worker is not None else 0
            order = sorted(held.slots, key=lambda s: (s < limit, s not in held.wanted, -s))
            await self._release_rows([(worker_id, s) for s in order[:surplus]])
        return due

    async def _release_rows(self, rows: Iterable[tuple[str, int]]) -> None:
        by_worker: dict[str, list[int]] = {}
        for worker_id, slot in rows:
            by_worker.setdefault(worker_id, []).append(slot)
        async with self.db.write() as session:
            for worker_id, slots in by_worker.items():
                await session.execute(
                    update(Slots)
                    .where(Slots.worker_id == worker_id, Slots.slot.in_(slots), Slots.holder == self.holder)
                    .values(holder="")
                )
        for worker_id, slots in by_worker.items():
            if held := self.held.get(worker_id):
                held.slots.difference_update(slots)
                held.wanted.difference_update(slots)
                if not held.slots:
                    del self.held[worker_id]
            self.bus.publish(Topic.SLOTS, worker_id)

    # Taking and wanting.

    async def _take_and_want(self, view: dict[str, _Worker], now: float) -> None:
        """Take the free slots of workers that just turned ready, and as many as the requests waiting need; mark
        wanted what others hold and these requests still need. A worker whose take found nothing is not tried
        again until the bus says its slots changed, or a third of a lease later."""
        self._tried &= set(view)
        needs = {worker.endpoint_id: worker.queued for worker in view.values()}
        marked: list[str] = []
        for worker_id, worker in view.items():
            mine = len(self.held[worker_id].slots) if worker_id in self.held else 0
            if mine >= worker.limit:
                continue
            need = needs[worker.endpoint_id]
            if worker_id not in self._tried:
                if not worker.ready and need <= 0:
                    continue  # starting, and nothing waits here: the process whose requests wait takes them first
            elif need <= 0 or not worker.ready or self._blocked.get(worker_id, 0.0) > now:
                continue
            self._tried.add(worker_id)
            got = await self._take(worker_id, worker, worker.limit - mine)
            need -= got
            # A process asked to give up slots of this worker asks for no more of it: two processes wanting each
            # other's slots would only trade them every quantum.
            asked = worker_id in self.held and bool(self.held[worker_id].wanted)
            if need > 0 and worker.ready and mine + got < worker.limit and not asked:
                count = await self._want(worker_id, worker.limit, min(need, worker.limit - mine - got))
                if count:
                    marked.append(worker_id)
                need -= count
                self._blocked[worker_id] = now + self.renew_every
            needs[worker.endpoint_id] = need
        if unwanted := [w for w in self._wanting if w not in view or not view[w].queued]:
            async with self.db.write() as session:
                await session.execute(
                    update(Slots)
                    .where(Slots.worker_id.in_(unwanted), Slots.wanted_by == self.holder)
                    .values(wanted_by="")
                )
            self._wanting.difference_update(unwanted)
        self._wanting.update(marked)
        for worker_id in marked:
            self.bus.publish(Topic.SLOTS, worker_id)

    def _rows(self, worker_id: str, limit: int) -> Any:
        """The statement that makes the worker's slot rows up to `limit`, or None when they are known to exist."""
        if self._rows_made.get(worker_id, 0) >= limit:
            return None
        dialect: Any = postgresql if self._postgres else sqlite
        rows = [
            {"worker_id": worker_id, "slot": s, "holder": "", "wanted_by": "", "expires_at": _LONG_AGO}
            for s in range(limit)
        ]
        return dialect.insert(Slots).values(rows).on_conflict_do_nothing()

    async def _take(self, worker_id: str, worker: _Worker, count: int) -> int:
        """Take up to `count` free slots of the worker; returns how many were taken."""
        started = self.clock()
        free = (
            select(Slots.slot)
            .where(
                Slots.worker_id == worker_id,
                Slots.slot < worker.limit,
                or_(Slots.holder == "", Slots.holder == self.holder, Slots.expires_at < self._now()),
            )
            .order_by(Slots.slot)
            .limit(count)
            .with_for_update(skip_locked=True)
        )
        held = self.held.get(worker_id)
        if held is not None:
            free = free.where(Slots.slot.not_in(held.slots))
        rows = self._rows(worker_id, worker.limit)
        try:
            async with self.db.write() as session:
                if rows is not None:  # in the take's own transaction: a cold start's hand-off is one write
                    await session.execute(rows)
                taken = (
                    await session.scalars(
                        update(Slots)
                        .where(and_(Slots.worker_id == worker_id, Slots.slot.in_(free.scalar_subquery())))
                        .values(holder=self.holder, expires_at=self._expiry(), wanted_by="")
                        .returning(Slots.slot)
                    )
                ).all()
        except IntegrityError:
            return 0  # the worker's row is gone: the table forgets the worker at its next sync
        self._rows_made[worker_id] = max(self._rows_made.get(worker_id, 0), worker.limit)
        if not taken:
            return 0
        if held is None:
            if not self.held:
                self._leased(started)
            held = self.held[worker_id] = _Held(worker.endpoint_id)
        held.slots.update(taken)
        held.taken_at = self.clock()
        self.routes.set_slots(worker.endpoint_id, worker_id, min(len(held.slots), worker.limit))
        return len(taken)

    async def _want(self, worker_id: str, limit: int, count: int) -> int:
        """Mark up to `count` of the slots other processes hold of the worker as wanted by this one."""
        held_elsewhere = (
            select(Slots.slot)
            .where(
                Slots.worker_id == worker_id,
                Slots.slot < limit,
                Slots.holder.not_in(("", self.holder)),
                Slots.wanted_by.in_(("", self.holder)),
            )
            .order_by(Slots.wanted_by.desc(), Slots.slot)
            .limit(count)
        )
        async with self.db.write() as session:
            marked = (
                await session.scalars(
                    update(Slots)
                    .where(Slots.worker_id == worker_id, Slots.slot.in_(held_elsewhere.scalar_subquery()))
                    .values(wanted_by=self.holder)
                    .returning(Slots.slot)
                )
            ).all()
        return len(marked)


def slot_broker(context: ServerContext, routes: RouteTable, holder: str) -> SlotBroker | None:
    """The process's broker over its gateway's table, subscribed to the table's announcements; None with
    `global_concurrency` off (each process then holds the limit on its own, the table leasing nothing)."""
    if not context.settings.global_concurrency:
        return None
    broker = SlotBroker(context.db, context.settings, routes, context.bus, holder)
    context.planes.subscribe(slots_wanted=broker.slots_wanted, slot_freed=broker.slot_freed)
    return broker
