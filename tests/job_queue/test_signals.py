"""The job wake-ups: a watch made before a read is not missed by a notification that comes before its wait."""

from __future__ import annotations

from dockyard.core.bus import EVERYTHING, LocalBus, Topic
from dockyard.job_queue.signals import JobSignals


async def test_a_notification_before_the_wait_is_kept_by_the_watch() -> None:
    signals = JobSignals()
    with signals.watch_queued("e1") as queued, signals.watch_changed("j1") as changed:
        signals.notify_queued("e1")
        signals.notify_changed("j2")  # another job: not this watch's
        assert await queued.wait(0) is True
        assert await changed.wait(0.01) is False


async def test_waits_end_on_their_own_key_and_leave_nothing_registered() -> None:
    signals = JobSignals()
    with signals.watch_queued("e1") as queued, signals.watch_worker("e1") as worker:
        signals.notify_changed("e1")  # the same string in another kind of wait: not theirs
        assert await queued.wait(0.01) is False
        assert await worker.wait(0) is False
        signals.notify_worker("e1")
        assert await worker.wait(0) is True
    with signals.watch_changed("j1") as first, signals.watch_changed("j1") as second:
        signals.notify_changed("j1")
        assert (await first.wait(1), await second.wait(1)) == (True, True)
    with signals.watch_queued("e1"):
        pass
    signals.notify_queued("e1")  # nobody watches any more: nothing to wake
    assert not signals._queued
    assert not signals._changed
    assert not signals._workers


async def test_signals_go_through_the_bus_and_everything_wakes_every_watch_of_its_topic() -> None:
    bus = LocalBus()
    here, there = JobSignals(bus), JobSignals(bus)  # two processes' signals, as a bus between them delivers
    with there.watch_queued("e1") as queued, there.watch_queued("e2") as other:
        here.notify_queued("e1")
        assert await queued.wait(0) is True
        assert await other.wait(0) is False
    with there.watch_queued("e1") as first, there.watch_queued("e2") as second, there.watch_worker("w1") as worker:
        bus.publish(Topic.JOB_QUEUED, EVERYTHING)  # what a bus says after it may have lost signals
        assert (await first.wait(0), await second.wait(0)) == (True, True)
        assert await worker.wait(0) is False  # another topic
