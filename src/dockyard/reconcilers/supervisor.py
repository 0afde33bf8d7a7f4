"""Runs the reconcile loops, one task each, while this process holds the `reconcilers` lease.

Each loop is an object with a `name` (a `core.loops.LoopName`), an `interval` and an `async reconcile_once()`;
the supervisor calls it every `interval` seconds (sooner when `wake(name)` is called), logs and counts a pass that
raises, backs off, and carries on: one bad pass must never kill a loop (kopf's and controller-runtime's rule).

Only one process per database reconciles at a time, however many servers share it. The lease is a row
(`leases.reconcilers`) with a holder, an expiry and a fencing token, its times from the database's clock on
PostgreSQL (db/clock.py):

- Its holder renews it every lease/5 s (`DOCKYARD_LEASE_SECONDS`, default 10); a candidate tries as often and
  takes it once it has expired, raising the token. A dead holder's lease is therefore taken within
  lease + lease/5 s of its last renewal; a clean stop releases it at once, so another takes it at its next try.
- The holder fences itself: once it has not renewed for a whole lease period, counted on its own monotonic clock
  from the start of its last successful renewal (so no later than the expiry the database will see), it cancels
  the passes in flight and stops its loops, before anyone else can take over.
- Every write of a pass is fenced (db/fence.py): it runs with the lease's name, holder and token in a context
  variable, which the tasks the pass starts (the prober's probes and callbacks, webhook deliveries) inherit, and
  is refused with `LeaseLost` once the lease has another token. A refused pass is counted (`lease_lost`) and
  logged once, the process stops leading, and its loops wait to lead again.

The guarded writes in every reconciler make even a brief overlap harmless; fencing makes it impossible to write.

A server serves the whole API and the gateway whether it leads or not; what feeds its gateway's table differs
(the endpoint reconciler while it leads, a route sync otherwise), so the composition root passes `on_role`,
awaited with True before this server's loops first run after it took the lease, and with False once it knows it
does not hold it (at start, and when it lost it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import ColumnElement, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from dockyard.core.loops import LoopName
from dockyard.db.clock import now_sql
from dockyard.db.fence import CURRENT_FENCE, Fence, LeaseLost
from dockyard.db.models import LeaseModel
from dockyard.db.session import Database, is_sqlite
from dockyard.services.processes import ProcessRecord, new_process_id

log = logging.getLogger(__name__)

LEASE_NAME = "reconcilers"

# How often the holder deletes the rows of processes lost for long (services/processes.py).
FORGET_EVERY_SECONDS = 60.0

T = TypeVar("T")


class Loop(Protocol):
    name: LoopName
    interval: float

    async def reconcile_once(self) -> None: ...


class _Bounded:
    """Runs one write at a time for at most a given time. `asyncio.wait_for` would wait, after its timeout, for
    the cancelled write to unwind, and a write stuck on a lock (SQLite's busy wait, a cut connection) can take
    far longer than the lease; here a write past its time is cancelled and left to end in the background."""

    def __init__(self) -> None:
        self._stray: asyncio.Task[object] | None = None

    async def run(self, write: Coroutine[object, object, T], timeout: float) -> T:
        """`write`'s result; `TimeoutError` when it has not ended within `timeout` s, or when an earlier write
        that ran out of time has not ended yet (then `write` is not run)."""
        if self._stray is not None and not self._stray.done():
            write.close()
            raise TimeoutError
        task = asyncio.ensure_future(write)
        done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.0))
        if not done:
            task.cancel()
            task.add_done_callback(_consume)
            self._stray = cast("asyncio.Task[object]", task)
            raise TimeoutError
        return task.result()


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Supervisor:
    """Made before the loops it runs (whose server context takes its `wake`); `start(loops)` runs them.
    `process`, when given, is this server's row in `processes`: heartbeaten by the lease task, and its id is the
    lease's holder name."""

    def __init__(
        self,
        db: Database,
        registry: CollectorRegistry,
        *,
        lease_seconds: float = 10.0,
        process: ProcessRecord | None = None,
        on_role: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        """`on_role(leading)` switches what else this server runs with its role (see the module docstring)."""
        self.db = db
        self._on_role = on_role
        self._role: bool | None = None
        self.lease_seconds = lease_seconds
        self.process = process
        self.loops: dict[LoopName, Loop] = {}
        self.holder = process.id if process is not None else new_process_id()
        self.fence: Fence | None = None
        self._postgres = not is_sqlite(db.url)
        self._deadline = 0.0  # monotonic: when this holder stops leading unless it renews first
        self._wakeups: dict[LoopName, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._passes: dict[LoopName, asyncio.Task[None]] = {}
        self._first_passes: set[LoopName] = set()
        self._leader = asyncio.Event()
        self._renew_now = asyncio.Event()
        self._lease_writes = _Bounded()
        self._row_writes = _Bounded()
        self._stopped = False
        self._next_forget = 0.0  # monotonic: when the holder next deletes long-lost process rows
        self.passes = Counter("dockyard_reconcile_passes", "Reconcile passes", ["loop", "result"], registry=registry)
        self.duration = Histogram("dockyard_reconcile_seconds", "Reconcile pass duration", ["loop"], registry=registry)

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    @property
    def retry_seconds(self) -> float:
        """How often the holder renews and a candidate tries."""
        return self.lease_seconds / 5

    def wake(self, name: LoopName) -> None:
        """Run loop `name` now instead of at its next tick (after an API write, say). A name that is no
        `LoopName` raises `ValueError`; a loop this supervisor does not run (none before `start`, or not among a
        test's partial set) has no pass to run sooner, and nothing happens."""
        if event := self._wakeups.get(LoopName(name)):
            event.set()

    async def start(self, loops: list[Loop]) -> None:
        """Run `loops` (one task each) while this process holds the lease, until `stop()`."""
        self.loops = {loop.name: loop for loop in loops}
        self._wakeups = {name: asyncio.Event() for name in self.loops}
        self._tasks.append(asyncio.create_task(self._hold_lease(), name="lease"))
        for name in self.loops:
            self._tasks.append(asyncio.create_task(self._run(name), name=f"loop:{name}"))

    async def stop(self) -> None:
        """Stop the loops and release the lease at once, so that another process takes it at its next try. Once
        stopped (a draining server stops it before its shutdown does), it stays stopped."""
        if self._stopped:
            return
        self._stopped = True
        tasks = [*self._tasks, *self._passes.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._passes.clear()
        for loop in self.loops.values():
            # A loop that owns tasks or connections of its own (the endpoint reconciler's prober) has `close()`.
            if (close := getattr(loop, "close", None)) is not None:
                with contextlib.suppress(Exception):
                    await close()
        if (fence := self.fence) is not None:
            self._step_down()
            with contextlib.suppress(Exception):
                async with self.db.write() as session:
                    await session.execute(
                        update(LeaseModel)
                        .where(*self._held_by(fence))
                        .values(holder="", expires_at=now_sql(self._postgres))
                    )
            log.info("%s lease released by %s", LEASE_NAME, self.holder)

    async def acquire(self) -> int | None:
        """Take the lease if it is free or expired, raising its token; the new token, or None when another
        process holds it."""
        postgres = self._postgres
        async with self.db.write() as session:
            token: int | None = await session.scalar(
                update(LeaseModel)
                .where(
                    LeaseModel.name == LEASE_NAME,
                    or_(LeaseModel.holder == self.holder, LeaseModel.expires_at < now_sql(postgres)),
                )
                .values(
                    holder=self.holder,
                    token=LeaseModel.token + 1,
                    acquired_at=now_sql(postgres),
                    renewed_at=now_sql(postgres),
                    expires_at=now_sql(postgres, self.lease_seconds),
                    first_pass_at=None,
                )
                .returning(LeaseModel.token)
                .execution_options(synchronize_session=False)
            )
            if token is not None:
                return token
            if await session.scalar(select(LeaseModel.name).where(LeaseModel.name == LEASE_NAME)):
                return None
        try:
            async with self.db.write() as session:
                await session.execute(
                    insert(LeaseModel).values(
                        name=LEASE_NAME,
                        holder=self.holder,
                        token=1,
                        acquired_at=now_sql(postgres),
                        renewed_at=now_sql(postgres),
                        expires_at=now_sql(postgres, self.lease_seconds),
                    )
                )
        except IntegrityError:
            return None  # another process inserted it first
        return 1

    async def renew(self, fence: Fence) -> bool:
        """Extend the lease held under `fence`; False when it has another holder or token now."""
        async with self.db.write() as session:
            result = await session.execute(
                update(LeaseModel)
                .where(*self._held_by(fence))
                .values(renewed_at=now_sql(self._postgres), expires_at=now_sql(self._postgres, self.lease_seconds))
            )
            return getattr(result, "rowcount", 0) == 1

    @staticmethod
    def _held_by(fence: Fence) -> tuple[ColumnElement[bool], ...]:
        return (LeaseModel.name == fence.lease, LeaseModel.holder == fence.holder, LeaseModel.token == fence.token)

    async def _hold_lease(self) -> None:
        while True:
            started = time.monotonic()
            if (fence := self.fence) is not None:
                await self._try_renew(fence, started)
            else:
                await self._try_acquire(started)
            self._stop_if_overdue()
            if self.fence is None:
                await self._switch_role(False)
            await self._keep_process_row()
            self._stop_if_overdue()
            pause = self.retry_seconds - (time.monotonic() - started)
            if self.fence is not None:
                pause = min(pause, self._deadline - time.monotonic())
            self._renew_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), max(pause, 0.0))

    def _stop_if_overdue(self) -> None:
        if self.fence is not None and time.monotonic() >= self._deadline:
            log.warning(
                "%s lease not renewed by %s for %g s: its loops stop before another process may take it",
                LEASE_NAME,
                self.holder,
                self.lease_seconds,
            )
            self._step_down()

    async def _try_renew(self, fence: Fence, started: float) -> None:
        try:
            renewed = await self._lease_writes.run(self.renew(fence), self._deadline - started)
        except Exception:
            log.warning("%s lease renewal by %s failed", LEASE_NAME, self.holder, exc_info=True)
            return  # retried; the deadline stops the loops if it keeps failing
        if renewed:
            self._deadline = started + self.lease_seconds
        elif self.fence == fence:
            log.warning("%s lease lost by %s: another process holds it", LEASE_NAME, self.holder)
            self._step_down()

    async def _try_acquire(self, started: float) -> None:
        try:
            token = await self._lease_writes.run(self.acquire(), self.lease_seconds)
        except Exception:
            log.warning("taking the %s lease failed", LEASE_NAME, exc_info=True)
            return
        if token is None:
            return
        self._deadline = started + self.lease_seconds
        self.fence = Fence(LEASE_NAME, self.holder, token)
        self._first_passes.clear()
        log.info("%s lease taken by %s with token %d", LEASE_NAME, self.holder, token)
        await self._switch_role(True)
        self._leader.set()
        for event in self._wakeups.values():
            event.set()

    async def _keep_process_row(self) -> None:
        if self.process is None:
            return
        # Bounded by the lease's deadline too: a stuck heartbeat must not hold the lease task past it.
        timeout = self.retry_seconds
        if self.fence is not None:
            timeout = min(timeout, self._deadline - time.monotonic())
        try:
            await self._row_writes.run(self.process.heartbeat(), timeout)
            if self.fence is not None and time.monotonic() >= self._next_forget:
                self._next_forget = time.monotonic() + FORGET_EVERY_SECONDS
                await self._row_writes.run(self.process.forget_lost(), timeout)
        except Exception:
            log.warning("the heartbeat of process %s failed", self.holder, exc_info=True)

    async def _switch_role(self, leading: bool) -> None:
        """Tell `on_role` of a new role: before the loops run as leader, once they start no pass as follower. A
        switch that raises is logged and tried again at the next renewal."""
        if leading == self._role:
            return
        if self._on_role is not None:
            try:
                await self._on_role(leading)
            except Exception:
                log.exception("switching this server to %s failed", "leader" if leading else "follower")
                return
        self._role = leading

    def _step_down(self) -> None:
        """Stop leading: no pass starts, and the passes in flight are cancelled."""
        self.fence = None
        self._leader.clear()
        for task in self._passes.values():
            task.cancel()

    async def _run(self, name: LoopName) -> None:
        loop = self.loops[name]
        wakeup = self._wakeups[name]
        failures = 0
        while True:
            await self._leader.wait()
            fence = self.fence
            if fence is None:
                continue
            wakeup.clear()
            CURRENT_FENCE.set(fence)  # this task's own context, copied into the pass's task and what it starts
            task = self._passes[name] = asyncio.create_task(self._pass(loop, fence), name=f"pass:{name}")
            try:
                with self.duration.labels(name).time():
                    await asyncio.wait({task})
            finally:
                self._passes.pop(name, None)
                task.cancel()
            if task.cancelled():
                self.passes.labels(name, "lease_lost").inc()
                continue
            if isinstance(error := task.exception(), LeaseLost):
                self.passes.labels(name, "lease_lost").inc()
                if self.fence == fence:
                    log.warning("a write of the %s loop was refused: %s; its loops stop", name, error)
                    self._step_down()
                    self._renew_now.set()
                continue
            if error is not None:
                failures += 1
                self.passes.labels(name, "error").inc()
                log.error("reconcile pass of %s failed (%d in a row)", name, failures, exc_info=error)
            else:
                failures = 0
                self.passes.labels(name, "ok").inc()
            delay = loop.interval * min(2**failures, 16)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=delay)

    async def _pass(self, loop: Loop, fence: Fence) -> None:
        if loop.name not in self._first_passes:
            self._first_passes.add(loop.name)
            if self._first_passes == set(self.loops):
                async with self.db.write() as session:
                    await session.execute(
                        update(LeaseModel).where(*self._held_by(fence)).values(first_pass_at=now_sql(self._postgres))
                    )
        await loop.reconcile_once()
