"""The gateway's routing table: for each endpoint, its settings, its dispatcher and where its workers listen.

This is the boundary between the control plane and the data plane. The endpoint reconciler and the health
prober write to it (`configure`, `worker_starting`, `worker_ready`, `worker_draining`, `worker_gone`), and so does
an endpoint's create or update, announced on the planes' channel (core/planes.py) to which the composition root
subscribes `upsert`; the proxy reads it (`get`) on every request; the autoscaler and `/metrics` read its figures
(`figures`). It lives on one event loop and holds no lock: every method runs to completion between awaits.

Nothing here touches the database, so a request never waits on one (docs/architecture.md). In the server
process the reconciler and prober push changes in as they happen; a stand-alone gateway fills the same table
from its own sync of the database and its own prober.

Contract:
- `configure(configs)` makes the table hold exactly these endpoints. A new endpoint gets a dispatcher; a
  changed one keeps its dispatcher, queue and all, with the new bounds (one that became `failed` turns its waiting
  requests away at once); one no longer listed is dropped, and requests still waiting for it time out at their
  deadline.
- Worker calls for an endpoint the table does not hold are ignored: the next `configure` decides.
- `address(endpoint_id, worker_id)` is the base URL (`http://host:port`) requests are proxied to.
- Leased slots (`leased_slots=True`, the global concurrency limit): a worker takes from this process only as many
  requests at once as `set_slots` gave it, the slots this process holds of it (control/slots.py holds them and
  calls it, for a starting worker too, so that it serves from the moment it turns ready). The table tells the
  holder `on_slots_wanted(endpoint_id)` when a worker of the endpoint appears or turns ready, or a request waits,
  and `on_slot_freed(endpoint_id, worker_id)` when a request ends on a worker that holds a slot to hand back or
  that no longer takes requests (the dispatcher's contract).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dockyard.core.planes import EndpointConfig
from dockyard.core.status import EndpointStatus
from dockyard.gateway.dispatcher import EndpointDispatcher

log = logging.getLogger(__name__)


@dataclass
class EndpointRoute:
    """One endpoint in the table. `addresses` holds every worker the gateway may have to reach: starting,
    ready and draining ones (a draining worker still answers the requests it holds)."""

    config: EndpointConfig
    dispatcher: EndpointDispatcher
    addresses: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerFigures:
    worker_id: str
    ready: bool
    in_flight: int
    idle_for: float  # seconds since its last request ended (or it became ready); 0 while busy


@dataclass(frozen=True)
class EndpointFigures:
    """One endpoint's load, as the autoscaler and `/metrics` read it."""

    endpoint_id: str
    queued: int
    in_flight: int
    oldest_wait: float
    workers: tuple[WorkerFigures, ...]


class RouteTable:
    """Endpoints by id; see the module docstring for the contract."""

    def __init__(
        self,
        *,
        on_demand: Callable[[str], None] | None = None,
        leased_slots: bool = False,
        on_slots_wanted: Callable[[str], None] | None = None,
        on_slot_freed: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_demand(endpoint_id)` is called when a request arrives for an endpoint with no ready worker (the
        dispatcher's contract: cheap, never blocking): how the table tells the control plane what it saw. The
        slot hooks are called alike, with `leased_slots` only (see the module docstring)."""
        self._routes: dict[str, EndpointRoute] = {}
        self._changes = 0  # counts upserts; see `stamp`
        self._upserted: dict[str, int] = {}  # endpoint id -> the count at its last upsert
        self.on_demand = on_demand
        self.leased_slots = leased_slots
        self.on_slots_wanted = on_slots_wanted
        self.on_slot_freed = on_slot_freed

    def get(self, endpoint_id: str) -> EndpointRoute | None:
        return self._routes.get(endpoint_id)

    def __contains__(self, endpoint_id: str) -> bool:
        return endpoint_id in self._routes

    def __len__(self) -> int:
        return len(self._routes)

    def stamp(self) -> int:
        """A mark to pass to `configure(..., since=)`: take it before loading the endpoints from the database."""
        return self._changes

    def configure(self, configs: Iterable[EndpointConfig], *, since: int | None = None) -> None:
        """Hold exactly these endpoints (a full resync, each reconcile pass). With `since` (a `stamp()` taken
        before the configs were loaded), an endpoint upserted after that mark is kept although it is not in
        `configs`: the loader could not have seen it, and dropping it would strand the requests it queues."""
        wanted = {config.endpoint_id: config for config in configs}
        for endpoint_id in [e for e in self._routes if e not in wanted]:
            if since is None or self._upserted.get(endpoint_id, 0) <= since:
                self.remove(endpoint_id)
        for config in wanted.values():
            self.upsert(config)

    def upsert(self, config: EndpointConfig) -> None:
        """Add or update one endpoint (the API calls it after a create or update commits, so the endpoint is
        served at once rather than after the next reconcile pass)."""
        self._changes += 1
        self._upserted[config.endpoint_id] = self._changes
        route = self._routes.get(config.endpoint_id)
        if route is None:
            self._routes[config.endpoint_id] = EndpointRoute(config, self._dispatcher(config))
        elif route.config != config:
            failing = config.status is EndpointStatus.FAILED and route.config.status is not EndpointStatus.FAILED
            route.config = config
            route.dispatcher.reconfigure(
                queue_limit=config.queue_limit, max_concurrent_per_worker=config.max_concurrent_per_worker
            )
            if failing:  # no worker is coming: the requests waiting for one are answered now, not at their deadline
                route.dispatcher.turn_away()

    def demand(self, endpoint_id: str) -> None:
        """Tell the control plane that a request wanted the endpoint although none of its workers could take it
        (one it refused at once, a failed endpoint's): as the dispatcher does for a request it queues."""
        if self.on_demand is not None:
            self.on_demand(endpoint_id)

    def remove(self, endpoint_id: str) -> None:
        """Stop serving the endpoint; requests still queued for it time out at their deadline."""
        self._routes.pop(endpoint_id, None)
        self._upserted.pop(endpoint_id, None)

    def _dispatcher(self, config: EndpointConfig) -> EndpointDispatcher:
        endpoint_id = config.endpoint_id

        def on_demand() -> None:
            self.demand(endpoint_id)

        def on_slots_wanted() -> None:
            if self.on_slots_wanted is not None:
                self.on_slots_wanted(endpoint_id)

        def on_slot_freed(worker_id: str) -> None:
            if self.on_slot_freed is not None:
                self.on_slot_freed(endpoint_id, worker_id)

        return EndpointDispatcher(
            queue_limit=config.queue_limit,
            max_concurrent_per_worker=config.max_concurrent_per_worker,
            on_demand=on_demand,
            leased=self.leased_slots,
            on_slots_wanted=on_slots_wanted,
            on_slot_freed=on_slot_freed,
        )

    # Workers, pushed by the reconciler and the prober.

    def worker_starting(self, endpoint_id: str, worker_id: str, address: str) -> None:
        """Record where a worker that is not ready yet listens, so the prober and later calls can find it. With
        leased slots a new worker is announced, so its slots are held by the time it turns ready."""
        if route := self._routes.get(endpoint_id):
            new = worker_id not in route.addresses
            route.addresses[worker_id] = address
            if new and self.leased_slots and self.on_slots_wanted is not None:
                self.on_slots_wanted(endpoint_id)

    def worker_ready(self, endpoint_id: str, worker_id: str, address: str) -> None:
        """The worker answers its health check: requests go to it from now on, queued ones first."""
        if route := self._routes.get(endpoint_id):
            route.addresses[worker_id] = address
            route.dispatcher.worker_ready(worker_id)

    def worker_draining(self, endpoint_id: str, worker_id: str) -> None:
        """No new request goes to the worker; those it holds finish (its address is kept for them)."""
        if route := self._routes.get(endpoint_id):
            route.dispatcher.worker_draining(worker_id)

    def worker_gone(self, endpoint_id: str, worker_id: str) -> None:
        """The worker no longer exists (or failed): no request goes to it and its address is forgotten."""
        if route := self._routes.get(endpoint_id):
            route.dispatcher.worker_gone(worker_id)
            route.addresses.pop(worker_id, None)

    def set_slots(self, endpoint_id: str, worker_id: str, slots: int) -> None:
        """Leased slots: the worker may hold `slots` requests from this process at once (see the module docstring)."""
        if route := self._routes.get(endpoint_id):
            route.dispatcher.set_slots(worker_id, slots)

    def in_flight(self, endpoint_id: str, worker_id: str) -> int:
        """Requests the worker holds now (0 when unknown): the reconciler removes a draining worker at 0."""
        route = self._routes.get(endpoint_id)
        return route.dispatcher.in_flight_by_worker.get(worker_id, 0) if route else 0

    def workers(self) -> list[tuple[str, str]]:
        """`(endpoint_id, worker_id)` of every worker the table can reach (starting, ready or draining)."""
        return [
            (endpoint_id, worker_id) for endpoint_id, route in self._routes.items() for worker_id in route.addresses
        ]

    # Figures.

    def figures(self) -> list[EndpointFigures]:
        """Every endpoint's queue and workers now. Call it on the table's loop."""
        result = []
        for endpoint_id, route in self._routes.items():
            dispatcher = route.dispatcher
            load = dispatcher.in_flight_by_worker
            workers = tuple(
                WorkerFigures(
                    worker_id=worker_id,
                    ready=dispatcher.is_ready(worker_id),
                    in_flight=load.get(worker_id, 0),
                    idle_for=dispatcher.idle_for(worker_id),
                )
                for worker_id in route.addresses
            )
            result.append(
                EndpointFigures(
                    endpoint_id=endpoint_id,
                    queued=dispatcher.queued,
                    in_flight=dispatcher.in_flight,
                    oldest_wait=dispatcher.oldest_wait(),
                    workers=workers,
                )
            )
        return result
