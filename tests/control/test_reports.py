"""Figures across gateway processes: the merge rule, and reports written and read back on both databases."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import update

from dockyard.control.load import load_figures
from dockyard.control.reports import Reporter, merge
from dockyard.core.bus import LocalBus, Topic
from dockyard.core.planes import EndpointConfig
from dockyard.core.status import EndpointType
from dockyard.db.base import utcnow
from dockyard.db.models import GatewayReportModel
from dockyard.gateway.routes import EndpointFigures, RouteTable, WorkerFigures
from tests.conftest import Harness


def test_merge_adds_load_and_keeps_the_longest_wait_and_the_shortest_idleness() -> None:
    here = EndpointFigures("e", 2, 1, 0.5, (WorkerFigures("a", True, 1, 0.0), WorkerFigures("b", True, 0, 30.0)))
    there = EndpointFigures("e", 3, 2, 4.0, (WorkerFigures("b", True, 2, 0.0), WorkerFigures("c", False, 0, 0.0)))
    alone = EndpointFigures("f", 1, 0, 0.1, ())
    merged = merge([here, there, alone])
    assert merged["f"] == alone
    e = merged["e"]
    assert (e.queued, e.in_flight, e.oldest_wait) == (5, 3, 4.0)
    workers = {w.worker_id: w for w in e.workers}
    assert workers["b"] == WorkerFigures("b", True, 2, 0.0)  # busy on the other gateway: not idle
    assert workers["a"].in_flight == 1
    assert workers["c"].ready is False


def _config(endpoint_id: str) -> EndpointConfig:
    return EndpointConfig(endpoint_id, "org", EndpointType.SYNC, 30.0, 1, 10)


async def test_a_report_is_read_back_merged_with_the_local_table_until_it_ages_out(harness: Harness) -> None:
    db = harness.context.db
    remote = RouteTable()
    remote.configure([_config("e1")])
    remote.worker_ready("e1", "w1", "http://127.0.0.1:1")
    route = remote.get("e1")
    assert route is not None
    holder = asyncio.create_task(route.dispatcher.acquire(1e9).__aenter__())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(route.dispatcher.acquire(1e9).__aenter__())
    await asyncio.sleep(0)
    reporter = Reporter(db, remote, "gw-1", interval=0.5)
    await reporter.report_once()

    local = RouteTable()
    local.configure([_config("e1")])
    async with db.read() as session:
        figures = await load_figures(session, local, 0.5)
    assert (figures["e1"].queued, figures["e1"].in_flight) == (1, 1)
    assert [(w.worker_id, w.in_flight) for w in figures["e1"].workers] == [("w1", 1)]

    # A report older than a few intervals is from a gateway that stopped: it no longer counts.
    async with db.write() as session:
        await session.execute(update(GatewayReportModel).values(reported_at=utcnow() - timedelta(seconds=10)))
    async with db.read() as session:
        figures = await load_figures(session, local, 0.5)
    assert (figures["e1"].queued, figures["e1"].in_flight) == (0, 0)

    # Stopping withdraws the gateway's rows at once.
    await reporter.report_once()
    await reporter.stop()
    async with db.read() as session:
        assert (await load_figures(session, RouteTable(), 0.5)) == {}
    waiter.cancel()
    holder.cancel()
    await asyncio.gather(waiter, holder, return_exceptions=True)


async def test_demand_reports_before_the_interval_ends(harness: Harness) -> None:
    db = harness.context.db
    remote = RouteTable()
    remote.configure([_config("e2")])
    reporter = Reporter(db, remote, "gw-2", interval=3600)
    reporter.start()
    try:
        route = remote.get("e2")
        assert route is not None
        await asyncio.sleep(0.2)  # the first report, of an idle endpoint
        waiter = asyncio.create_task(route.dispatcher.acquire(1e9).__aenter__())
        await asyncio.sleep(0)
        reporter.demand("e2")
        for _ in range(100):
            async with db.read() as session:
                if (
                    (await load_figures(session, RouteTable(), 3600))
                    .get("e2", EndpointFigures("e2", 0, 0, 0, ()))
                    .queued
                ):
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the demand was not reported within 5 s although the interval is an hour")
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    finally:
        await reporter.stop()


async def test_demand_is_announced_on_the_bus_once_its_report_is_written(harness: Harness) -> None:
    db = harness.context.db
    remote = RouteTable()
    remote.configure([_config("e3")])
    bus = LocalBus()
    announced: list[str] = []
    reported = asyncio.Event()
    bus.subscribe(Topic.DEMAND, lambda key: (announced.append(key), reported.set()))
    reporter = Reporter(db, remote, "gw-3", interval=3600, bus=bus)
    reporter.start()
    try:
        route = remote.get("e3")
        assert route is not None
        waiter = asyncio.create_task(route.dispatcher.acquire(1e9).__aenter__())
        await asyncio.sleep(0)
        reporter.demand("e3")
        await asyncio.wait_for(reported.wait(), 10)  # the interval is an hour
        assert announced == ["e3"]
        async with db.read() as session:
            assert (await load_figures(session, RouteTable(), 3600))["e3"].queued == 1  # committed before
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    finally:
        await reporter.stop()
