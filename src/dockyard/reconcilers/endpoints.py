"""The endpoint reconciler: converges each serverless endpoint's worker containers to what its row wants, and
keeps the gateway's routing table in step with them. It runs on the reconciler core (reconcilers/core.py: observe,
the guarded writes, placement, orphans, gauges) that the containers reconciler runs on too.

The database holds what users and the autoscaler want (the worker template and its `generation`,
`desired_replicas` within the worker_config's bounds, `desired`) and one row per worker with what was last
observed; the runtime is the truth about which containers exist. The loop is level-triggered: every pass looks
at the whole picture afresh, so a missed wake-up, a crash or a stale write costs at most one pass. Readiness
is not polled here: the health prober (control/prober.py), owned by this reconciler, pushes it into the
routing table the moment a worker answers and calls back to record it.

One pass:

1. **Load** every endpoint, worker, product and node in one read transaction, and **observe** each IDC
   runtime once (`list_managed`), indexing objects of kind `worker` by their `dockyard.id` label. An endpoint
   whose runtime cannot be reached is left exactly as it is (no worker is failed, nothing is removed) until a
   pass reaches it again.
2. **Route**: the routing table is made to hold exactly the endpoints that still have a row, and every worker
   row is pushed into it (`control.route_sync.publish_worker`, the rule a stand-alone gateway follows too):
   starting and ready workers by address (and to the prober), draining ones as draining, the rest as gone.
   A restarted server so rebuilds its table from the database. A worker the
   database says is ready is pushed ready at once rather than after a first probe: the prober's regular
   probes fail it within `health_check_failures` intervals if it is not, and holding every request until a
   probe succeeded would stall a whole endpoint after each restart.
3. **Observe workers**: a starting or ready worker whose container exited is `failed` ("exited with code 3"),
   one whose container vanished is failed after `missing_debounce_seconds`. A starting worker whose health
   check keeps failing is failed by the prober after `health_startup_failures` checks, naming its last result
   (each result it sees is recorded on the row, `last_probe_*`); one still starting after
   `worker_startup_timeout` is failed naming its health check all the same. A failed worker's container is
   stopped and kept for its logs, and its GPUs released; only the three newest failed workers per endpoint
   are kept. An async endpoint's worker runs a worker SDK that serves no HTTP and is never probed: it is
   recorded `ready` once it has called one of its webhooks (`last_seen_at`; its first call wakes this loop),
   and failed when none came within `worker_call_in_timeout` of its container starting, naming the URL it was
   given. Its container is created with a fresh webhook key whose hash is recorded on the row first;
   draining, it is retired once it holds no job. A worker's output is kept before its container is removed
   (reconcilers/endpoint_logs.py).
4. **Plan and act**, concurrently across workers (at most eight at once), each write guarded:
   - *Scale*: live workers of the current generation (pending, starting, ready, not draining) are brought to
     `desired_replicas` clamped to min/max: missing ones are inserted `pending` and started in the same
     pass; surplus is drained, pending first, then starting, then ready ones holding no request and idle
     longest.
   - *Roll* (the template's generation changed): new workers are started up to the wanted count; an old ready
     worker is drained only once a new one is ready to take its place (old ready >= wanted - new ready), so
     the endpoint never lacks a ready worker. With none wanted the old ones simply drain.
   - *Start* (pending): place (node, GPUs, CPU and memory, chosen under the server's GPU lock from every
     container's and worker's recorded holdings, and recorded on the row before anything is created; one that
     fits nowhere stays pending, saying why), create and start the
     container, record `starting` with its published ports, and hand it to the prober. A `RuntimeFailure`
     (a missing image) fails the worker with the runtime's sentence and removes the half-made container.
   - *Drain*: `routes.worker_draining` stops new requests; once the worker holds none (or after
     `worker_drain_timeout`) it goes `stopping`, its container is removed and its row deleted. "None" counts
     every gateway: this process's table, and the stand-alone gateways' reports, read at the start of the pass,
     which must no longer list the worker (one that does has not seen the drain yet and may still route to it).
   - *Crash loop*: while workers of the current generation keep failing before they ever become ready, each
     next start waits (2 s, doubling, at most 5 min; a timer wakes the loop, nothing spins). After three such
     failures in a row the endpoint is `failed` with the last worker's reason; it leaves `failed` when a
     worker becomes ready or a PUT bumps the generation.
   - *Delete* (desired `deleted`): every worker drains and is removed, failed ones too; then the endpoint
     row is deleted (its workers cascade) and it leaves the routing table.
   - *Refused*: an endpoint whose spec, stored by an earlier release, holds what today's input rules refuse
     (`core.stored_specs`: a volume mount point carrying engine options, a reserved variable) wants no worker:
     every worker drains and is removed, as it may run with what is refused, and the endpoint is `failed`
     naming the value and saying to PUT it without; checked once per generation.
5. **Endpoint status**: `deploying` until its first worker is ready (`running` at once when none is wanted:
   scale to zero is a running endpoint), `updating` while old-generation workers remain, `failed` as above,
   `running` otherwise, each with a sentence.
6. **Orphans**: a worker object whose id has no row is removed once seen for `zombie_grace_seconds`;
   objects without Dockyard's labels are never listed, so never touched.

The prober's callbacks write `ready` (with the cold-start time) and `failed` (after failed health checks),
each guarded against the row as it is then, and wake the loop. Call `close()` when the loop stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge, Histogram
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from dockyard.context import ServerContext
from dockyard.control.prober import OK, HealthProber
from dockyard.control.reports import held_elsewhere, remote_figures
from dockyard.control.route_sync import forget_others, publish_worker
from dockyard.core.bus import Topic
from dockyard.core.loops import LoopName
from dockyard.core.status import DesiredState, EndpointStatus, WorkerStatus
from dockyard.db.base import utcnow
from dockyard.db.models import EndpointModel, ProductModel, WorkerModel
from dockyard.gateway.routes import RouteTable
from dockyard.gpus.allocation import load_inventory
from dockyard.metrics_registry import per_registry
from dockyard.reconcilers.core import (
    Delete,
    EventTarget,
    Observation,
    RowWriter,
    RuntimeLoop,
    Update,
    export_statuses,
    guarded_write,
    observe,
)
from dockyard.reconcilers.endpoints_workers import (
    CRASH_LOOP_FAILURES,
    CrashLoop,
    PassState,
    WorkerTask,
    plan,
    to_reap,
    wanted_replicas,
)
from dockyard.services import endpoint_logs
from dockyard.services.endpoints import route_config
from dockyard.services.worker_runspec import KIND_WORKER
from dockyard.services.worker_webhooks import KIND_ENDPOINT

log = logging.getLogger(__name__)

COLD_START_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# A present image starts in a fraction of a second; a pull takes minutes.
PRUNE_EVERY = 60.0  # seconds between deletions of removed workers' output past its retention
CONTAINER_START_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


@dataclass
class _Metrics:
    workers: Gauge
    cold_start: Histogram
    container_start: Histogram


@per_registry
def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    """One set per registry, shared by every reconciler built on it (a restarted loop included)."""
    return _Metrics(
        Gauge("dockyard_endpoint_workers", "Endpoint workers by status", ["endpoint", "status"], registry=registry),
        Histogram(
            "dockyard_worker_cold_start_seconds",
            "Seconds from a worker being wanted to it answering its health check",
            ["endpoint"],
            buckets=COLD_START_BUCKETS,
            registry=registry,
        ),
        Histogram(
            "dockyard_worker_container_start_seconds",
            "Seconds from a worker being wanted to its container running (placed, created and started)",
            ["endpoint"],
            buckets=CONTAINER_START_BUCKETS,
            registry=registry,
        ),
    )


class EndpointReconciler(RuntimeLoop):
    """The `endpoints` loop; see the module docstring for the algorithm."""

    name = LoopName.ENDPOINTS

    def __init__(self, context: ServerContext, routes: RouteTable) -> None:
        """`routes` is the gateway's table this loop keeps in step with the rows."""
        super().__init__(context, "worker")
        self.routes = routes
        self.prober = HealthProber(
            routes,
            context.settings,
            on_ready=self.on_worker_ready,
            on_unhealthy=self.on_worker_unhealthy,
            on_probe=self.on_worker_probed,
        )
        # A worker the proxy could not reach is probed again at once.
        self._listening = context.planes.subscribe(worker_unreachable=self.prober.recheck)
        self.crash_loops: dict[str, CrashLoop] = {}
        self._missing_since: dict[str, datetime] = {}
        self._next_prune = 0.0  # monotonic seconds
        self._metrics = _metrics_for(context.registry)

    async def close(self) -> None:
        """Stop the prober's probes; the routing table keeps what it holds."""
        self._listening()
        await self.prober.close()

    async def reconcile_once(self) -> None:
        stamp = self.routes.stamp()
        await self._capacity.refresh()
        settings = self.context.settings
        async with self.context.db.read() as session:
            endpoints = list(await session.scalars(select(EndpointModel).order_by(EndpointModel.created_at)))
            workers = list(await session.scalars(select(WorkerModel).order_by(WorkerModel.created_at, WorkerModel.id)))
            products = {p.id: p for p in await session.scalars(select(ProductModel))}
            inventory = await load_inventory(session, settings.cpu_overcommit, settings.memory_overcommit)
            remote = held_elsewhere(await remote_figures(session, self.context.settings.gateway_report_interval))
        observation = await self._observe()
        listed = observation.objects(KIND_WORKER)
        objects = {worker_id: objs[-1] for worker_id, objs in listed.items()}  # one object is made per worker
        self._specs.keep_only(row.id for row in endpoints)
        by_endpoint: dict[str, list[WorkerModel]] = defaultdict(list)
        for worker in workers:
            by_endpoint[worker.endpoint_id].append(worker)
        self.routes.configure((route_config(row, settings) for row in endpoints), since=stamp)
        state = PassState(
            db=self.context.db,
            settings=settings,
            box=self.context.box,
            now=utcnow(),
            routes=self.routes,
            remote=remote,
            prober=self.prober,
            products=products,
            inventory=inventory,
            gpu_lock=self.context.gpu_lock,
            objects=objects,
            orphan_gpus={},
            crash_loops=self.crash_loops,
            missing_since=self._missing_since,
            wake=lambda: self.context.wake(LoopName.ENDPOINTS),
            capacity_freed=lambda: self.context.wake(LoopName.CONTAINERS),
            container_start=self._metrics.container_start,
            routes_changed=self._routes_changed,
        )
        row_ids = {worker.id for worker in workers}
        orphans = {worker_id: objs for worker_id, objs in listed.items() if worker_id not in row_ids}
        state.orphan_gpus = {
            worker_id: [u for obj in objs for u in obj.gpu_uuids] for worker_id, objs in orphans.items()
        }
        self._push(workers)
        # The prober saw these ready but recording it lost a race with another write: record it again.
        unrecorded = [w for w in workers if w.status == WorkerStatus.STARTING and self.prober.is_ready(w.id)]
        await asyncio.gather(*(self.on_worker_ready(w.endpoint_id, w.id) for w in unrecorded))
        reachable = [row for row in endpoints if row.idc_id not in observation.unreachable]
        outcomes = await asyncio.gather(*(self._endpoint(state, row, by_endpoint[row.id]) for row in reachable))
        after = {row.id: by_endpoint[row.id] for row in endpoints}
        after.update({row.id: left for row, left in zip(reachable, outcomes, strict=True) if left is not None})
        gone = {row.id for row, left in zip(reachable, outcomes, strict=True) if left is None}
        if gone:
            self._drop_routes(gone)
        grace = settings.zombie_grace_seconds
        await self._orphans.sweep(orphans, observation, self.context.runtimes, grace)
        await self._prune_output()
        self._export({endpoint_id: left for endpoint_id, left in after.items() if endpoint_id not in gone})

    async def _observe(self) -> Observation:
        """Every runtime listed once; an endpoint whose runtime cannot be reached is left as it is this pass."""
        observation = await observe(self.context.runtimes)
        for idc_id, why in observation.unreachable.items():
            log.info("endpoints: the runtime of IDC %s cannot be reached (%s); its endpoints wait", idc_id, why)
        return observation

    async def _prune_output(self) -> None:
        """Removed workers' output past its retention goes (`endpoint_logs.prune`), checked at most every
        `PRUNE_EVERY` seconds, or twice per retention period where that is shorter."""
        settings, now = self.context.settings, time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + min(PRUNE_EVERY, settings.worker_log_retention_seconds / 2)
        await endpoint_logs.prune(self.context.db, endpoint_logs.retention_cutoff(settings))

    def _push(self, workers: list[WorkerModel]) -> None:
        """Make the routing table and the prober agree with the worker rows (step 2; control/route_sync.py's rule)."""
        for worker in workers:
            publish_worker(self.routes, self.prober, worker)
        forget_others(self.routes, self.prober, workers)

    async def _endpoint(
        self, state: PassState, endpoint: EndpointModel, workers: list[WorkerModel]
    ) -> list[WorkerModel] | None:
        """One endpoint's pass: its workers as they are after it, or None when its row was deleted."""
        runtime = self.context.runtimes.get(endpoint.idc_id)
        if runtime is None:
            return workers
        deleted = endpoint.desired == DesiredState.DELETED
        refused = "" if deleted else self._refused(endpoint)
        tasks = {worker.id: WorkerTask(state, endpoint, worker, runtime) for worker in workers}
        await self._each(state, [task.observe() for task in tasks.values()])
        wanted = 0 if refused else wanted_replicas(endpoint, deleted)
        decided = plan(endpoint, workers, wanted, deleted, state, halt=refused and "its configuration is refused")
        for worker in await self._add(endpoint, decided.add):
            tasks[worker.id] = WorkerTask(state, endpoint, worker, runtime)
            decided.start.append(worker)
        await self._each(
            state,
            [
                *(tasks[w.id].drain(why) for w, why in decided.drain),
                *(tasks[w.id].settle() for w in decided.settle),
                *(tasks[w.id].start() for w in decided.start),
            ],
        )
        # Reaped last, so a worker that failed to start in this pass counts among the newest kept.
        removed = "removed with its endpoint" if deleted else "reaped: only the newest failed workers are kept"
        reaped = to_reap([task.worker for task in tasks.values()], deleted)
        await self._each(state, (tasks[w.id].retire("WorkerRemoved", removed) for w in reaped))
        async with self.context.db.read() as session:
            left = list(await session.scalars(select(WorkerModel).where(WorkerModel.endpoint_id == endpoint.id)))
        if deleted:
            return None if not left and await self._delete_endpoint(endpoint) else left
        await self._status(state, endpoint, left, wanted, refused)
        return left

    def _refused(self, endpoint: EndpointModel) -> str:
        """Why the endpoint's stored spec fails today's input rules (stored by an earlier release), or "". A
        generation found fine is not read again: only a PUT changes a spec, and the API checks it."""
        problem = self._specs.problem(endpoint.id, endpoint.generation, endpoint.spec)
        if problem is None:
            return ""
        return (
            f"stopped: its configuration, stored before Dockyard checked it, holds what is now refused: {problem}; "
            f"update the endpoint without it (PUT /gpus/v2/endpoints/{endpoint.id}) and its workers start again"
        )

    @staticmethod
    async def _each(state: PassState, steps: Iterable[Awaitable[None]]) -> None:
        """Run worker steps concurrently (`core.Steps`); one that fails is logged and never stops the others."""
        await state.steps.each(steps, "an endpoint worker step")

    async def _add(self, endpoint: EndpointModel, count: int) -> list[WorkerModel]:
        """Insert `count` pending workers of the endpoint's current generation."""
        if count <= 0:
            return []
        added = [
            WorkerModel(
                endpoint_id=endpoint.id,
                org_id=endpoint.org_id,
                generation=endpoint.generation,
                status=WorkerStatus.PENDING,
                reason="waiting to be placed and started",
            )
            for _ in range(count)
        ]
        try:
            async with self.context.db.write() as session:
                session.add_all(added)
                await session.flush()
        except IntegrityError:
            log.info("endpoint %s was deleted while workers were added; the next pass sees it", endpoint.id)
            return []
        return added

    def _routes_changed(self, endpoint_id: str) -> None:
        self.context.bus.publish(Topic.ROUTES, endpoint_id)

    def _writer(self, endpoint: EndpointModel) -> RowWriter[EndpointModel]:
        """An endpoint's writes: its status and reason are part of its route (a `failed` one is answered 503), so each
        committed write is announced to every gateway."""
        target = EventTarget(endpoint.org_id, KIND_ENDPOINT, endpoint.id)
        return RowWriter(
            self.context.db, endpoint, target, "endpoint", on_written=lambda _: self._routes_changed(endpoint.id)
        )

    async def _delete_endpoint(self, endpoint: EndpointModel) -> bool:
        deleted = await self._writer(endpoint).apply(Delete(("Deleted", "its workers are drained and removed")))
        if deleted:
            self.crash_loops.pop(endpoint.id, None)
        return deleted

    async def _status(
        self, state: PassState, endpoint: EndpointModel, workers: list[WorkerModel], wanted: int, refused: str = ""
    ) -> None:
        """Write the endpoint's status and reason (step 5) when they changed, with the event that explains it;
        `refused` (why its stored spec is refused) makes it `failed` with that reason."""
        current = [w for w in workers if w.generation == endpoint.generation]
        ready = sum(1 for w in current if w.status == WorkerStatus.READY)
        old = [w for w in workers if w.generation != endpoint.generation and w.status != WorkerStatus.FAILED]
        loop = state.crash_loop(endpoint)
        if ready:
            loop.failures = 0
        event: tuple[str, str] | None = None
        if refused:
            status, reason = EndpointStatus.FAILED, refused
            event = ("EndpointFailed", reason)
        elif (
            not ready and wanted and (loop.failures >= CRASH_LOOP_FAILURES or endpoint.status == EndpointStatus.FAILED)
        ):
            # A failed endpoint stays failed across a restart (the crash count is in memory) until a worker
            # becomes ready or a PUT bumps the generation (the API then marks it updating).
            status = EndpointStatus.FAILED
            reason = endpoint.reason
            if loop.failures >= CRASH_LOOP_FAILURES:
                reason = f"{loop.failures} workers in a row failed before becoming ready; the last: {loop.reason}"
            event = ("EndpointFailed", reason)
        elif old:
            status = EndpointStatus.UPDATING
            reason = (
                f"rolling the workers to the new template: {ready} of {wanted} new workers ready, {len(old)} old left"
            )
        elif endpoint.status == EndpointStatus.DEPLOYING and wanted and not ready:
            status = EndpointStatus.DEPLOYING
            coming = sum(1 for w in current if w.status in (WorkerStatus.PENDING, WorkerStatus.STARTING))
            reason = f"waiting for its first worker to become ready ({coming} being placed or started)"
        else:
            status = EndpointStatus.RUNNING
            reason = f"{ready} of {wanted} workers ready" if wanted else "scaled to zero; a request starts a worker"
            if endpoint.status == EndpointStatus.UPDATING:
                event = ("Rolled", f"every worker now runs the template of generation {endpoint.generation}")
        if (status, reason) == (endpoint.status, endpoint.reason):
            return
        if status == endpoint.status and event is not None and event[0] == "EndpointFailed":
            event = None
        await self._writer(endpoint).apply(Update({"status": status, "reason": reason}, event))

    def _drop_routes(self, gone: set[str]) -> None:
        """Take endpoints deleted this pass out of the routing table, keeping every other entry as it is."""
        for endpoint_id in gone:
            self.routes.remove(endpoint_id)

    def _export(self, workers: dict[str, list[WorkerModel]]) -> None:
        """Every status of every remaining endpoint, zeros included, so a status that empties reads 0."""
        gauge = self._metrics.workers
        gauge.clear()
        for endpoint_id, rows in workers.items():
            export_statuses(gauge, WorkerStatus, Counter(row.status for row in rows), endpoint_id)

    # -- the prober's callbacks -----------------------------------------------------------------------------

    async def on_worker_ready(self, endpoint_id: str, worker_id: str) -> None:
        """The prober saw the worker answer (and already routes requests to it): record `ready`."""
        # The cold start ends when the worker answered, not when the write below gets the database: under load
        # that wait is tens of milliseconds, and the first request may be answered meanwhile.
        answered = utcnow()
        async with self.context.db.write() as session:
            worker = await session.get(WorkerModel, worker_id)
            if worker is None or worker.status != WorkerStatus.STARTING:
                self._undo_ready(endpoint_id, worker)
                return
            cold = (answered - worker.created_at).total_seconds()
            values = {
                "status": WorkerStatus.READY,
                "health": True,
                "reason": f"ready: answered its health check {cold:.1f} s after it was wanted",
                "last_probe_at": answered,
                "last_probe_result": OK,
            }
            event = ("WorkerReady", f"ready after a cold start of {cold:.1f} s")
            written = await guarded_write(session, WorkerModel, worker_id, worker.version, values, _of(worker), event)
        if written:
            self._routes_changed(endpoint_id)
            self._metrics.cold_start.labels(endpoint_id).observe(cold)
            self.crash_loops.pop(endpoint_id, None)
            self.context.wake(LoopName.ENDPOINTS)

    def _undo_ready(self, endpoint_id: str, worker: WorkerModel | None) -> None:
        """The prober pushed a worker ready that the reconciler has since drained, failed or removed."""
        if worker is not None and worker.status == WorkerStatus.READY:
            return
        if worker is not None and worker.status == WorkerStatus.DRAINING:
            self.routes.worker_draining(endpoint_id, worker.id)
        elif worker is not None:
            self.routes.worker_gone(endpoint_id, worker.id)

    async def on_worker_unhealthy(self, endpoint_id: str, worker_id: str, reason: str) -> None:
        """The prober took a ready worker out after failed health checks, or gave up on a starting one: record
        `failed`; it is replaced. A starting one counts towards its endpoint's crash loop, as any worker that
        fails before it was ever ready."""
        async with self.context.db.write() as session:
            worker = await session.get(WorkerModel, worker_id)
            if worker is None or worker.status not in (WorkerStatus.STARTING, WorkerStatus.READY):
                return
            values = {"status": WorkerStatus.FAILED, "health": False, "reason": reason}
            event = ("WorkerFailed", reason)
            written = await guarded_write(session, WorkerModel, worker_id, worker.version, values, _of(worker), event)
        if not written:
            return
        self._routes_changed(endpoint_id)
        if worker.status == WorkerStatus.STARTING:
            loop = self.crash_loops.get(endpoint_id)
            if loop is None or loop.generation != worker.generation:
                loop = self.crash_loops[endpoint_id] = CrashLoop(worker.generation)
            loop.failed(reason)
        self.context.wake(LoopName.ENDPOINTS)

    async def on_worker_probed(self, endpoint_id: str, worker_id: str, result: str) -> None:
        """Record what the prober saw on the worker's row for its views, leaving the row's version and
        `modified_at` as they are: this is no change of state, and the reconciler's guarded writes and
        timeouts rely on them."""
        async with self.context.db.write() as session:
            await session.execute(
                update(WorkerModel)
                .where(
                    WorkerModel.id == worker_id,
                    WorkerModel.status.in_((WorkerStatus.STARTING, WorkerStatus.READY)),
                )
                .values(last_probe_at=utcnow(), last_probe_result=result, modified_at=WorkerModel.modified_at)
                .execution_options(synchronize_session=False)
            )


def _of(worker: WorkerModel) -> EventTarget:
    """Where a prober callback records its event about `worker`: on its endpoint, naming the worker."""
    return EventTarget(worker.org_id, KIND_ENDPOINT, worker.endpoint_id, f"worker {worker.id}: ")
