"""The autoscaler: sets each endpoint's `desired_replicas` from the gateway's live figures.

It decides how many workers an endpoint should have and nothing else; which worker to start or drain, and
when, is the endpoint reconciler's job. One pass (every `autoscale_interval`, and at once when a request
reaches an endpoint with no ready worker):

1. **Load** the endpoints wanted running (id, worker_config, policy, `desired_replicas`, version), in one
   read transaction, and their load: this process's gateway is read directly, as fresh as its last
   request; stand-alone gateways' figures come from their reports (control/reports.py).
2. **Decide**, per endpoint, with `decide()`, a pure function of the figures, the settings and the
   endpoint's scale-down window:
   - *Demand* is the requests queued plus those in flight.
   - `concurrency` policy (value N): `ceil(demand / N)` workers (Knative's concurrency target).
   - `queue` policy (value S seconds): when the oldest queued request has waited longer than S, enough
     workers to hold the whole demand at `max_concurrent_per_worker` each; otherwise no scale-up.
   - *From zero*: an endpoint at zero with any demand gets one worker at once, whatever the policy says, so
     the first request is never left waiting for the policy's threshold.
   - *Scale down* happens only through idleness, never because one tick saw less load: a ready worker
     that has had no request for `idle_timeout` seconds is given up; and under the concurrency policy,
     when the wanted count has stayed below the current one for a whole `idle_timeout`, the endpoint
     comes down to the highest count wanted in that window (Knative's stable window). Both avoid flapping
     when load wavers.
   - The result is clamped to `[min_replicas, max_replicas]`.
3. **Apply** a changed count with a guarded write (`WHERE id=? AND version=?`) together with an event
   that states the figures behind it (`ScaledUp` / `ScaledDown`), then wake the endpoint reconciler. A
   write that lost to an API update changes nothing; the next pass decides again. A scale-up is first held
   within the organization's quotas (workers, GPUs, vCPUs, memory; services/quotas.py `worker_room`), read
   under the organization's quota lock in the same transaction as the write, so it never races an API
   admission. One held back says so: in its `ScaledUp` event, or, when it cannot add a worker at all, in a
   `ScaleUpHeld` event written once per change of its reason.

A request that finds an endpoint without a ready worker is announced on the planes' channel (core/planes.py),
which the autoscaler listens to from its construction to its `close()` (`on_demand`). A scale-up from zero that
answers one is timed into `dockyard_autoscaler_scale_from_zero_seconds`: from the first such request to the count
being written.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.context import ServerContext
from dockyard.control.load import load_figures
from dockyard.core.bus import EVERYTHING, Topic
from dockyard.core.loops import LoopName
from dockyard.core.status import DesiredState, PolicyType
from dockyard.db.base import guarded_update
from dockyard.db.models import EndpointModel, ProductModel
from dockyard.gateway.routes import EndpointFigures, RouteTable
from dockyard.metrics_registry import per_registry
from dockyard.services import events, quotas

log = logging.getLogger(__name__)

# From a few ms (woken by the request) to a whole `autoscale_interval` and more when the loop is late.
DECISION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@per_registry
def _scale_from_zero_for(registry: CollectorRegistry) -> Histogram:
    """One histogram per registry, shared by every autoscaler built on it (a restarted loop included)."""
    return Histogram(
        "dockyard_autoscaler_scale_from_zero_seconds",
        "Seconds from a request finding an endpoint at zero workers to the autoscaler writing its scale-up",
        ["endpoint"],
        buckets=DECISION_BUCKETS,
        registry=registry,
    )


@dataclass(frozen=True)
class Bounds:
    """What `decide` reads of an endpoint's worker_config and policy."""

    min_replicas: int
    max_replicas: int
    idle_timeout: float
    max_concurrent_per_worker: int
    policy: PolicyType
    value: float

    @classmethod
    def of(cls, worker_config: dict[str, Any], policy: dict[str, Any]) -> Bounds:
        return cls(
            min_replicas=int(worker_config["min_replicas"]),
            max_replicas=int(worker_config["max_replicas"]),
            idle_timeout=float(worker_config["idle_timeout"]),
            max_concurrent_per_worker=int(worker_config["max_concurrent_per_worker"]),
            policy=PolicyType(policy["type"]),
            value=float(policy["value"]),
        )


@dataclass
class Window:
    """What the autoscaler remembers of an endpoint between passes: since when the wanted count has been
    below the current one and the highest count wanted meanwhile (the stable window), and the idle workers
    already given up. The reconciler drains those a moment later; until then they still look idle, and
    counting them again would give up a second worker for the same idleness."""

    below_since: float | None = None
    peak: int = 0
    given_up: set[str] = field(default_factory=set)
    held: str = ""  # why the last scale-up was held at the quota, once said in an event


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str


def _wanted(figures: EndpointFigures, bounds: Bounds) -> tuple[int, str]:
    """The workers the policy asks for now, and why, before scale-down rules and bounds."""
    demand = figures.queued + figures.in_flight
    described = f"{figures.queued} queued and {figures.in_flight} in flight"
    if bounds.policy == PolicyType.CONCURRENCY:
        per_worker = max(bounds.value, 1e-9)
        return math.ceil(demand / per_worker), f"{described}, policy concurrency {bounds.value:g} per worker"
    if figures.oldest_wait > bounds.value:
        wanted = math.ceil(demand / bounds.max_concurrent_per_worker)
        return wanted, (
            f"the oldest request has waited {figures.oldest_wait:.1f} s (policy queue {bounds.value:g} s); "
            f"{described} at {bounds.max_concurrent_per_worker} per worker"
        )
    return 0, f"{described}, no request has waited over {bounds.value:g} s"


def decide(current: int, figures: EndpointFigures, bounds: Bounds, window: Window, now: float) -> Decision:
    """The endpoint's worker count from here, with the reason; `window` is updated in place. `now` is a
    monotonic clock shared by the calls for one endpoint."""
    wanted, why = _wanted(figures, bounds)
    demand = figures.queued + figures.in_flight
    if current == 0 and demand > 0 and wanted < 1:
        wanted, why = 1, f"a request arrived with no worker running ({why})"
    target, reason = current, ""
    idle: list[str] = []
    window.given_up &= {w.worker_id for w in figures.workers}
    if wanted > current:
        window.below_since = None
        target, reason = wanted, why
    else:
        idle = [
            w.worker_id
            for w in figures.workers
            if w.ready and w.in_flight == 0 and w.idle_for >= bounds.idle_timeout and w.worker_id not in window.given_up
        ]
        if idle:
            target = current - len(idle)
            reason = f"{len(idle)} worker(s) idle for {bounds.idle_timeout:g} s or more"
        if bounds.policy == PolicyType.CONCURRENCY and wanted < current:
            if window.below_since is None:
                window.below_since, window.peak = now, wanted
            window.peak = max(window.peak, wanted)
            if now - window.below_since >= bounds.idle_timeout and window.peak < target:
                target = window.peak
                reason = f"at most {window.peak} worker(s) wanted for {bounds.idle_timeout:g} s ({why})"
        else:
            window.below_since = None
        target = max(target, wanted)
    clamped = min(max(target, bounds.min_replicas), bounds.max_replicas)
    if clamped != target:
        limit = "max_replicas" if clamped < target else "min_replicas"
        reason = f"{reason}; held at {limit} {clamped}"
    if clamped < current:
        window.below_since = None
        if wanted <= clamped:
            window.given_up.update(idle[: current - clamped])
    return Decision(clamped, reason)


class Autoscaler:
    """The `autoscaler` loop; see the module docstring."""

    name = LoopName.AUTOSCALER

    def __init__(self, context: ServerContext, routes: RouteTable) -> None:
        self.context = context
        self.routes = routes
        self.interval = context.settings.autoscale_interval
        self._windows: dict[str, Window] = {}
        # Endpoint id -> monotonic time of the first `on_demand` since the last pass began.
        self._demand_since: dict[str, float] = {}
        self._scale_from_zero = _scale_from_zero_for(context.registry)
        # This server's gateway announces demand on the planes' channel; another process's (a stand-alone gateway,
        # a server that does not lead) on the bus, once its report of the load is committed.
        self._listening = [
            context.planes.subscribe(demand=self.on_demand),
            context.bus.subscribe(Topic.DEMAND, self.on_demand),
        ]

    async def close(self) -> None:
        """Stop listening for demand (the supervisor calls it when the loop stops)."""
        for unsubscribe in self._listening:
            unsubscribe()

    def on_demand(self, endpoint_id: str) -> None:
        """A request reached an endpoint with no ready worker: decide now instead of at the next tick. Each process
        hears of it, so only this one's autoscaler is woken (it runs where its server leads)."""
        if endpoint_id != EVERYTHING:
            self._demand_since.setdefault(endpoint_id, time.monotonic())
        self.context.wake_here(LoopName.AUTOSCALER)

    async def reconcile_once(self) -> None:
        # Taken before the figures are read: a request after this point is seen by the next pass (its wake-up
        # asks for one), so its time is kept for that pass rather than dropped by this one.
        demand, self._demand_since = self._demand_since, {}
        interval = self.context.settings.gateway_report_interval
        async with self.context.db.read() as session:
            running = select(EndpointModel).where(EndpointModel.desired == DesiredState.RUNNING)
            rows = list(await session.scalars(running))
            figures = await load_figures(session, self.routes, interval)
        now = time.monotonic()
        changed = False
        for row in rows:
            seen = figures.get(row.id) or EndpointFigures(row.id, 0, 0, 0.0, ())
            bounds = Bounds.of(row.worker_config, row.policy)
            window = self._windows.setdefault(row.id, Window())
            decision = decide(row.desired_replicas, seen, bounds, window, now)
            if decision.replicas != row.desired_replicas:
                applied = await self._apply(row, decision, window)
                since = demand.get(row.id)
                if applied and row.desired_replicas == 0 and since is not None:
                    self._scale_from_zero.labels(row.id).observe(time.monotonic() - since)
                changed |= applied
        for endpoint_id in set(self._windows) - {row.id for row in rows}:
            del self._windows[endpoint_id]
        if changed:
            self.context.wake(LoopName.ENDPOINTS)

    async def _apply(self, row: EndpointModel, decision: Decision, window: Window) -> bool:
        before = row.desired_replicas
        replicas, reason = decision.replicas, decision.reason
        async with self.context.db.write() as session:
            if replicas > before:
                replicas, held = await self._within_quota(session, row, replicas)
                if held:
                    reason = f"{reason}; held at {replicas} by the quota: {held}"
                if replicas == before:
                    if held != window.held:
                        message = f"{before} workers, {decision.replicas} wanted: {held}"
                        self._event(session, row, "ScaleUpHeld", message)
                        log.info("endpoint %s %s", row.id, message)
                    window.held = held
                    return False
                window.held = held
            if not await guarded_update(session, EndpointModel, row.id, row.version, desired_replicas=replicas):
                return False
            kind = "ScaledUp" if replicas > before else "ScaledDown"
            message = f"{before} \N{RIGHTWARDS ARROW} {replicas} workers: {reason}"
            self._event(session, row, kind, message)
        log.info("endpoint %s %s", row.id, message)
        return True

    async def _within_quota(self, session: AsyncSession, row: EndpointModel, replicas: int) -> tuple[int, str]:
        """`replicas`, or fewer (never below what the endpoint wants now) when the organization's quotas leave
        room for fewer, with why; the organization's quota lock is held to the end of `session`'s transaction."""
        product = await session.get(ProductModel, row.product_id)
        cpu, memory_mb = (product.cpu, product.memory_mb) if product is not None else (0.0, 0)
        per_worker = quotas.worker_amounts(row.worker_config, cpu, memory_mb, 1)
        room, why = await quotas.worker_room(session, row, per_worker, settings=self.context.settings)
        if replicas <= room:
            return replicas, ""
        return max(room, row.desired_replicas), why(replicas)

    @staticmethod
    def _event(session: AsyncSession, row: EndpointModel, kind: str, message: str) -> None:
        events.record(session, org_id=row.org_id, object_kind="endpoint", object_id=row.id, type=kind, message=message)
