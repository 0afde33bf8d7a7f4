"""Runs the reconcile loops, one task each, while this server holds the `reconcilers` lease.

Each loop is an object with a `name` (a `core.loops.LoopName`), an `interval` and an `async reconcile_once()`;
the supervisor calls it every `interval` seconds (sooner when `wake(name)` is called), logs and counts a pass that
raises, backs off, and carries on: one bad pass must never kill a loop (kopf's and controller-runtime's rule).

Only one server per database reconciles at a time. The lease is a row (`leases.reconcilers`) whose holder
renews it every few seconds; a server that dies loses it after `LEASE_SECONDS` and another takes over. The
guarded writes in every reconciler make a brief overlap of two holders harmless anyway.

A server serves the whole API and the gateway whether it leads or not; what feeds its gateway's table differs
(the endpoint reconciler while it leads, a route sync otherwise), so the composition root passes `on_role`,
awaited with True before this server's loops first run after it took the lease, and with False once it knows it
does not hold it (at start, and when it lost it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from dockyard.core.loops import LoopName
from dockyard.db.base import new_id, utcnow
from dockyard.db.models import LeaseModel
from dockyard.db.session import Database

log = logging.getLogger(__name__)

LEASE_NAME = "reconcilers"
LEASE_SECONDS = 15.0


class Loop(Protocol):
    name: LoopName
    interval: float

    async def reconcile_once(self) -> None: ...


class Supervisor:
    """Made before the loops it runs (whose server context takes its `wake`); `start(loops)` runs them."""

    def __init__(
        self, db: Database, registry: CollectorRegistry, on_role: Callable[[bool], Awaitable[None]] | None = None
    ) -> None:
        """`on_role(leading)` switches what else this server runs with its role (see the module docstring)."""
        self.db = db
        self._on_role = on_role
        self._role: bool | None = None
        self.loops: dict[LoopName, Loop] = {}
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self._wakeups: dict[LoopName, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._leader = asyncio.Event()
        self.passes = Counter("dockyard_reconcile_passes", "Reconcile passes", ["loop", "result"], registry=registry)
        self.duration = Histogram("dockyard_reconcile_seconds", "Reconcile pass duration", ["loop"], registry=registry)

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    def wake(self, name: LoopName) -> None:
        """Run loop `name` now instead of at its next tick (after an API write, say). A name that is no
        `LoopName` raises `ValueError`; a loop this supervisor does not run (none before `start`, or not among a
        test's partial set) has no pass to run sooner, and nothing happens."""
        if event := self._wakeups.get(LoopName(name)):
            event.set()

    async def start(self, loops: list[Loop]) -> None:
        """Run `loops` (one task each) while this server holds the lease, until `stop()`."""
        self.loops = {loop.name: loop for loop in loops}
        self._wakeups = {name: asyncio.Event() for name in self.loops}
        self._tasks.append(asyncio.create_task(self._hold_lease(), name="lease"))
        for name in self.loops:
            self._tasks.append(asyncio.create_task(self._run(name), name=f"loop:{name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for loop in self.loops.values():
            # A loop that owns tasks or connections of its own (the endpoint reconciler's prober) has `close()`.
            if (close := getattr(loop, "close", None)) is not None:
                with contextlib.suppress(Exception):
                    await close()
        if self._leader.is_set():
            with contextlib.suppress(Exception):
                async with self.db.write() as session:
                    await session.execute(
                        update(LeaseModel)
                        .where(LeaseModel.name == LEASE_NAME, LeaseModel.holder == self.holder)
                        .values(expires_at=utcnow())
                    )

    async def try_acquire(self) -> bool:
        """Take or renew the lease; True while this server holds it."""
        now = utcnow()
        expires = now + timedelta(seconds=LEASE_SECONDS)
        async with self.db.write() as session:
            result = await session.execute(
                update(LeaseModel)
                .where(
                    LeaseModel.name == LEASE_NAME,
                    or_(LeaseModel.holder == self.holder, LeaseModel.expires_at < now),
                )
                .values(holder=self.holder, expires_at=expires)
            )
            if getattr(result, "rowcount", 0) == 1:
                return True
            exists = await session.scalar(select(LeaseModel.name).where(LeaseModel.name == LEASE_NAME))
            if exists:
                return False
        try:
            async with self.db.write() as session:
                session.add(LeaseModel(name=LEASE_NAME, holder=self.holder, expires_at=expires))
        except IntegrityError:
            return False  # another server inserted it first
        return True

    async def _hold_lease(self) -> None:
        while True:
            try:
                held = await self.try_acquire()
            except Exception:
                log.exception("lease renewal failed")
                held = False
            if held:
                await self._switch_role(True)
            if held and not self._leader.is_set():
                log.info("reconcilers lease taken by %s", self.holder)
                self._leader.set()
                for event in self._wakeups.values():
                    event.set()
            elif not held and self._leader.is_set():
                log.warning("reconcilers lease lost by %s", self.holder)
                self._leader.clear()
            if not held:
                await self._switch_role(False)
            await asyncio.sleep(LEASE_SECONDS / 3)

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

    async def _run(self, name: LoopName) -> None:
        loop = self.loops[name]
        wakeup = self._wakeups[name]
        failures = 0
        while True:
            await self._leader.wait()
            wakeup.clear()
            with self.duration.labels(name).time():
                try:
                    await loop.reconcile_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    failures += 1
                    self.passes.labels(name, "error").inc()
                    log.exception("reconcile pass of %s failed (%d in a row)", name, failures)
                else:
                    failures = 0
                    self.passes.labels(name, "ok").inc()
            delay = loop.interval * min(2**failures, 16)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=delay)
