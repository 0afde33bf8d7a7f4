"""The live processes: every `dockyard server` and `dockyard gateway` keeps a row in `processes` while it runs.

A process inserts its row at start (`ProcessRecord.register`), heartbeats it every lease/5 seconds (a server in
its supervisor's lease task, a gateway in a task of its own, `ProcessRecord.start`), marks it `draining` on
SIGTERM and deletes it on a clean stop. Times are the database's clock on PostgreSQL (db/clock.py). A row whose
heartbeat is older than one lease period is shown as `lost`; the lease holder deletes rows lost for
`FORGET_LOST_SECONDS`. `list_processes` is the operator's view: each process with the leases it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard import __version__
from dockyard.core.status import ProcessKind, ProcessState
from dockyard.db.base import new_id
from dockyard.db.clock import now, now_sql
from dockyard.db.models import LeaseModel, ProcessModel
from dockyard.db.session import Database, is_sqlite
from dockyard.schemas.processes import HeldLease, Process

log = logging.getLogger(__name__)

# A row lost this long is deleted by the lease holder: long enough for an operator to see what died.
FORGET_LOST_SECONDS = 600.0


def new_process_id() -> str:
    """host:pid:random, unique across restarts and hosts; also the process's name as a lease holder."""
    return f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"


class ProcessRecord:
    """This process's row in `processes` (see the module docstring)."""

    def __init__(self, db: Database, kind: ProcessKind, address: str, lease_seconds: float) -> None:
        self.db = db
        self.kind = kind
        self.address = address
        self.id = new_process_id()
        self.period = lease_seconds / 5
        self.lease_seconds = lease_seconds
        self._postgres = not is_sqlite(db.url)
        self._task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        async with self.db.write() as session:
            await self._insert(session)

    async def heartbeat(self) -> None:
        """Renew the heartbeat; a row deleted meanwhile (this process was cut off long enough to be forgotten) is
        inserted again."""
        async with self.db.write() as session:
            result = await session.execute(
                update(ProcessModel).where(ProcessModel.id == self.id).values(heartbeat_at=now_sql(self._postgres))
            )
            if getattr(result, "rowcount", 0) == 0:
                await self._insert(session)

    async def drain(self) -> None:
        async with self.db.write() as session:
            await session.execute(
                update(ProcessModel)
                .where(ProcessModel.id == self.id)
                .values(state=ProcessState.DRAINING, heartbeat_at=now_sql(self._postgres))
            )

    async def remove(self) -> None:
        async with self.db.write() as session:
            await session.execute(delete(ProcessModel).where(ProcessModel.id == self.id))

    async def forget_lost(self) -> None:
        """Delete the rows whose heartbeat stopped `FORGET_LOST_SECONDS` ago (the lease holder calls it)."""
        async with self.db.write() as session:
            horizon = now_sql(self._postgres, -(self.lease_seconds + FORGET_LOST_SECONDS))
            await session.execute(delete(ProcessModel).where(ProcessModel.heartbeat_at < horizon))

    def start(self) -> None:
        """Heartbeat in a task of this process's own (a stand-alone gateway's, a draining server's), until
        `stop()`; started already, nothing changes."""
        if self._task is None:
            self._task = asyncio.create_task(self._beat(), name="process-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await asyncio.wait_for(self.heartbeat(), self.lease_seconds)
            except Exception:
                log.warning("the heartbeat of process %s failed", self.id, exc_info=True)

    async def _insert(self, session: AsyncSession) -> None:
        clock = now_sql(self._postgres)
        await session.execute(
            insert(ProcessModel).values(
                id=self.id,
                kind=self.kind,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=__version__,
                address=self.address,
                started_at=clock,
                heartbeat_at=clock,
                state=ProcessState.SERVING,
            )
        )


async def list_processes(session: AsyncSession, lease_seconds: float) -> list[Process]:
    """Every process with a row, oldest first, each with the leases it holds now; `lost` where its heartbeat is
    older than `lease_seconds`."""
    current = await now(session)
    lost_before = current - timedelta(seconds=lease_seconds)
    leases = (await session.scalars(select(LeaseModel).where(LeaseModel.expires_at > current))).all()
    rows = (await session.scalars(select(ProcessModel).order_by(ProcessModel.started_at, ProcessModel.id))).all()
    held: dict[str, list[HeldLease]] = {}
    for lease in leases:
        held.setdefault(lease.holder, []).append(
            HeldLease(
                name=lease.name,
                token=lease.token,
                acquired_at=lease.acquired_at,
                renewed_at=lease.renewed_at,
                expires_at=lease.expires_at,
                first_pass_at=lease.first_pass_at,
            )
        )
    return [
        Process(
            id=row.id,
            kind=row.kind,
            host=row.host,
            pid=row.pid,
            version=row.version,
            address=row.address,
            state=ProcessState.LOST if row.heartbeat_at < lost_before else row.state,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
            leases=held.get(row.id, []),
        )
        for row in rows
    ]
