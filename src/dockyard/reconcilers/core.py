"""The reconciler core: one machine for everything Dockyard runs on a runtime, containers and endpoint workers alike.

A loop built on it (reconcilers/containers.py, reconcilers/endpoints.py) is level-triggered, as a kopf operator's
handlers are: it is not told what changed, it is woken (by the API, a timer, another loop, or nothing at all, every
`reconcile_interval`) and looks at the whole picture afresh. The database holds what users want (the desired state,
a generation) and what was last observed; the runtime is the truth about what exists. A missed wake-up, a crash or a
write that lost a race therefore costs one pass, never a wrong state. One pass:

1. **Load** the rows in one read transaction: the kind says which, and what else it needs (products, nodes, keys).
2. **Observe** (`observe`): ask each IDC's runtime once for every object it manages (`Runtime.list_managed`), and
   find each object's row by its `dockyard.kind` and `dockyard.id` labels. A runtime that cannot be reached is
   unreachable for the whole pass: nothing is concluded about its objects, so nothing is failed or removed for it.
3. **Decide, act, apply**, row by row and concurrently (`Steps`: at most `CONCURRENCY` rows at once; a step that
   raises is logged and never stops the others). A row's step decides from the loaded row and its observed objects
   what the runtime must do, does it, and returns the outcome as a result object: an `Update` (the columns to write
   and the event that explains them) or a `Delete`. `RowWriter` applies it as one guarded write (`WHERE id = ? AND
   version = ?`) with its event, in one short transaction of its own (none is held while the runtime acts), so a
   row the API changed meanwhile is never overwritten: the write changes nothing and the next pass starts from what
   is now there.
   A step that creates first places the row (`place`: its node, GPUs, CPU and memory, chosen under the server's
   placement lock from what every row holds), and the choice is applied the same way before anything exists on the
   runtime, so a crash never hands one GPU out twice; `launch` then creates and starts the object, and removes
   what a refused create left half made.
4. **Orphans** (`Orphans`): an object whose id names no row is remembered from its first sighting and removed once
   it has been seen for the zombie grace, unless the kind adopts it (a container gets a `zombie` row). Objects
   without this installation's labels are never listed, so never touched.
5. **Export** the kind's gauges (`export_statuses`): every status of its vocabulary, zeros included.

What differs stays with the kind: its row model and status vocabulary, how a row becomes a `RunSpec`, its events,
and the decisions only it makes (a container's stop and restart, an endpoint's scaling, rolling and draining). The
core speaks to a runtime only through the contract of runtimes/base.py. A new backend (Kubernetes) therefore plugs
in under this core by implementing that contract, and both kinds run on it unchanged: it needs no loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, NamedTuple, TypeVar

from prometheus_client import Gauge
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.core.stored_specs import stored_spec_problem
from dockyard.core.workload import WorkloadSpec
from dockyard.db.base import guarded_update, utcnow
from dockyard.db.models import ContainerModel, EndpointModel, ProductModel, WorkerModel
from dockyard.db.session import Database
from dockyard.gpus.allocation import GpuAllocator, Unschedulable, allocate_and_record, describe
from dockyard.gpus.inventory import GpuInfo
from dockyard.reconcilers.nodes import NodeCapacity
from dockyard.runtimes.base import LABEL_KIND, RunSpec, Runtime, RuntimeFailure, RuntimeObject, RuntimeUnavailable
from dockyard.secrets import SecretBox
from dockyard.services import events, private_images

log = logging.getLogger(__name__)

CONCURRENCY = 8
# A placed row's reason until its object runs: it no longer waits for a node but for its image and its start.
PLACED_REASON = "placed on node {}; pulling the image and starting it"

T = TypeVar("T")
# The rows a pass writes: those of what runs on a runtime, and the endpoints that own workers.
RowT = TypeVar("RowT", ContainerModel, WorkerModel, EndpointModel)
# The rows that hold a placement.
PlacedT = TypeVar("PlacedT", ContainerModel, WorkerModel)

Event = tuple[str, str]  # an event's type and message


class RuntimeLoop:
    """What a loop over one kind of runtime object keeps across passes: the node capacity it records, the orphans it
    has seen, the stored specs it has checked. A subclass's `reconcile_once` runs the pass this module describes."""

    def __init__(self, context: ServerContext, noun: str) -> None:
        self.context = context
        self.interval = context.settings.reconcile_interval
        self._capacity = NodeCapacity(context)
        self._orphans = Orphans(noun)
        self._specs = SpecChecks()


class Steps:
    """A pass's row steps, run concurrently, at most `CONCURRENCY` at once. A step that raises is logged and never
    stops the others: it left its row as its last guarded write did, and the next pass redoes it."""

    def __init__(self) -> None:
        self._limit = asyncio.Semaphore(CONCURRENCY)

    async def run(self, step: Awaitable[T], otherwise: Callable[[], T], what: str, *args: object) -> T:
        """What `step` returns; what `otherwise` returns when it raised. `what`, a log format with `args`, names the
        step in the log."""
        async with self._limit:
            try:
                return await step
            except RuntimeUnavailable as exc:  # the engine went away mid-pass
                log.info(what + " could not reach its runtime (%s); the next pass retries", *args, exc)
            except Exception:
                log.exception(what + " failed; the next pass retries", *args)
            return otherwise()

    async def each(self, steps: Iterable[Awaitable[None]], what: str) -> None:
        await asyncio.gather(*(self.run(step, lambda: None, what) for step in steps))


@dataclass(kw_only=True)
class Pass:
    """What every pass holds for its row steps; a kind's pass state adds what it loaded and observed."""

    db: Database
    settings: Settings
    box: SecretBox
    now: datetime
    products: dict[str, ProductModel]
    # Held while a placement is chosen and recorded: the server's `ServerContext.gpu_lock`, which every loop that
    # places takes (a lock of a pass's own only serialises that pass's rows).
    gpu_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    steps: Steps = field(default_factory=Steps)


@dataclass(frozen=True)
class Observation:
    """Every IDC's runtime, listed once in a pass."""

    listed: dict[str, list[RuntimeObject]]  # IDC whose runtime answered -> every object it manages, of any kind
    unreachable: dict[str, str]  # IDC whose runtime could not be listed -> why (for the operator only)
    idc_of: dict[str, str]  # runtime object id -> the IDC that listed it

    def objects(self, kind: str) -> dict[str, list[RuntimeObject]]:
        """The objects of `kind` (their `dockyard.kind`) by the id of the row they belong to (their `dockyard.id`)."""
        found: dict[str, list[RuntimeObject]] = defaultdict(list)
        for listed in self.listed.values():
            for obj in listed:
                if obj.labels.get(LABEL_KIND) == kind and obj.resource_id:
                    found[obj.resource_id].append(obj)
        return dict(found)


async def observe(runtimes: Mapping[str, Runtime]) -> Observation:
    """List every runtime once, concurrently."""
    idcs = list(runtimes)
    unreachable: dict[str, str] = {}

    async def listing(idc_id: str) -> list[RuntimeObject]:
        try:
            return await runtimes[idc_id].list_managed()
        except RuntimeUnavailable as exc:
            unreachable[idc_id] = str(exc) or type(exc).__name__
            return []

    listings = await asyncio.gather(*(listing(idc_id) for idc_id in idcs))
    listed = {idc_id: objs for idc_id, objs in zip(idcs, listings, strict=True) if idc_id not in unreachable}
    idc_of = {obj.id: idc_id for idc_id, objs in listed.items() for obj in objs}
    return Observation(listed, unreachable, idc_of)


class Update(NamedTuple):
    """A step's outcome for its row: the columns to write and the event that explains them, written together or not
    at all."""

    values: dict[str, Any]
    event: Event | None = None


class Delete(NamedTuple):
    """A step's outcome for a row that goes: deleted with the event that says so, together or not at all."""

    event: Event


Outcome = Update | Delete | None  # None: nothing to write


class EventTarget(NamedTuple):
    """Where a row's events are recorded: on the object users know, which for a worker is its endpoint (`prefix` then
    names the worker in each message)."""

    org_id: str
    object_kind: str
    object_id: str
    prefix: str = ""

    def record(self, session: AsyncSession, type: str, message: str) -> None:
        events.record(
            session,
            org_id=self.org_id,
            object_kind=self.object_kind,
            object_id=self.object_id,
            type=type,
            message=f"{self.prefix}{message}",
        )


async def guarded_write(
    session: AsyncSession,
    model: type[RowT],
    row_id: str,
    version: int,
    values: Mapping[str, Any],
    target: EventTarget,
    event: Event | None,
) -> bool:
    """Write `values` to the row if it is still at `version`, and `event` with them, in the caller's transaction;
    whether it was written."""
    written = await guarded_update(session, model, row_id, version, **values)
    if written and event is not None:
        target.record(session, *event)
    return written


class RowWriter(Generic[RowT]):
    """Applies one row's outcomes through a pass. Each write is guarded by the version the pass loaded, bumped by the
    writer's own earlier writes, and what it wrote is kept on the loaded row, so a later step decides from it.
    `on_written`, when given, is called after each write that committed, with what it wrote: the `Update` of the
    columns that changed, or the `Delete`."""

    def __init__(
        self,
        db: Database,
        row: RowT,
        target: EventTarget,
        noun: str,
        on_written: Callable[[Update | Delete], None] | None = None,
    ) -> None:
        self.db = db
        self._on_written = on_written
        self.row: RowT = row
        self.version = row.version
        self.target = target
        self._noun = noun

    async def apply(self, outcome: Outcome) -> bool:
        """Write `outcome` with its event, atomically: an `Update`'s values that differ from the loaded row, or a
        `Delete`. True when written or when there was nothing to write; False when the row changed meanwhile (the
        next pass redoes it)."""
        if outcome is None:
            return True
        if isinstance(outcome, Delete):
            deleted = await self._delete(outcome.event)
            if deleted and self._on_written is not None:
                self._on_written(outcome)
            return deleted
        changed = {key: value for key, value in outcome.values.items() if getattr(self.row, key) != value}
        if not changed:
            return True
        # Kept on the loaded row too: a worker's drain and startup timeouts count from its last change.
        changed["modified_at"] = utcnow()
        model = type(self.row)
        async with self.db.write() as session:
            written = await guarded_write(
                session, model, self.row.id, self.version, changed, self.target, outcome.event
            )
        if written:
            self.version += 1
            for key, value in changed.items():
                setattr(self.row, key, value)
            if self._on_written is not None:
                self._on_written(Update(changed, outcome.event))
        else:
            log.info("%s %s changed during the pass; the next pass redoes it", self._noun, self.row.id)
        return written

    async def _delete(self, event: Event) -> bool:
        model = type(self.row)
        async with self.db.write() as session:
            result = await session.execute(delete(model).where(model.id == self.row.id, model.version == self.version))
            deleted = bool(getattr(result, "rowcount", 0) == 1)
            if deleted:
                self.target.record(session, *event)
        return deleted


@dataclass(frozen=True)
class Demand:
    """What a row asks placement for; rows of one demand are interchangeable to the allocator."""

    idc_id: str
    gpu_model: str
    gpu_count: int
    min_cuda_version: str | None
    cpu: float
    memory_mb: int


@dataclass(frozen=True)
class Placed:
    """Where a row runs: its node and the GPUs it holds there."""

    node_id: str
    gpus: list[GpuInfo]


async def place(
    writer: RowWriter[PlacedT],
    demand: Demand,
    allocator: GpuAllocator,
    lock: asyncio.Lock,
    event_type: str,
    no_room: dict[Demand, Unschedulable] | None = None,
) -> Placed | Unschedulable | None:
    """The row's node, GPUs, CPU and memory: the placement its row records when every GPU of it is still known and
    healthy, else one chosen under `lock`, the one lock of every loop that places, and written to the row (with an
    `event_type` event) before anything is created, so a crash never hands out one GPU or one share of a node twice.
    The `Unschedulable` (with its reason) when nothing fits; None when the write lost its race (the next pass tries
    again). `no_room`, where given, holds the demands that found no room this pass: a younger row of the same demand
    gets the same answer without asking, so what frees meanwhile never goes to it ahead of the older one."""
    row = writer.row
    known = [gpu for uuid in row.gpu_uuids or [] if (gpu := allocator.gpu(uuid)) is not None]
    if row.node_id and len(known) == demand.gpu_count == len(row.gpu_uuids) and all(gpu.healthy for gpu in known):
        return Placed(row.node_id, known)
    if no_room is not None and (earlier := no_room.get(demand)) is not None:
        return earlier
    outcome = await allocate_and_record(
        lock,
        writer.db,
        allocator,
        row.id,
        demand.idc_id,
        demand.gpu_model,
        demand.gpu_count,
        demand.min_cuda_version,
        # The reason changes with the placement: what waits now is the image's pull and the start, not a node.
        lambda chosen: writer.apply(
            Update(
                {"gpu_uuids": chosen.uuids, "node_id": chosen.node_id, "reason": PLACED_REASON.format(chosen.node_id)},
                (event_type, describe(chosen)),
            )
        ),
        cpu=demand.cpu,
        memory_mb=demand.memory_mb,
    )
    if isinstance(outcome, Unschedulable):
        if outcome.held and no_room is not None:
            no_room[demand] = outcome
        return outcome
    return None if outcome is None else Placed(outcome.node_id, list(outcome.gpus))


async def launch(db: Database, runtime: Runtime, idc_id: str, run_spec: RunSpec) -> RuntimeObject:
    """Create and start the object `run_spec` describes, its image pulled as the IDC's private images require
    (services/private_images.py). A `RuntimeFailure` (a missing image, a port taken) is raised once the half-made
    object is removed."""
    run_spec = await private_images.with_pull_policy(db, idc_id, run_spec)
    try:
        obj = await runtime.create(run_spec)
        return await runtime.start(obj.id)
    except RuntimeFailure:
        with contextlib.suppress(RuntimeFailure, RuntimeUnavailable):
            await runtime.remove(run_spec.name)
        raise


class SpecChecks:
    """The generation of each row whose stored spec passed today's input rules (core.stored_specs), kept across
    passes: only an update changes a spec, and the API checks it, so a spec is read once per generation."""

    def __init__(self) -> None:
        self._passed: dict[str, int] = {}

    def keep_only(self, row_ids: Iterable[str]) -> None:
        """Forget the rows not among `row_ids` (deleted, or not read whole this pass)."""
        keep = set(row_ids)
        self._passed = {row_id: generation for row_id, generation in self._passed.items() if row_id in keep}

    def problem(self, row_id: str, generation: int, spec: dict[str, Any]) -> str | None:
        """What the spec, stored by an earlier release, holds that today's rules refuse; None when nothing."""
        if self._passed.get(row_id) == generation:
            return None
        problem = stored_spec_problem(WorkloadSpec.model_validate(spec))
        if problem is None:
            self._passed[row_id] = generation
        return problem


def exit_reason(obj: RuntimeObject, product: ProductModel | None) -> str:
    """Why an object ended, in words: the exit code, the signal behind codes over 128, and the memory limit when
    memory is the likely cause. Podman before 5.0 never reports OOMKilled, so a SIGKILL that Dockyard did not send
    is named as the usual suspect rather than asserted."""
    code = obj.exit_code if obj.exit_code is not None else -1
    limit = f"; the product allows {product.memory_mb} MiB" if product is not None else ""
    if obj.oom_killed:
        return f"exited with code {code} (killed: out of memory{limit})"
    if code == 128 + signal.SIGKILL:
        return f"exited with code {code} (killed by SIGKILL: most often out of memory{limit})"
    if code > 128:
        try:
            return f"exited with code {code} (killed by {signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exited with code {code}"


Adopt = Callable[[str, list[RuntimeObject]], Awaitable[bool]]


class Orphans:
    """Objects of one kind whose id names no row, each remembered from its first sighting (monotonic seconds) and
    removed once seen for the grace; kept across passes, forgotten once no longer listed."""

    def __init__(self, noun: str) -> None:
        self._noun = noun
        self._seen: dict[str, float] = {}

    async def sweep(
        self,
        orphans: Mapping[str, list[RuntimeObject]],
        observation: Observation,
        runtimes: Mapping[str, Runtime],
        grace: float,
        adopt: Adopt | None = None,
    ) -> None:
        """Handle each orphan (the id it names -> its objects): unless `adopt` takes it (a container gets a `zombie`
        row), remove it once it has been seen for `grace` seconds. A failure is logged; the next pass retries."""
        for resource_id in [seen for seen in self._seen if seen not in orphans]:
            del self._seen[resource_id]
        for resource_id, objs in orphans.items():
            try:
                if adopt is not None and await adopt(resource_id, objs):
                    continue
                first_seen = self._seen.setdefault(resource_id, time.monotonic())
                if time.monotonic() - first_seen < grace:
                    continue
                runtime = runtimes[observation.idc_of[objs[0].id]]
                for obj in objs:
                    await runtime.remove(obj.id)
                    log.info("removed orphan %s object %s (no %s %s)", self._noun, obj.name, self._noun, resource_id)
                del self._seen[resource_id]
            except Exception:
                log.exception("handling orphan %s %s failed; the next pass retries", self._noun, resource_id)


def export_statuses(gauge: Gauge, vocabulary: Iterable[StrEnum], counts: Counter[Any], *labels: str) -> None:
    """Set `gauge` (labelled `labels`, then the status) for every status of `vocabulary` from `counts`, zeros
    included, so a status that empties reads 0."""
    for status in vocabulary:
        gauge.labels(*labels, status.value).set(counts[status])
