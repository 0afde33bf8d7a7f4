"""EndpointDispatcher: least-loaded dispatch under the per-worker cap, the bounded FIFO queue, pushed readiness,
deadlines, turning waiters away, cancellation and drains. Everything is asserted through counters and the order of
events."""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack

import pytest

from dockyard.gateway.dispatcher import DispatchTimeout, EndpointDispatcher, QueueFull, TurnedAway

FAR = 1e9  # a deadline no test reaches; the loop's clock counts from an arbitrary origin, far below this


async def settle() -> None:
    """Let every runnable task take its next step (a waiter woken by the dispatcher resumes in one)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def hold(dispatcher: EndpointDispatcher, release: asyncio.Event, got: list[str]) -> None:
    async with dispatcher.acquire(FAR) as worker:
        got.append(worker)
        await release.wait()


def assert_idle(dispatcher: EndpointDispatcher) -> None:
    assert dispatcher.queued == 0
    assert dispatcher.in_flight == 0
    assert all(load == 0 for load in dispatcher.in_flight_by_worker.values())


async def test_picks_the_least_loaded_worker() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=10)
    dispatcher.set_workers(["a", "b", "c"])
    async with AsyncExitStack() as outer:
        first = [await outer.enter_async_context(dispatcher.acquire(FAR)) for _ in range(3)]
        assert first == ["a", "b", "c"]
        async with AsyncExitStack() as on_b:
            await outer.enter_async_context(dispatcher.acquire(FAR))
            assert await on_b.enter_async_context(dispatcher.acquire(FAR)) == "b"
            await outer.enter_async_context(dispatcher.acquire(FAR))
            assert dict(dispatcher.in_flight_by_worker) == {"a": 2, "b": 2, "c": 2}
        assert dict(dispatcher.in_flight_by_worker) == {"a": 2, "b": 1, "c": 2}
        assert await outer.enter_async_context(dispatcher.acquire(FAR)) == "b"
        assert dispatcher.in_flight == 6
    assert_idle(dispatcher)


async def test_cap_per_worker_holds_under_200_concurrent_acquirers() -> None:
    cap = 3
    dispatcher = EndpointDispatcher(queue_limit=200, max_concurrent_per_worker=cap)
    dispatcher.set_workers(["a", "b"])
    peak: dict[str, int] = {}
    served: list[str] = []
    rng = random.Random(7)

    async def request() -> None:
        async with dispatcher.acquire(FAR) as worker:
            load = dispatcher.in_flight_by_worker[worker]
            peak[worker] = max(peak.get(worker, 0), load)
            for _ in range(rng.randint(0, 4)):
                await asyncio.sleep(0)
            served.append(worker)

    tasks = [asyncio.create_task(request()) for _ in range(200)]
    await settle()
    # Readiness changes mid-load: a third worker arrives and one drains, and the cap still holds everywhere.
    dispatcher.worker_ready("c")
    await settle()
    dispatcher.worker_draining("a")
    await asyncio.gather(*tasks)

    assert len(served) == 200
    assert set(peak) == {"a", "b", "c"}
    assert max(peak.values()) == cap
    assert_idle(dispatcher)
    assert "a" not in dispatcher.in_flight_by_worker


async def test_waiters_are_served_first_in_first_out() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    dispatcher.worker_ready("a")
    order: list[int] = []

    async def request(index: int) -> None:
        async with dispatcher.acquire(FAR):
            order.append(index)

    async with dispatcher.acquire(FAR):
        tasks = []
        for index in range(5):
            tasks.append(asyncio.create_task(request(index)))
            await settle()
            assert dispatcher.queued == index + 1
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert_idle(dispatcher)


async def test_a_newcomer_does_not_overtake_the_queue() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    order: list[str] = []

    async def request(name: str) -> None:
        async with dispatcher.acquire(FAR):
            order.append(name)
            await asyncio.sleep(0)

    early = asyncio.create_task(request("early"))
    await settle()
    dispatcher.worker_ready("a")
    # Arrives in the same tick, after the slot went to the queued request but before that request resumed.
    late = asyncio.create_task(request("late"))
    await asyncio.gather(early, late)
    assert order == ["early", "late"]


async def test_readiness_wakes_a_held_waiter_at_once() -> None:
    demand: list[int] = []
    dispatcher = EndpointDispatcher(
        queue_limit=10, max_concurrent_per_worker=1, on_demand=lambda: demand.append(dispatcher.queued)
    )
    entered = asyncio.Event()
    got: list[str] = []

    async def request() -> None:
        async with dispatcher.acquire(FAR) as worker:
            got.append(worker)
            entered.set()

    task = asyncio.create_task(request())
    await settle()
    assert dispatcher.queued == 1
    assert not entered.is_set()
    assert demand == [0]  # called on arrival, before the request was queued

    dispatcher.worker_ready("w1")
    # The slot is granted inside worker_ready itself...
    assert dispatcher.queued == 0
    assert dispatcher.in_flight_by_worker == {"w1": 1}
    # ...and the waiter runs on the very next turn of the loop: no timer or poll stands in between.
    await asyncio.sleep(0)
    assert entered.is_set()
    assert got == ["w1"]
    await task
    assert_idle(dispatcher)


async def test_the_hand_off_of_a_newly_ready_worker_to_a_waiter_is_timed_once() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=2)
    release = asyncio.Event()
    got: list[str] = []
    tasks = [asyncio.create_task(hold(dispatcher, release, got)) for _ in range(2)]
    await settle()
    dispatcher.worker_ready("w1")
    await settle()
    assert got == ["w1", "w1"]
    # Two waiters resumed with w1, but only the first is its cold start's hand-off.
    assert dispatcher.first_dispatches == 1
    assert 0 <= dispatcher.first_dispatch_seconds < 1
    # A worker pushed ready with nobody waiting has no hand-off to time.
    dispatcher.worker_ready("w2")
    async with dispatcher.acquire(FAR) as worker:
        assert worker == "w2"
    assert dispatcher.first_dispatches == 1
    release.set()
    await asyncio.gather(*tasks)
    assert_idle(dispatcher)


async def test_on_demand_only_when_no_worker_is_ready() -> None:
    calls: list[None] = []
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1, on_demand=lambda: calls.append(None))
    dispatcher.worker_ready("a")
    release = asyncio.Event()
    busy = asyncio.create_task(hold(dispatcher, release, []))
    queued = asyncio.create_task(hold(dispatcher, release, []))
    await settle()
    # One request holds the only worker and one waits for it: the worker is busy, not missing.
    assert dispatcher.queued == 1
    assert calls == []

    dispatcher.worker_draining("a")
    third = asyncio.create_task(hold(dispatcher, release, []))
    await settle()
    assert len(calls) == 1
    for task in (busy, queued, third):
        task.cancel()
    await asyncio.gather(busy, queued, third, return_exceptions=True)
    assert_idle(dispatcher)


async def test_a_failing_on_demand_hook_does_not_fail_the_request(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise RuntimeError("autoscaler down")

    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1, on_demand=broken)
    got: list[str] = []
    task = asyncio.create_task(hold(dispatcher, asyncio.Event(), got))
    await settle()
    assert dispatcher.queued == 1
    assert "on_demand hook failed" in caplog.text
    dispatcher.worker_ready("a")
    await settle()
    assert got == ["a"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert_idle(dispatcher)


async def test_queue_full_is_raised_at_once_with_retry_after() -> None:
    dispatcher = EndpointDispatcher(queue_limit=2, max_concurrent_per_worker=1, min_retry_after=2.5)
    release = asyncio.Event()
    waiting = [asyncio.create_task(hold(dispatcher, release, [])) for _ in range(2)]
    await settle()
    assert dispatcher.queued == 2

    with pytest.raises(QueueFull) as refused:
        async with dispatcher.acquire(FAR):
            pytest.fail("a request beyond the queue bound was served")
    assert refused.value.retry_after >= 2.5
    assert dispatcher.queued == 2

    dispatcher.worker_ready("a")
    release.set()
    await asyncio.gather(*waiting)
    assert_idle(dispatcher)


async def test_queue_limit_zero_refuses_whenever_no_slot_is_free() -> None:
    dispatcher = EndpointDispatcher(queue_limit=0, max_concurrent_per_worker=1)
    dispatcher.worker_ready("a")
    async with dispatcher.acquire(FAR) as worker:
        assert worker == "a"
        with pytest.raises(QueueFull):
            await dispatcher.acquire(FAR).__aenter__()
    assert_idle(dispatcher)


async def test_deadline_raises_dispatch_timeout_and_leaves_nothing_behind() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    loop = asyncio.get_running_loop()
    with pytest.raises(DispatchTimeout):
        async with dispatcher.acquire(loop.time() + 0.01):
            pytest.fail("served without a worker")
    assert dispatcher.queued == 0

    # A worker that turns up afterwards gives its slot to nobody: the expired waiter is gone.
    dispatcher.worker_ready("a")
    assert_idle(dispatcher)


async def test_a_deadline_already_past_is_refused_without_queueing() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    with pytest.raises(DispatchTimeout):
        await dispatcher.acquire(asyncio.get_running_loop().time() - 1).__aenter__()
    assert dispatcher.queued == 0


async def test_an_expired_waiter_is_skipped_for_the_next_one() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    dispatcher.worker_ready("a")
    loop = asyncio.get_running_loop()
    got: list[str] = []
    async with dispatcher.acquire(FAR):
        short = asyncio.create_task(dispatcher.acquire(loop.time() + 0.01).__aenter__())
        patient = asyncio.create_task(hold(dispatcher, asyncio.Event(), got))
        with pytest.raises(DispatchTimeout):
            await short
        assert dispatcher.queued == 1
    await settle()
    assert got == ["a"]
    assert dispatcher.in_flight_by_worker == {"a": 1}
    patient.cancel()
    await asyncio.gather(patient, return_exceptions=True)
    assert_idle(dispatcher)


async def test_cancelling_a_queued_waiter_leaves_the_queue() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    task = asyncio.create_task(hold(dispatcher, asyncio.Event(), []))
    await settle()
    assert dispatcher.queued == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dispatcher.queued == 0
    assert dispatcher.oldest_wait() == 0.0
    dispatcher.worker_ready("a")
    assert_idle(dispatcher)


async def test_cancelling_a_holder_frees_its_slot_for_the_next_waiter() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    dispatcher.worker_ready("a")
    release = asyncio.Event()
    first: list[str] = []
    second: list[str] = []
    holder = asyncio.create_task(hold(dispatcher, release, first))
    await settle()
    waiter = asyncio.create_task(hold(dispatcher, release, second))
    await settle()
    assert (first, second, dispatcher.queued) == (["a"], [], 1)

    holder.cancel()  # the client went away mid-request
    with pytest.raises(asyncio.CancelledError):
        await holder
    await settle()
    assert second == ["a"]
    assert dispatcher.in_flight_by_worker == {"a": 1}
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert_idle(dispatcher)


async def test_a_waiter_cancelled_in_the_tick_it_is_granted_gives_the_slot_back() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    body_ran: list[str] = []
    cancelled = asyncio.create_task(hold(dispatcher, asyncio.Event(), body_ran))
    await settle()
    got: list[str] = []
    behind = asyncio.create_task(hold(dispatcher, asyncio.Event(), got))
    await settle()
    assert dispatcher.queued == 2

    dispatcher.worker_ready("a")  # grants the slot to the first waiter...
    cancelled.cancel()  # ...which is cancelled before it could resume
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await settle()
    assert body_ran == []
    assert got == ["a"]
    assert dispatcher.in_flight_by_worker == {"a": 1}
    behind.cancel()
    await asyncio.gather(behind, return_exceptions=True)
    assert_idle(dispatcher)


async def test_a_body_that_raises_releases_its_slot() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    dispatcher.worker_ready("a")
    with pytest.raises(ConnectionError):
        async with dispatcher.acquire(FAR):
            raise ConnectionError("worker hung up")
    assert_idle(dispatcher)
    async with dispatcher.acquire(FAR) as worker:
        assert worker == "a"


async def test_a_drained_worker_finishes_its_requests_and_gets_no_new_one() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=2)
    dispatcher.set_workers(["old"])
    release_old = asyncio.Event()
    on_old: list[str] = []
    in_flight_on_old = asyncio.create_task(hold(dispatcher, release_old, on_old))
    await settle()
    assert on_old == ["old"]

    dispatcher.worker_draining("old")
    # "old" has a free slot but is draining: a new request waits instead.
    got: list[str] = []
    release_new = asyncio.Event()
    waiting = asyncio.create_task(hold(dispatcher, release_new, got))
    await settle()
    assert dispatcher.queued == 1
    assert dispatcher.ready_workers == 0

    # The in-flight request finishes; its slot is not handed on, and the drained worker leaves the figures.
    release_old.set()
    await in_flight_on_old
    assert dispatcher.queued == 1
    assert dict(dispatcher.in_flight_by_worker) == {}

    dispatcher.worker_ready("new")
    await settle()
    assert got == ["new"]
    release_new.set()
    await waiting
    assert dict(dispatcher.in_flight_by_worker) == {"new": 0}


async def test_a_gone_worker_keeps_counting_its_requests_until_they_release() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=2)
    dispatcher.set_workers(["a", "b"])
    release = asyncio.Event()
    holders = [asyncio.create_task(hold(dispatcher, release, [])) for _ in range(2)]
    await settle()
    assert dict(dispatcher.in_flight_by_worker) == {"a": 1, "b": 1}

    dispatcher.worker_gone("a")
    dispatcher.worker_gone("unknown")  # a worker this dispatcher never saw is ignored
    assert dict(dispatcher.in_flight_by_worker) == {"a": 1, "b": 1}
    async with dispatcher.acquire(FAR) as worker:
        assert worker == "b"
    release.set()
    await asyncio.gather(*holders)
    assert dict(dispatcher.in_flight_by_worker) == {"b": 0}
    assert dispatcher.in_flight == 0


async def test_set_workers_replaces_the_ready_set_and_wakes_waiters() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    dispatcher.set_workers(["a"])
    release = asyncio.Event()
    got: list[str] = []
    tasks = [asyncio.create_task(hold(dispatcher, release, got)) for _ in range(3)]
    await settle()
    assert (got, dispatcher.queued) == (["a"], 2)

    dispatcher.set_workers(["b", "c"])
    assert dispatcher.queued == 0
    await settle()
    assert sorted(got) == ["a", "b", "c"]
    assert dict(dispatcher.in_flight_by_worker) == {"a": 1, "b": 1, "c": 1}
    release.set()
    await asyncio.gather(*tasks)
    assert dict(dispatcher.in_flight_by_worker) == {"b": 0, "c": 0}


async def test_oldest_wait_and_retry_after_follow_the_head_of_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    # A hand-driven clock: the figures are checked exactly, with no dependence on how fast this machine runs.
    now = [100.0]
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now[0])
    dispatcher = EndpointDispatcher(queue_limit=2, max_concurrent_per_worker=1, min_retry_after=1.0)
    assert dispatcher.oldest_wait() == 0.0
    release = asyncio.Event()
    first = asyncio.create_task(hold(dispatcher, release, []))
    await settle()
    now[0] = 103.0
    second = asyncio.create_task(hold(dispatcher, release, []))
    await settle()
    now[0] = 110.0
    assert dispatcher.oldest_wait() == 10.0
    with pytest.raises(QueueFull) as refused:
        await dispatcher.acquire(FAR).__aenter__()
    assert refused.value.retry_after == 10.0

    dispatcher.worker_ready("a")  # the head leaves the queue; the younger waiter becomes the oldest
    assert dispatcher.oldest_wait() == 7.0
    release.set()
    await asyncio.gather(first, second)
    assert dispatcher.oldest_wait() == 0.0
    assert_idle(dispatcher)


def test_rejects_settings_that_could_never_serve() -> None:
    with pytest.raises(ValueError, match="max_concurrent_per_worker"):
        EndpointDispatcher(queue_limit=1, max_concurrent_per_worker=0)
    with pytest.raises(ValueError, match="queue_limit"):
        EndpointDispatcher(queue_limit=-1, max_concurrent_per_worker=1)


async def test_idle_for_counts_from_readiness_and_from_the_last_release(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [50.0]
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now[0])
    dispatcher = EndpointDispatcher(queue_limit=4, max_concurrent_per_worker=2)
    assert dispatcher.idle_for("a") == 0.0  # unknown
    dispatcher.worker_ready("a")
    now[0] = 60.0
    assert dispatcher.idle_for("a") == 10.0
    release = asyncio.Event()
    task = asyncio.create_task(hold(dispatcher, release, []))
    await settle()
    now[0] = 90.0
    assert dispatcher.idle_for("a") == 0.0  # busy
    release.set()
    await task
    now[0] = 95.0
    assert dispatcher.idle_for("a") == 5.0
    dispatcher.worker_gone("a")
    assert dispatcher.idle_for("a") == 0.0


async def test_turn_away_refuses_every_waiter_at_once_and_serves_the_next() -> None:
    dispatcher = EndpointDispatcher(queue_limit=10, max_concurrent_per_worker=1)
    got: list[str] = []
    waiters = [asyncio.create_task(hold(dispatcher, asyncio.Event(), got)) for _ in range(3)]
    await settle()
    assert dispatcher.queued == 3
    dispatcher.turn_away()
    for waiter in waiters:
        with pytest.raises(TurnedAway):
            await waiter
    assert got == []
    assert_idle(dispatcher)
    # Only those waiting then: a request after it is served as before.
    dispatcher.set_workers(["a"])
    async with dispatcher.acquire(FAR) as worker:
        assert worker == "a"


async def test_leased_slots_bound_each_worker_to_the_slots_given() -> None:
    wanted: list[str] = []
    freed: list[str] = []
    dispatcher = EndpointDispatcher(
        queue_limit=10,
        max_concurrent_per_worker=3,
        leased=True,
        on_slots_wanted=lambda: wanted.append("wanted"),
        on_slot_freed=freed.append,
    )
    dispatcher.worker_ready("a")
    assert wanted == ["wanted"]  # a worker turning ready asks for its slots
    release = asyncio.Event()
    got: list[str] = []
    first = asyncio.create_task(hold(dispatcher, release, got))
    await settle()
    assert got == []
    assert dispatcher.queued == 1
    assert wanted == ["wanted", "wanted"]  # and says so
    dispatcher.set_slots("a", 1)
    await settle()
    assert got == ["a"]
    second = asyncio.create_task(hold(dispatcher, release, got))
    await settle()
    assert got == ["a"]
    assert dispatcher.queued == 1
    dispatcher.set_slots("a", 5)  # more than max_concurrent_per_worker: bounded by it
    await settle()
    assert got == ["a", "a"]
    assert dispatcher.slots("a") == 3
    dispatcher.set_slots("a", 1)  # lowered below the requests held: none is taken back
    assert dispatcher.in_flight_by_worker["a"] == 2
    assert freed == []
    release.set()
    await asyncio.gather(first, second)
    assert freed == ["a"]  # the request that ended above the count hands a slot back, the last one does not
    assert_idle(dispatcher)


async def test_without_leased_slots_every_ready_worker_takes_its_limit_and_no_hook_is_called() -> None:
    calls: list[str] = []
    dispatcher = EndpointDispatcher(
        queue_limit=10,
        max_concurrent_per_worker=2,
        on_slots_wanted=lambda: calls.append("w"),
        on_slot_freed=calls.append,
    )
    dispatcher.worker_ready("a")
    dispatcher.set_slots("a", 0)  # ignored without leasing
    async with dispatcher.acquire(FAR), dispatcher.acquire(FAR):
        assert dispatcher.in_flight_by_worker["a"] == 2
    assert calls == []


async def test_leased_a_request_queued_behind_workers_holding_their_whole_limit_asks_for_no_slot() -> None:
    wanted: list[str] = []
    dispatcher = EndpointDispatcher(
        queue_limit=10, max_concurrent_per_worker=1, leased=True, on_slots_wanted=lambda: wanted.append("w")
    )
    dispatcher.worker_ready("a")
    dispatcher.set_slots("a", 1)
    wanted.clear()
    release = asyncio.Event()
    got: list[str] = []
    tasks = [asyncio.create_task(hold(dispatcher, release, got)) for _ in range(2)]
    await settle()
    assert got == ["a"]
    assert dispatcher.queued == 1
    assert wanted == []  # this process already holds every slot the worker has: asking would get nothing
    release.set()
    await asyncio.gather(*tasks)
