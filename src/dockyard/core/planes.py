"""What crosses between the control plane and the data plane, and the one channel it crosses on.

The data plane (gateway/) serves every sync request from its routing table and imports nothing of the control
plane. The control plane keeps that table in step with the database: the parts whose work that is (the endpoint
reconciler and its health prober in the server, a stand-alone gateway's route sync) are handed the table by their
composition root. Everything else that crosses goes through a `PlaneChannel`, which each composition root (app.py,
gateway_app.py) makes first and hands to both sides, so that neither side imports the other and no hook is set on
an object after it was built:

- down, `endpoint_changed(config)`: announced by the API's services once an endpoint's create or update has
  committed, so that the endpoint is served at once rather than at the endpoint reconciler's next pass;
- up, `demand(endpoint_id)`: a request found the endpoint without a ready worker (the autoscaler answers it at
  once, or a stand-alone gateway's reporter reports it at once);
- up, `worker_unreachable(endpoint_id, worker_id, reason)`: the proxy could not reach a worker (the prober checks
  it again at once);
- up, `slots_wanted(endpoint_id)` and `slot_freed(endpoint_id, worker_id)`, with the global concurrency limit: a
  request waits for want of a worker's slot, or a worker turned ready; a request ended on a slot to hand back, or
  on a worker that takes no new request (control/slots.py, the process's slot broker, answers both at once).

Subscribers are called in the announcer's own turn, in the order they subscribed, so when an announcement returns
every subscriber has seen it; they must be cheap and must not block, and what one raises reaches the announcer.
An announcement no one subscribed to is dropped: what it says reaches the table anyway, at the next pass that
reads the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dockyard.core.status import EndpointStatus, EndpointType

EndpointChanged = Callable[["EndpointConfig"], None]
Demand = Callable[[str], None]
WorkerUnreachable = Callable[[str, str, str], None]
SlotsWanted = Callable[[str], None]
SlotFreed = Callable[[str, str], None]
_Subscriber = TypeVar("_Subscriber")


@dataclass(frozen=True)
class EndpointConfig:
    """What the gateway needs to serve one endpoint; built from its row by the control plane."""

    endpoint_id: str
    org_id: str
    type: EndpointType
    request_timeout: float  # seconds, counted from the request's arrival
    max_concurrent_per_worker: int
    queue_limit: int
    # The endpoint's status and its reason, as last stored: a `failed` endpoint is answered at once (503), and a
    # request that times out waiting for a worker is told what the endpoint was doing meanwhile.
    status: EndpointStatus = EndpointStatus.RUNNING
    reason: str = ""


class PlaneChannel:
    """See the module docstring."""

    def __init__(self) -> None:
        self._endpoint_changed: list[EndpointChanged] = []
        self._demand: list[Demand] = []
        self._worker_unreachable: list[WorkerUnreachable] = []
        self._slots_wanted: list[SlotsWanted] = []
        self._slot_freed: list[SlotFreed] = []

    def subscribe(
        self,
        *,
        endpoint_changed: EndpointChanged | None = None,
        demand: Demand | None = None,
        worker_unreachable: WorkerUnreachable | None = None,
        slots_wanted: SlotsWanted | None = None,
        slot_freed: SlotFreed | None = None,
    ) -> Callable[[], None]:
        """Add the given subscribers; returns what removes them again (for a part that stops before the process)."""
        removals = [
            _added(self._endpoint_changed, endpoint_changed),
            _added(self._demand, demand),
            _added(self._worker_unreachable, worker_unreachable),
            _added(self._slots_wanted, slots_wanted),
            _added(self._slot_freed, slot_freed),
        ]

        def unsubscribe() -> None:
            for remove in removals:
                remove()

        return unsubscribe

    def endpoint_changed(self, config: EndpointConfig) -> None:
        for subscriber in self._endpoint_changed:
            subscriber(config)

    def demand(self, endpoint_id: str) -> None:
        for subscriber in self._demand:
            subscriber(endpoint_id)

    def worker_unreachable(self, endpoint_id: str, worker_id: str, reason: str) -> None:
        for subscriber in self._worker_unreachable:
            subscriber(endpoint_id, worker_id, reason)

    def slots_wanted(self, endpoint_id: str) -> None:
        for subscriber in self._slots_wanted:
            subscriber(endpoint_id)

    def slot_freed(self, endpoint_id: str, worker_id: str) -> None:
        for subscriber in self._slot_freed:
            subscriber(endpoint_id, worker_id)


def _added(subscribers: list[_Subscriber], subscriber: _Subscriber | None) -> Callable[[], None]:
    """Append `subscriber` (when given) to `subscribers`; returns what takes it out again."""
    if subscriber is None:
        return lambda: None
    subscribers.append(subscriber)

    def remove() -> None:
        if subscriber in subscribers:
            subscribers.remove(subscriber)

    return remove
