"""The autoscaler's decision (`decide`, a pure function) and its pass against real rows on both databases."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from dockyard.control.autoscaler import Autoscaler, Bounds, Window, decide
from dockyard.core.status import PolicyType
from dockyard.db.models import EndpointModel, EventModel
from dockyard.gateway.routes import EndpointFigures, WorkerFigures
from tests.conftest import Harness


def bounds(policy: PolicyType = PolicyType.CONCURRENCY, value: float = 1, **config: float) -> Bounds:
    values = {"min_replicas": 0, "max_replicas": 3, "idle_timeout": 10, "max_concurrent_per_worker": 1, **config}
    return Bounds(
        min_replicas=int(values["min_replicas"]),
        max_replicas=int(values["max_replicas"]),
        idle_timeout=float(values["idle_timeout"]),
        max_concurrent_per_worker=int(values["max_concurrent_per_worker"]),
        policy=policy,
        value=value,
    )


def figures(queued: int = 0, in_flight: int = 0, oldest_wait: float = 0.0, *workers: WorkerFigures) -> EndpointFigures:
    return EndpointFigures("e", queued, in_flight, oldest_wait, tuple(workers))


def worker(name: str, in_flight: int = 0, idle_for: float = 0.0, ready: bool = True) -> WorkerFigures:
    return WorkerFigures(name, ready, in_flight, idle_for)


def test_concurrency_policy_wants_ceil_demand_over_value_within_max() -> None:
    decision = decide(1, figures(5, 2), bounds(value=2), Window(), 0.0)
    assert decision.replicas == 3  # ceil(7 / 2) = 4, held at max_replicas 3
    assert "max_replicas 3" in decision.reason
    assert "5 queued and 2 in flight" in decision.reason
    assert decide(1, figures(1, 2), bounds(value=2), Window(), 0.0).replicas == 2


def test_the_first_request_to_an_endpoint_at_zero_asks_for_a_worker_whatever_the_policy() -> None:
    # A queue policy of 30 s would otherwise wait 30 s before asking for anything.
    decision = decide(0, figures(1, 0, 0.01), bounds(PolicyType.QUEUE, 30), Window(), 0.0)
    assert decision.replicas == 1
    assert "no worker running" in decision.reason
    assert decide(0, figures(), bounds(PolicyType.QUEUE, 30), Window(), 0.0).replicas == 0


def test_queue_policy_scales_only_once_a_request_has_waited_longer_than_value() -> None:
    busy = (worker("a", 2),)
    assert (
        decide(
            1, figures(6, 2, 0.5, *busy), bounds(PolicyType.QUEUE, 1, max_concurrent_per_worker=2), Window(), 0
        ).replicas
        == 1
    )
    waited = decide(1, figures(6, 2, 1.5, *busy), bounds(PolicyType.QUEUE, 1, max_concurrent_per_worker=2), Window(), 0)
    assert waited.replicas == 3  # (6 + 2) / 2 = 4, held at 3
    assert "waited 1.5 s" in waited.reason


def test_a_worker_idle_for_idle_timeout_is_given_up_once_never_below_min() -> None:
    window = Window()
    seen = figures(0, 1, 0, worker("a", 1), worker("b", 0, 11.0), worker("c", 0, 4.0))
    first = decide(3, seen, bounds(PolicyType.QUEUE, 5), window, 0.0)
    assert first.replicas == 2
    assert "idle for 10 s" in first.reason
    # Until the reconciler drains b it still looks idle: the same idleness gives nothing up twice.
    assert decide(2, seen, bounds(PolicyType.QUEUE, 5), window, 1.0).replicas == 2
    assert (
        decide(
            1, figures(0, 0, 0, worker("a", 0, 30.0)), bounds(PolicyType.QUEUE, 5, min_replicas=1), Window(), 0
        ).replicas
        == 1
    )


def test_a_busy_or_recently_busy_worker_is_kept() -> None:
    seen = figures(0, 1, 0, worker("a", 1, 0.0), worker("b", 0, 9.9))
    assert decide(2, seen, bounds(PolicyType.QUEUE, 5), Window(), 0.0).replicas == 2


def test_concurrency_scales_down_only_after_a_whole_stable_window_below() -> None:
    # Least-loaded dispatch spreads light load over every worker, so none is ever idle: the stable window is
    # what brings three workers down to the one a steady single request needs.
    window = Window()
    spread = lambda: figures(0, 1, 0, worker("a", 1), worker("b", 0, 0.5), worker("c", 0, 0.5))  # noqa: E731
    assert decide(3, spread(), bounds(value=1), window, 100.0).replicas == 3
    assert decide(3, figures(0, 2, 0), bounds(value=1), window, 105.0).replicas == 3  # peak 2 meanwhile
    later = decide(3, spread(), bounds(value=1), window, 110.0)
    assert later.replicas == 2  # the highest count wanted during the window
    assert "at most 2 worker(s) wanted for 10 s" in later.reason
    # A rise above the current count resets the window.
    window = Window()
    decide(3, spread(), bounds(value=1), window, 0.0)
    assert decide(3, figures(4, 0, 0), bounds(value=1), window, 5.0).replicas == 3
    assert window.below_since is None


def test_lowered_max_replicas_brings_the_count_down_at_once() -> None:
    decision = decide(3, figures(9, 0, 0), bounds(value=1, max_replicas=1), Window(), 0.0)
    assert decision.replicas == 1
    assert "max_replicas 1" in decision.reason


async def _endpoint(harness: Harness, **worker_config: int) -> EndpointModel:
    response = await harness.client.post(
        "/gpus/v2/endpoints",
        json={
            "type": "sync",
            "name": "scaled",
            "product_id": "serverless.cpu",
            "image": "localhost/dockyard-worker:1",
            "ports": [8080],
            "worker_config": {"min_replicas": 0, "max_replicas": 3, **worker_config},
            "policy": {"type": "concurrency", "value": 2},
        },
    )
    assert response.status_code == 200, response.text
    async with harness.context.db.read() as session:
        row = await session.get(EndpointModel, response.json()["id"])
    assert row is not None
    return row


@pytest.mark.usefixtures("database_url")
async def test_a_pass_writes_the_count_and_an_event_with_the_figures(harness: Harness) -> None:
    row = await _endpoint(harness)
    context = harness.context
    route = harness.routes.get(row.id)
    assert route is not None  # the API published it to the gateway when the create committed
    route.dispatcher.queue_limit = 100
    waiters = [route.dispatcher.acquire(1e9) for _ in range(5)]
    tasks = [asyncio.create_task(lease.__aenter__()) for lease in waiters]
    await asyncio.sleep(0)
    autoscaler = Autoscaler(context, harness.routes)
    await autoscaler.reconcile_once()
    async with context.db.read() as session:
        stored = await session.get(EndpointModel, row.id)
        events = list(await session.scalars(select(EventModel).where(EventModel.object_id == row.id)))
    assert stored is not None
    assert stored.desired_replicas == 3
    assert [e.type for e in events] == ["ScaledUp"]
    assert "0 \N{RIGHTWARDS ARROW} 3 workers" in events[0].message
    assert "5 queued" in events[0].message
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # No demand any more and no worker: nothing to change, nothing recorded.
    await autoscaler.reconcile_once()
    async with context.db.read() as session:
        assert len(list(await session.scalars(select(EventModel).where(EventModel.object_id == row.id)))) == 1


@pytest.mark.usefixtures("database_url")
async def test_a_scale_up_from_zero_answering_a_request_is_timed(harness: Harness) -> None:
    row = await _endpoint(harness)
    context = harness.context
    route = harness.routes.get(row.id)
    assert route is not None
    autoscaler = Autoscaler(context, harness.routes)
    lease = route.dispatcher.acquire(1e9)
    waiter = asyncio.create_task(lease.__aenter__())
    await asyncio.sleep(0)
    # The app wires the routing table's on_demand to its own autoscaler; this one is told directly.
    autoscaler.on_demand(row.id)
    await autoscaler.reconcile_once()
    labels = {"endpoint": row.id}
    assert context.registry.get_sample_value("dockyard_autoscaler_scale_from_zero_seconds_count", labels) == 1
    seconds = context.registry.get_sample_value("dockyard_autoscaler_scale_from_zero_seconds_sum", labels)
    assert seconds is not None
    assert 0 <= seconds < 5
    # A later pass with the same demand changes nothing, so times nothing more.
    await autoscaler.reconcile_once()
    assert context.registry.get_sample_value("dockyard_autoscaler_scale_from_zero_seconds_count", labels) == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


async def _events(harness: Harness, endpoint_id: str) -> list[EventModel]:
    async with harness.context.db.read() as session:
        query = select(EventModel).where(EventModel.object_id == endpoint_id).order_by(EventModel.id)
        return list(await session.scalars(query))


@pytest.mark.usefixtures("database_url")
async def test_a_scale_up_is_held_at_the_quota_and_says_so(harness: Harness) -> None:
    """Demand for 3 workers where the organization's quota leaves room for 2 (another endpoint wants 1 of 3):
    the count stops at 2 and the event says which quota held it; with no room at all, one `ScaleUpHeld` event,
    not one per pass; room made elsewhere lets it scale on."""
    orgs = (await harness.admin.get("/admin/v1/organizations")).json()
    quota_url = f"/admin/v1/organizations/{orgs[0]['id']}/quotas"
    assert (await harness.admin.put(quota_url, json={"workers": 3})).status_code == 200
    other = await _endpoint(harness, min_replicas=1)
    row = await _endpoint(harness, max_replicas=5)
    context = harness.context
    route = harness.routes.get(row.id)
    assert route is not None
    route.dispatcher.queue_limit = 100
    tasks = [asyncio.create_task(route.dispatcher.acquire(1e9).__aenter__()) for _ in range(6)]
    await asyncio.sleep(0)
    autoscaler = Autoscaler(context, harness.routes)

    await autoscaler.reconcile_once()
    async with context.db.read() as session:
        stored = await session.get(EndpointModel, row.id)
    assert stored is not None
    assert stored.desired_replicas == 2
    (scaled,) = await _events(harness, row.id)
    assert scaled.type == "ScaledUp"
    assert scaled.message.startswith("0 \N{RIGHTWARDS ARROW} 2 workers: 6 queued")
    assert "held at 2 by the quota: quota: endpoint workers 1 used + 3 asked > 3 allowed for organization acme" in (
        scaled.message
    )

    for _ in range(2):  # no room left, and that was said: nothing more
        await autoscaler.reconcile_once()
    assert len(await _events(harness, row.id)) == 1
    tasks += [asyncio.create_task(route.dispatcher.acquire(1e9).__aenter__()) for _ in range(2)]
    await asyncio.sleep(0)
    for _ in range(3):  # more demand and still no room: said once
        await autoscaler.reconcile_once()
    held = await _events(harness, row.id)
    assert [event.type for event in held] == ["ScaledUp", "ScaleUpHeld"]
    assert held[1].message.startswith("2 workers, 4 wanted: quota: endpoint workers 1 used + 4 asked > 3 allowed")

    assert (await harness.client.delete(f"/gpus/v2/endpoints/{other.id}")).status_code == 200
    await autoscaler.reconcile_once()
    async with context.db.read() as session:
        stored = await session.get(EndpointModel, row.id)
    assert stored is not None
    assert stored.desired_replicas == 3
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
