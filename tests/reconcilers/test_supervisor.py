"""The supervisor's wake-ups: a loop it runs is woken by its `LoopName`; a name that is no loop's is an error
rather than a wake-up that never comes."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from dockyard.core.loops import LoopName
from dockyard.reconcilers.supervisor import Supervisor
from tests.conftest import Harness


class Counting:
    name = LoopName.JOBS
    interval = 3600.0

    def __init__(self) -> None:
        self.passes = 0
        self.ran = asyncio.Event()

    async def reconcile_once(self) -> None:
        self.passes += 1
        self.ran.set()


async def test_wake_runs_the_named_loop_now_and_refuses_an_unknown_name(harness: Harness) -> None:
    loop = Counting()
    supervisor = Supervisor(harness.context.db, CollectorRegistry())
    await supervisor.start([loop])
    try:
        await asyncio.wait_for(loop.ran.wait(), 10)  # the first pass, once the lease is taken
        loop.ran.clear()
        supervisor.wake(LoopName.JOBS)
        await asyncio.wait_for(loop.ran.wait(), 10)
        assert loop.passes == 2
        with pytest.raises(ValueError, match="is not a valid LoopName"):
            supervisor.wake("job")  # type: ignore[arg-type]
        supervisor.wake(LoopName.ENDPOINTS)  # a loop of the server's that this supervisor was not given
    finally:
        await supervisor.stop()
