"""One endpoint worker's share of a reconcile pass: each step a worker can take (observe, place and start,
drain, retire, fail, reap), acting on the runtime and recording the outcome with a guarded write (see
`reconcilers.endpoints` for the algorithm as a whole).

Each `WorkerTask` handles exactly one worker row, on the reconciler core (reconcilers/core.py). Its writes go
through the row's `RowWriter`: short transactions of their own guarded by the version the task loaded (and bumped
by its own earlier writes), so a row changed meanwhile (by the prober's callbacks, or the API deleting the
endpoint) is never overwritten: the write changes nothing and the next pass starts from fresh state. Events are
recorded on the endpoint (`object_kind` "endpoint") and name the worker.

`plan` and `to_reap` are the pure decisions behind the steps: which workers to add, start, drain and settle
(scaling and the rolling order), and which failed ones to remove.

An async endpoint's worker runs a worker SDK that serves no HTTP, so it is never probed. Instead: `start` makes
it a fresh webhook key and records the key's hash on the row before the container that holds the key exists
(a container left from an earlier try holds an older key, so it is removed first); the worker's first webhook
call stamps `last_seen_at` and wakes the loop, and `observe` then records it `ready`, or fails it when no call
came within `worker_call_in_timeout` (`never_called_in` says why); a draining one is retired once it holds no job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Histogram

from dockyard.config import LOOPBACK_HOSTS, Settings
from dockyard.control.prober import HealthProber
from dockyard.control.route_sync import publish_worker
from dockyard.core.status import NEVER_CALLED_IN_PREFIX, UNPLACED_PREFIX, DesiredState, EndpointType, WorkerStatus
from dockyard.core.workload import WorkloadSpec
from dockyard.db.base import utcnow
from dockyard.db.models import EndpointModel, ProductModel, WorkerModel
from dockyard.gateway.routes import RouteTable
from dockyard.gpus.allocation import GpuAllocator, NodeInventory, Unschedulable
from dockyard.gpus.inventory import GpuInfo
from dockyard.outbound import redact_url
from dockyard.reconcilers.core import (
    Delete,
    Demand,
    EventTarget,
    Pass,
    Placed,
    RowWriter,
    Update,
    exit_reason,
    launch,
    place,
)
from dockyard.runtimes.base import ObjectState, Runtime, RuntimeFailure, RuntimeObject, RuntimeUnavailable
from dockyard.secrets import hash_api_key
from dockyard.services import endpoint_logs, quotas, registry_auths
from dockyard.services.worker_runspec import (
    WEBHOOK_PREFIX,
    WebhookAccess,
    build_worker_run_spec,
    health_check,
    ping_interval_ms,
    webhook_base_url,
    worker_health,
    worker_object_name,
    worker_ports,
)
from dockyard.services.worker_webhooks import KIND_ENDPOINT, held_jobs, new_worker_key

log = logging.getLogger(__name__)

BACKOFF_FIRST = 2.0  # seconds before the create that follows a worker's failure to become ready
BACKOFF_MAX = 300.0
CRASH_LOOP_FAILURES = 3  # failures in a row, none ready, before the endpoint is `failed`
# The worker columns a gateway routes by (control/route_sync.py `publish_worker`).
ROUTED_COLUMNS = frozenset({"status", "drain", "published_ports"})


@dataclass
class CrashLoop:
    """Workers of one endpoint generation failing before they ever became ready: how many in a row, the last
    reason, and when the next create may run (monotonic seconds). Kept across passes, reset by a ready worker
    or a new generation."""

    generation: int
    failures: int = 0
    reason: str = ""
    delay: float = 0.0  # the backoff now in force, seconds
    retry_at: float = 0.0
    wake_scheduled_for: float = 0.0

    def failed(self, reason: str) -> None:
        self.failures += 1
        self.reason = reason
        self.delay = min(BACKOFF_FIRST * 2 ** (self.failures - 1), BACKOFF_MAX)
        self.retry_at = time.monotonic() + self.delay


@dataclass(kw_only=True)
class PassState(Pass):
    """What one pass loaded and observed; shared by its worker tasks."""

    routes: RouteTable
    # Worker id -> requests the stand-alone gateways hold on it, for every worker their fresh reports list (read
    # at the start of the pass; control/reports.py `held_elsewhere`).
    remote: dict[str, int]
    prober: HealthProber
    inventory: list[NodeInventory]
    objects: dict[str, RuntimeObject]  # worker objects by worker id
    orphan_gpus: dict[str, list[str]]  # GPUs held by worker objects that have no row (zombies hold theirs)
    crash_loops: dict[str, CrashLoop]  # by endpoint id; the reconciler keeps it across passes
    missing_since: dict[str, datetime]  # worker id -> first pass its object was not seen; kept across passes
    wake: Callable[[], None]  # ask for another pass soon
    # A worker let go of its node's share or its GPUs: the containers loop places what waits for them at once.
    capacity_freed: Callable[[], None]
    container_start: Histogram  # seconds from a worker being wanted to its container running, by endpoint
    # A worker row's change that a gateway routes by (its status, drain or ports, or its removal) committed: every
    # gateway's route sync reads the endpoint again (`Topic.ROUTES`); called with the endpoint's id.
    routes_changed: Callable[[str], None]

    def held(self, endpoint_id: str, worker_id: str) -> int:
        """Requests the worker holds in every gateway: this process's table now, the stand-alone ones' reports."""
        return self.routes.in_flight(endpoint_id, worker_id) + self.remote.get(worker_id, 0)

    def crash_loop(self, endpoint: EndpointModel) -> CrashLoop:
        loop = self.crash_loops.get(endpoint.id)
        if loop is None or loop.generation != endpoint.generation:
            loop = self.crash_loops[endpoint.id] = CrashLoop(endpoint.generation)
        return loop


class WorkerTask:
    """One worker's steps in one pass; everything it needs is in the rows, the observed object and the state. Each
    step decides from them, acts on the runtime, and applies its outcome through the worker's `RowWriter`; the
    routing table and the prober follow only a write that was applied."""

    def __init__(self, state: PassState, endpoint: EndpointModel, worker: WorkerModel, runtime: Runtime) -> None:
        self.state = state
        self.endpoint = endpoint
        self.worker = worker
        target = EventTarget(endpoint.org_id, KIND_ENDPOINT, endpoint.id, f"worker {worker.id}: ")
        self.writer = RowWriter(state.db, worker, target, "worker", on_written=self._written)
        self.runtime = runtime
        self.object = state.objects.get(worker.id)
        self.is_async = endpoint.type == EndpointType.ASYNC

    def _written(self, outcome: Update | Delete) -> None:
        if isinstance(outcome, Delete) or not ROUTED_COLUMNS.isdisjoint(outcome.values):
            self.state.routes_changed(self.endpoint.id)

    async def delete_row(self, event: tuple[str, str]) -> bool:
        deleted = await self.writer.apply(Delete(event))
        if deleted and self.worker.node_id:
            self.state.capacity_freed()
        return deleted

    # -- steps --------------------------------------------------------------------------------------------

    async def observe(self) -> None:
        """Starting and ready workers: one on a GPU marked unhealthy, or whose container exited, vanished (debounced)
        or never became ready (past the startup timeout), fails; fewer live workers than wanted remain, so a new one
        is placed on a healthy GPU, or waits saying why. Failed workers: their container is stopped, kept for its
        logs, and their GPUs are released."""
        worker, obj, settings = self.worker, self.object, self.state.settings
        if worker.status == WorkerStatus.FAILED:
            if obj is not None and obj.state == ObjectState.RUNNING:
                await self.runtime.stop(obj.id, settings.stop_timeout_seconds)
            if worker.gpu_uuids and await self.writer.apply(Update({"gpu_uuids": []})):
                self.state.capacity_freed()
            return
        if worker.status not in (WorkerStatus.STARTING, WorkerStatus.READY):
            return
        if (unhealthy := self._unhealthy_gpu()) is not None:
            await self.fail(f"its GPU {unhealthy.uuid} {unhealthy.health_reason}; a new worker replaces it")
            return
        if obj is None:
            first = self.state.missing_since.setdefault(worker.id, self.state.now)
            if self.state.now - first >= timedelta(seconds=settings.missing_debounce_seconds):
                await self.fail("its container disappeared: it was removed outside Dockyard")
            return
        self.state.missing_since.pop(worker.id, None)
        if obj.state == ObjectState.EXITED:
            await self.fail(exit_reason(obj, self.state.products.get(self.endpoint.product_id)))
        elif worker.status == WorkerStatus.STARTING and self.is_async:
            await self._async_started()
        elif (
            worker.status == WorkerStatus.STARTING
            and not self.state.prober.is_ready(worker.id)
            and self.state.now - worker.modified_at > timedelta(seconds=settings.worker_startup_timeout)
        ):
            probe = worker_health(worker.published_ports)
            check = f"health check {probe[1]}" if probe is not None else "health check"
            await self.fail(
                f"{check} did not answer 200 within {settings.worker_startup_timeout:g} s of the container starting"
            )

    def _unhealthy_gpu(self) -> GpuInfo | None:
        """The first of the worker's GPUs that the GPU health loop marked unhealthy, if any."""
        held = set(self.worker.gpu_uuids or [])
        for node in self.state.inventory:
            for gpu in node.gpus:
                if gpu.uuid in held and not gpu.healthy:
                    return gpu
        return None

    async def _async_started(self) -> None:
        """A starting async worker is ready once it has called a webhook (`last_seen_at`), failed when none came
        within the startup timeout."""
        worker, settings = self.worker, self.state.settings
        if worker.last_seen_at is not None:
            cold = (self.state.now - worker.created_at).total_seconds()
            ready = Update(
                {
                    "status": WorkerStatus.READY,
                    "health": True,
                    "reason": f"ready: called its webhooks {cold:.1f} s after it was wanted",
                },
                ("WorkerReady", f"ready after a cold start of {cold:.1f} s"),
            )
            if await self.writer.apply(ready):
                self.state.crash_loops.pop(self.endpoint.id, None)
        elif self.state.now - worker.modified_at > timedelta(seconds=settings.worker_call_in_timeout):
            await self.fail(never_called_in(settings, self.endpoint.id))

    async def fail(self, reason: str, *, remove: bool = False) -> None:
        """Mark the worker failed (it is replaced because fewer live workers than wanted remain). Its container
        is kept for its logs unless `remove` (a half-made one). A worker that never became ready counts
        towards its endpoint's crash loop."""
        never_ready = self.worker.status in (WorkerStatus.PENDING, WorkerStatus.STARTING)
        values: dict[str, Any] = {"status": WorkerStatus.FAILED, "reason": reason, "health": False, "drain": False}
        if remove:
            values.update(gpu_uuids=[], published_ports=[], runtime_id="")
        if not await self.writer.apply(Update(values, ("WorkerFailed", reason))):
            return
        self.state.routes.worker_gone(self.endpoint.id, self.worker.id)
        self.state.prober.unwatch(self.worker.id)
        self.state.missing_since.pop(self.worker.id, None)
        if never_ready and self.worker.generation == self.endpoint.generation:
            self.state.crash_loop(self.endpoint).failed(reason)
        self.state.wake()
        if self.worker.node_id:  # a failed worker holds no CPU or memory (its GPUs go at the next observe)
            self.state.capacity_freed()

    async def drain(self, why: str) -> None:
        """No new request goes to the worker from now on; it is retired once it holds none (or after the drain
        timeout). A worker that never got a container is simply deleted."""
        worker = self.worker
        if worker.status == WorkerStatus.PENDING and self.object is None:
            await self.delete_row(("WorkerRemoved", f"not started: {why}"))
            return
        draining = Update(
            {"status": WorkerStatus.DRAINING, "drain": True, "reason": f"draining: {why}"}, ("WorkerDraining", why)
        )
        if not await self.writer.apply(draining):
            return
        self.state.routes.worker_draining(self.endpoint.id, worker.id)
        self.state.prober.unwatch(worker.id)
        await self.settle()

    async def settle(self) -> None:
        """A draining worker is retired when it holds no request, or once it has drained for longer than the
        drain timeout; a stopping one (a retirement cut short) is retired again."""
        worker = self.worker
        if worker.status == WorkerStatus.DRAINING:
            if self.is_async:
                async with self.state.db.read() as session:
                    busy, routed = await held_jobs(session, worker.id), False
            else:
                # A stand-alone gateway that still lists the worker has not yet seen the drain: it may still send
                # it requests, so the worker stays until its report leaves it out.
                busy, routed = self.state.held(self.endpoint.id, worker.id), worker.id in self.state.remote
            timeout = timedelta(seconds=self.state.settings.worker_drain_timeout)
            if (busy or routed) and self.state.now - worker.modified_at < timeout:
                return
            if busy:
                reason = f"stopping: still held {busy} request(s) at the drain timeout"
            elif routed:
                reason = "stopping: a stand-alone gateway still routed to it at the drain timeout"
            else:
                reason = "stopping: drained"
            if not await self.writer.apply(Update({"status": WorkerStatus.STOPPING, "reason": reason})):
                return
        await self.retire("WorkerRemoved", "drained and removed")

    async def retire(self, event_type: str, message: str) -> None:
        """Keep the worker's output (`services.endpoint_logs`), remove its container, then its row; the gateway
        forgets it."""
        target = self.object.id if self.object is not None else worker_object_name(self.worker.id)
        await self._keep_output(target)
        try:
            await self.runtime.remove(target)
        except RuntimeFailure as exc:
            log.warning("removing worker %s failed (%s); the next pass retries", self.worker.id, exc.reason)
            return
        if await self.delete_row((event_type, message)):
            self.state.routes.worker_gone(self.endpoint.id, self.worker.id)
            self.state.prober.unwatch(self.worker.id)
            self.state.missing_since.pop(self.worker.id, None)

    async def _keep_output(self, target: str) -> None:
        """Hand the output of the container about to be removed to `endpoint_logs.keep`. None is kept of an
        endpoint being deleted (its kept output goes with it) or of a worker that never had a container; a read
        that fails keeps nothing rather than holding the removal up."""
        settings, worker = self.state.settings, self.worker
        if not settings.worker_log_bytes or not worker.runtime_id or self.endpoint.desired == DesiredState.DELETED:
            return
        output = bytearray()
        try:
            async for chunk in self.runtime.logs(target, tail=endpoint_logs.KEEP_TAIL_LINES, timestamps=True):
                output += chunk
                if len(output) > 2 * settings.worker_log_bytes:
                    # One byte more than kept, so that `keep` still drops the line this cut in two.
                    del output[: len(output) - settings.worker_log_bytes - 1]
        except (RuntimeFailure, RuntimeUnavailable) as exc:
            log.info("the output of worker %s could not be read before its removal: %s", worker.id, exc)
            return
        await endpoint_logs.keep(self.state.db, worker, bytes(output), settings=settings)

    async def start(self) -> None:
        """pending -> starting: wait out the crash-loop backoff, place it (node, GPUs), create and start its
        container, then hand it to the prober. A runtime refusal fails the worker with the runtime's sentence."""
        endpoint, worker = self.endpoint, self.worker
        loop = self.state.crash_loop(endpoint)
        wait = loop.retry_at - time.monotonic()
        if loop.failures and wait > 0:
            # The stated wait is the backoff, not what is left of it, so passes meanwhile rewrite nothing.
            reason = (
                f"waiting {loop.delay:g} s before starting: {loop.failures} worker(s) in a row failed before "
                f"becoming ready; the last: {loop.reason}"
            )
            await self.writer.apply(Update({"reason": reason}))
            if loop.wake_scheduled_for != loop.retry_at:
                loop.wake_scheduled_for = loop.retry_at
                asyncio.get_running_loop().call_later(wait, self.state.wake)
            return
        product = self.state.products.get(endpoint.product_id)
        if product is None:
            await self.fail(f"product {endpoint.product_id} no longer exists; PUT the endpoint with another product")
            return
        spec = WorkloadSpec.model_validate(endpoint.spec)
        placed = await self._place(product, spec)
        if placed is None:
            return
        registry_auth = None
        if spec.registry_auth_id:
            async with self.state.db.read() as session:
                registry_auth = await registry_auths.resolve(
                    session, endpoint.org_id, spec.registry_auth_id, box=self.state.box
                )
            if registry_auth is None:
                await self.fail(
                    f"registry auth {spec.registry_auth_id} no longer exists; PUT the endpoint with another one",
                    remove=True,
                )
                return
        webhook = await self._webhook_access() if self.is_async else None
        if self.is_async and webhook is None:
            return
        run_spec = build_worker_run_spec(
            endpoint,
            worker,
            product=product,
            box=self.state.box,
            gpus=placed.gpus,
            node_id=placed.node_id,
            registry_auth=registry_auth,
            webhook=webhook,
        )
        try:
            obj = await launch(self.state.db, self.runtime, endpoint.idc_id, run_spec)
        except RuntimeFailure as exc:
            await self.fail(exc.reason, remove=True)
            return
        check = health_check(spec)
        waiting = (
            "its first job-take or ping webhook call"
            if self.is_async
            else f"GET {check.path} on port {check.port} to answer 200"
        )
        starting = Update(
            {
                "status": WorkerStatus.STARTING,
                "reason": f"started; waiting for {waiting}",
                "runtime_id": obj.id,
                "node_id": placed.node_id,
                "published_ports": worker_ports(obj, spec, served=not self.is_async),
            },
            ("WorkerCreated", f"container {obj.name} started on node {placed.node_id or 'the local node'}"),
        )
        if await self.writer.apply(starting):
            started = (utcnow() - worker.created_at).total_seconds()
            self.state.container_start.labels(endpoint.id).observe(started)
            publish_worker(self.state.routes, self.state.prober, worker)

    async def _webhook_access(self) -> WebhookAccess | None:
        """A fresh key for an async worker, its hash recorded on the row before any container holds the key;
        None when the row changed meanwhile (the next pass starts it)."""
        if self.object is not None:
            await self.runtime.remove(self.object.id)
            self.object = None
        key = new_worker_key()
        if not await self.writer.apply(Update({"key_hash": hash_api_key(key)})):
            return None
        settings = self.state.settings
        return WebhookAccess(webhook_base_url(settings), key, ping_interval_ms(settings))

    async def _place(self, product: ProductModel, spec: WorkloadSpec) -> Placed | None:
        """The worker's node, GPUs, CPU and memory (`core.place`). The pool is shared with containers (another
        loop): the choice is made under the server's GPU lock from the holdings every row records now. None when
        the worker cannot be placed this pass (it stays pending, saying why)."""
        allocator = GpuAllocator(self.state.inventory)
        allocator.hold_all(self.state.orphan_gpus)
        demand = Demand(
            self.endpoint.idc_id,
            product.gpu_model,
            spec.gpu_count,
            spec.min_cuda_version,
            product.cpu,
            product.memory_mb,
        )
        placed = await place(self.writer, demand, allocator, self.state.gpu_lock, "WorkerScheduled")
        if isinstance(placed, Unschedulable):
            await self.writer.apply(Update({"reason": UNPLACED_PREFIX + placed.reason}))
            return None
        return placed


def never_called_in(settings: Settings, endpoint_id: str) -> str:
    """Why an async worker that made no webhook call was failed: the URL it was given (no key is in it) and the
    likely cause, the server listening where no container reaches it. The URL is redacted: an operator's
    DOCKYARD_WORKER_WEBHOOK_URL may carry credentials, and the reason is shown to the tenant."""
    url = redact_url(f"{webhook_base_url(settings)}{WEBHOOK_PREFIX}/{endpoint_id}/job-take/")
    if settings.host in LOOPBACK_HOSTS and not settings.worker_webhook_url:
        cause = (
            f"the server listens on {settings.host} only, which no container reaches: start it with "
            "`dockyard server --host 0.0.0.0` (DOCKYARD_HOST), or set DOCKYARD_WORKER_WEBHOOK_URL to an address "
            "the workers reach"
        )
    else:
        cause = (
            "check that the image runs a ppio-gpus or runpod worker and that the URL is reachable from the "
            f"workers (DOCKYARD_WORKER_WEBHOOK_URL); its output says more: `dockyard endpoints logs {endpoint_id}`"
        )
    return (
        f"{NEVER_CALLED_IN_PREFIX}no job-take or ping webhook call within {settings.worker_call_in_timeout:g} s of its "
        f"container starting; it was given {url}; {cause}"
    )


@dataclass
class Plan:
    """What one endpoint's workers should do this pass, decided from the rows after observation."""

    drain: list[tuple[WorkerModel, str]] = field(default_factory=list)
    start: list[WorkerModel] = field(default_factory=list)
    add: int = 0
    settle: list[WorkerModel] = field(default_factory=list)


LIVE = (WorkerStatus.PENDING, WorkerStatus.STARTING, WorkerStatus.READY)
KEEP_FAILED = 3  # failed workers kept per endpoint, newest first, so their logs stay readable


def is_live(worker: WorkerModel) -> bool:
    return worker.status in LIVE and not worker.drain


def wanted_replicas(endpoint: EndpointModel, deleted: bool) -> int:
    """`desired_replicas` within the worker_config's bounds; none for an endpoint being deleted."""
    return 0 if deleted else quotas.wanted_workers(endpoint.desired_replicas, endpoint.worker_config)


def plan(
    endpoint: EndpointModel, workers: list[WorkerModel], wanted: int, deleted: bool, state: PassState, halt: str = ""
) -> Plan:
    """Scale the current generation to `wanted`; roll older generations out only as new workers become ready
    (old ready workers kept >= wanted - new ready), so no request finds the endpoint without a ready worker.
    Surplus goes in the order that loses least: pending, then starting, then ready ones holding the fewest
    requests (in every gateway) and idle longest (in this process's). Deleted, or with a `halt` saying why,
    every live worker drains."""
    result = Plan()
    live = [w for w in workers if is_live(w)]
    if deleted or halt:
        result.drain = [(w, halt or "endpoint deleted") for w in live]
    else:
        current = [w for w in live if w.generation == endpoint.generation]
        surplus = len(current) - wanted
        if surplus > 0:
            result.drain += [(w, "scale down") for w in _least_useful(endpoint.id, current, state)[:surplus]]
        result.add = max(0, -surplus)
        drained = {w.id for w, _ in result.drain}
        new_ready = sum(1 for w in current if w.status == WorkerStatus.READY and w.id not in drained)
        old = [w for w in live if w.generation != endpoint.generation]
        keep = max(0, wanted - new_ready)
        old_ready = [w for w in old if w.status == WorkerStatus.READY]
        rolled = [w for w in old if w.status != WorkerStatus.READY]
        rolled += _least_useful(endpoint.id, old_ready, state)[: max(0, len(old_ready) - keep)]
        result.drain += [(w, "rolled to the new template") for w in rolled]
        result.start = [w for w in current if w.status == WorkerStatus.PENDING and w.id not in drained]
    result.settle = [w for w in workers if w.status in (WorkerStatus.DRAINING, WorkerStatus.STOPPING)]
    return result


def to_reap(workers: list[WorkerModel], deleted: bool) -> list[WorkerModel]:
    """Failed workers whose container and row go: all of an endpoint being deleted, else all but the newest
    `KEEP_FAILED` (kept so their logs stay readable)."""
    failed = [w for w in workers if w.status in (WorkerStatus.FAILED, WorkerStatus.EXITED)]
    failed.sort(key=lambda w: w.created_at, reverse=True)
    return failed if deleted else failed[KEEP_FAILED:]


def _least_useful(endpoint_id: str, workers: list[WorkerModel], state: PassState) -> list[WorkerModel]:
    order = {WorkerStatus.PENDING: 0, WorkerStatus.STARTING: 1, WorkerStatus.READY: 2}
    route = state.routes.get(endpoint_id)
    dispatcher = route.dispatcher if route is not None else None

    def key(worker: WorkerModel) -> tuple[int, int, float, float]:
        newest_first = -worker.created_at.timestamp()
        idle = dispatcher.idle_for(worker.id) if dispatcher is not None else 0.0
        return order[worker.status], state.held(endpoint_id, worker.id), -idle, newest_first

    return sorted(workers, key=key)
