"""The supervisor's wake-ups: a loop it runs is woken by its `LoopName`; a name that is no loop's is an error
rather than a wake-up that never comes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

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


async def test_on_role_says_leader_before_the_first_pass_and_follower_to_the_others(harness: Harness) -> None:
    said: list[tuple[str, object]] = []
    loop = Counting()
    original = loop.reconcile_once

    async def counted() -> None:
        said.append(("pass", None))
        await original()

    loop.reconcile_once = counted  # type: ignore[method-assign]

    told = asyncio.Event()

    def recorder(who: str) -> Callable[[bool], Awaitable[None]]:
        async def on_role(leading: bool) -> None:
            said.append((who, leading))
            told.set()

        return on_role

    leader = Supervisor(harness.context.db, CollectorRegistry(), on_role=recorder("leader"))
    await leader.start([loop])
    try:
        await asyncio.wait_for(loop.ran.wait(), 10)
        told.clear()
        follower = Supervisor(harness.context.db, CollectorRegistry(), on_role=recorder("follower"))
        await follower.start([Counting()])
        try:
            await asyncio.wait_for(told.wait(), 10)
        finally:
            await follower.stop()
    finally:
        await leader.stop()
    assert said[:2] == [("leader", True), ("pass", None)]
    assert [entry for entry in said if entry[0] != "pass"] == [("leader", True), ("follower", False)]
