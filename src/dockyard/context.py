"""The server's long-lived parts, built once at start and handed to routers, services and reconcilers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from dockyard.config import Settings
from dockyard.core.loops import LoopName
from dockyard.core.planes import PlaneChannel
from dockyard.db.models import IdcModel
from dockyard.db.session import Database
from dockyard.gateway.job_signals import JobSignals
from dockyard.runtimes.base import Runtime
from dockyard.secrets import SecretBox


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
    # Held while a node, its GPUs and its share of CPU and memory are chosen and recorded on a row: containers and
    # endpoint workers draw from one pool.
    gpu_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Wake-ups for async jobs (a job queued, finished or streamed), so job-take and runsync need not poll.
    job_signals: JobSignals = field(default_factory=JobSignals)

    def wake(self, loop: LoopName) -> None:
        """Ask reconcile loop `loop` to run now rather than at its next tick (after an API write)."""
        self.waker(loop)

    def runtime_for(self, idc_id: str) -> Runtime | None:
        return self.runtimes.get(idc_id)

    def attach_runtime(self, idc: IdcModel) -> None:
        """Build the runtime of an IDC that has none in this process yet (idempotent; no I/O: runtimes
        connect on first use). Called at start for every IDC and when an operator declares a new one."""
        if idc.id not in self.runtimes and self.runtime_factory is not None:
            self.runtimes[idc.id] = self.runtime_factory(idc, self)
