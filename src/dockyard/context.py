"""The server's long-lived parts, built once at start and handed to routers, services and reconcilers.

Whatever a server remembers between requests lives here, one per context, and nowhere in a module: two servers in
one process (a server and a stand-alone gateway, as in tests) share nothing, and a new context starts empty."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from dockyard.config import Settings
from dockyard.core.bus import EVERYTHING, Bus, LocalBus, Topic
from dockyard.core.callers import Principal
from dockyard.core.drain import Drain
from dockyard.core.loops import LoopName
from dockyard.core.planes import PlaneChannel
from dockyard.db.models import IdcModel
from dockyard.db.session import Database
from dockyard.job_queue.inserts import JobInserts
from dockyard.job_queue.signals import JobSignals
from dockyard.runtimes.base import Runtime
from dockyard.secrets import SecretBox


@dataclass
class KeyCache:
    """What a server remembers of API keys (services/keys.py): each key's principal by the key's digest, None for
    one that is not valid, with the monotonic time it is good until; and the lookup under way for a digest, by event
    loop (a task belongs to one loop, and one server may be driven from several, as in tests)."""

    entries: dict[str, tuple[float, Principal | None]] = field(default_factory=dict)
    lookups: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Task[Principal | None]] = field(default_factory=dict)

    def forget(self) -> None:
        """Drop every entry and every lookup under way (a key was revoked)."""
        self.entries.clear()
        self.lookups.clear()


@dataclass
class WaitCache:
    """Each endpoint's explanation of its queue (services/waits.py `Snapshot`), with the monotonic time it is good
    until: the status view of a queued job reads it instead of the database."""

    entries: dict[str, tuple[float, Any]] = field(default_factory=dict)


@dataclass
class ServerContext:
    settings: Settings
    db: Database
    box: SecretBox
    installation_id: str = ""
    runtimes: dict[str, Runtime] = field(default_factory=dict)  # by IDC id
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    waker: Callable[[LoopName], None] = lambda _loop: None
    runtime_factory: Callable[[IdcModel, ServerContext], Runtime] | None = None
    # What crosses between the control plane and the data plane (core/planes.py): the services announce an
    # endpoint's change on it, and the composition root subscribes the gateway it runs.
    planes: PlaneChannel = field(default_factory=PlaneChannel)
    # What crosses between processes sharing the database (core/bus.py): in-process on SQLite, LISTEN/NOTIFY on
    # PostgreSQL, chosen by the composition root.
    bus: Bus = field(default_factory=LocalBus)
    # Set on SIGTERM (core/drain.py): /healthz then answers 503 so that a load balancer takes this process out.
    drain: Drain = field(default_factory=Drain)
    # Held while a node, its GPUs and its share of CPU and memory are chosen and recorded on a row: containers and
    # endpoint workers draw from one pool.
    gpu_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Wake-ups for async jobs (a job queued, finished or streamed), so job-take and runsync need not poll; on `bus`.
    job_signals: JobSignals = field(init=False)
    # The group commit of submitted jobs into `db`.
    job_inserts: JobInserts = field(init=False)
    keys: KeyCache = field(default_factory=KeyCache)
    waits: WaitCache = field(default_factory=WaitCache)

    def __post_init__(self) -> None:
        self.job_inserts = JobInserts(self.db)
        self.job_signals = JobSignals(self.bus)
        self.bus.subscribe(Topic.LOOP_WAKE, self._woken)

    def wake(self, loop: LoopName) -> None:
        """Ask reconcile loop `loop` to run now rather than at its next tick (after an API write), wherever it runs:
        published on the bus, whose `LOOP_WAKE` subscriber in each process hands it to that process's `waker` (the
        supervisor's, which runs it while its server leads). A name that is no `LoopName` raises `ValueError`."""
        self.bus.publish(Topic.LOOP_WAKE, LoopName(loop))

    def wake_here(self, loop: LoopName) -> None:
        """Wake loop `loop` in this process only: for a signal that every process received already."""
        self.waker(loop)

    def _woken(self, key: str) -> None:
        for loop in LoopName if key == EVERYTHING else (LoopName(key),):
            self.wake_here(loop)

    def runtime_for(self, idc_id: str) -> Runtime | None:
        return self.runtimes.get(idc_id)

    def attach_runtime(self, idc: IdcModel) -> None:
        """Build the runtime of an IDC that has none in this process yet (idempotent; no I/O: runtimes
        connect on first use). Called at start for every IDC and when an operator declares a new one."""
        if idc.id not in self.runtimes and self.runtime_factory is not None:
            self.runtimes[idc.id] = self.runtime_factory(idc, self)
