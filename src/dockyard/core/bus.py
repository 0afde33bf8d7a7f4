"""The one channel between Dockyard's processes: "look again now" signals, keyed, on named topics.

Several servers and gateways share one database. The database is the truth; the bus only tells every process
that something it may be waiting on has changed, so that nothing polls the database in a loop: a job queued on
server A wakes a worker's held job-take on server B, an endpoint updated on B reaches the routing table of every
gateway, a container created on C wakes the containers loop of whichever server holds the control lease.

Contract (every implementation):
- `publish(topic, key)` is called after the commit that made the change; it never blocks and never raises for a
  delivery problem. Subscribers in this process are called within the call, in the order they subscribed; other
  processes' subscribers are called soon after (PostgreSQL: `LISTEN/NOTIFY`, db/notify.py), never before the
  commit is visible to them.
- `subscribe(topic, callback)` returns what removes the subscription. A callback is cheap, does not block and runs
  on the event loop the bus was started on; what it raises is logged and dropped.
- Delivery is at most once and may be lost (a dropped connection): whenever a bus cannot be sure it delivered
  everything (it reconnected), it calls every subscriber of every topic with `EVERYTHING`, which means "anything of
  this topic may have changed, read it all again". A waiter that wakes spuriously reads the database and waits
  again, so a lost or a spurious signal costs one read, never a wrong answer; every wait stays bounded anyway.

`LocalBus` is the in-process implementation: SQLite serves one server, and its stand-alone gateways learn of
changes by their periodic read (control/route_sync.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol

log = logging.getLogger(__name__)

# The key a subscriber receives when anything of its topic may have changed (see the module docstring).
EVERYTHING = "*"

Subscriber = Callable[[str], None]


class Topic(StrEnum):
    """What a key means on each topic."""

    JOB_QUEUED = "job_queued"  # an endpoint id: a job of it entered its queue
    JOB_CHANGED = "job_changed"  # a job id: it finished, was cancelled, or streamed a part
    WORKER_FLAGGED = "worker_flagged"  # a worker id: a job it holds was flagged to stop
    LOOP_WAKE = "loop_wake"  # a core.loops.LoopName: run that loop now, wherever it runs
    ROUTES = "routes"  # an endpoint id: the endpoint or the readiness of one of its workers changed
    DEMAND = "demand"  # an endpoint id: a request found it without a ready worker
    SLOTS = "slots"  # a worker id: its request slots were released or are wanted


class Bus(Protocol):
    def publish(self, topic: Topic, key: str) -> None: ...

    def subscribe(self, topic: Topic, callback: Subscriber) -> Callable[[], None]: ...


class Subscribers:
    """The subscriber lists of one process, by topic: what every implementation delivers to."""

    def __init__(self) -> None:
        self._by_topic: defaultdict[Topic, list[Subscriber]] = defaultdict(list)

    def add(self, topic: Topic, callback: Subscriber) -> Callable[[], None]:
        callbacks = self._by_topic[topic]
        callbacks.append(callback)

        def remove() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return remove

    def deliver(self, topic: Topic, key: str) -> None:
        for callback in tuple(self._by_topic.get(topic, ())):
            try:
                callback(key)
            except Exception:
                log.exception("a subscriber of %s failed", topic)

    def deliver_everything(self) -> None:
        """Tell every subscriber that anything may have changed (a bus reconnected)."""
        for topic in tuple(self._by_topic):
            self.deliver(topic, EVERYTHING)


class LocalBus:
    """Delivers to this process's subscribers only (see the module docstring)."""

    def __init__(self) -> None:
        self.subscribers = Subscribers()

    def publish(self, topic: Topic, key: str) -> None:
        self.subscribers.deliver(topic, key)

    def subscribe(self, topic: Topic, callback: Subscriber) -> Callable[[], None]:
        return self.subscribers.add(topic, callback)
