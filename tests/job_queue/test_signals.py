"""The job wake-ups: a watch made before a read is not missed by a notification that comes before its wait."""

from __future__ import annotations

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
