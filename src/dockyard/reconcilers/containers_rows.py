"""One container row's share of a reconcile pass: decide from the loaded row and the observed runtime
objects, act on the runtime, then apply the outcome with a guarded write (see `reconcilers.containers`
for the algorithm as a whole).

Rows at rest (`at_rest_clause`) are read as a few columns (`RestingRow`), or when they hold nothing only
counted, instead of whole rows; `needs_task` says, from those columns and the pass's observations, whether
`RowTask` would do anything for one. It mirrors the task's decisions below, so a change to them must be
reflected there.

Each `RowTask` handles exactly one row. Its writes go through `apply`/`delete_row`, short transactions of
their own guarded by the version the task loaded (and bumped by its own earlier writes), so a row changed by
the API meanwhile is never overwritten: the write changes nothing and the next pass starts from fresh state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Text, and_, cast, delete, or_

from dockyard.config import Settings
from dockyard.core.status import ContainerStatus, DesiredState
from dockyard.core.stored_specs import stored_spec_problem
from dockyard.core.workload import WorkloadSpec
from dockyard.db.base import guarded_update
from dockyard.db.models import ContainerModel, ProductModel
from dockyard.db.session import Database
from dockyard.gpus.allocation import GpuAllocator, Unschedulable, allocate_and_record, describe
from dockyard.gpus.inventory import GpuInfo
from dockyard.runtimes.base import (
    LABEL_NODE,
    ObjectState,
    Runtime,
    RuntimeFailure,
    RuntimeObject,
    RuntimeUnavailable,
)
from dockyard.secrets import SecretBox
from dockyard.services import events, private_images
from dockyard.services.idcs import unreachable_reason
from dockyard.services.runspec import (
    KIND_CONTAINER,
    build_run_spec,
    object_name,
    public_keys_for,
    published,
    remove_authorized_keys,
    write_authorized_keys,
)

log = logging.getLogger(__name__)

REMOVE_ATTEMPTS_BEFORE_ZOMBIE = 3
STOPPED_REASON = "stopped on request"
# Statuses whose runtime object should exist; when it does not, the row is "missing" (debounced).
_OBJECT_EXPECTED = {
    ContainerStatus.RUNNING,
    ContainerStatus.STOPPED,
    ContainerStatus.ERROR,
    ContainerStatus.UNKNOWN,
}


@dataclass
class PassState:
    """What one pass loaded and observed; shared read-only by its row tasks (the allocator excepted)."""

    db: Database
    settings: Settings
    box: SecretBox
    now: datetime
    runtimes: dict[str, Runtime]
    products: dict[str, ProductModel]
    ssh_keys: dict[tuple[str, str], str]
    allocator: GpuAllocator
    objects: dict[str, list[RuntimeObject]]  # by container id
    unreachable: dict[str, str]  # IDC id -> why its runtime cannot be reached (for the operator only)
    # container id -> failed removal passes in a row; the reconciler keeps it across passes
    remove_failures: dict[str, int] = field(default_factory=dict)
    # Held while a placement is chosen and recorded: the server's `ServerContext.gpu_lock`, which the endpoint
    # reconciler takes too (containers.py passes it; a lock of its own only serialises this pass's rows).
    gpu_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # container id -> the generation whose stored spec passed `stored_spec_problem`; the reconciler keeps it across
    # passes, so a spec is read once per generation
    specs_checked: dict[str, int] = field(default_factory=dict)
    # Runtime objects the row tasks removed this pass: the networks step leaves them alone.
    removed: set[str] = field(default_factory=set)
    # Requests (`placement_shape`) that found no room this pass: a younger row asking the same waits without
    # asking, so what frees during the pass never goes to it ahead of an older one.
    no_room: dict[tuple[object, ...], Unschedulable] = field(default_factory=dict)


@dataclass(frozen=True)
class RowResult:
    """Where a row ended this pass, for the gauges; None from a task means the row is gone."""

    status: ContainerStatus
    gpu_uuids: tuple[str, ...]


class RestingRow(NamedTuple):
    """The columns of a row at rest that holds something (GPUs, a recorded object) that a pass needs: for the
    GPU allocations, the orphan check, the gauges and `needs_task`."""

    id: str
    idc_id: str
    desired: DesiredState
    status: ContainerStatus
    gpu_uuids: list[str]
    runtime_id: str
    generation: int
    observed_generation: int
    has_ports: bool
    missing_since: datetime | None


# JSON lists are compared as their stored text: decoding one per row is most of the cost of a pass over many
# rows. Any other spelling of an empty list only makes a row look less at rest than it is, never more.
_EMPTY_LIST = "[]"
_c = ContainerModel
RESTING_COLUMNS = (
    _c.id,
    _c.idc_id,
    _c.desired,
    _c.status,
    cast(_c.gpu_uuids, Text),
    _c.runtime_id,
    _c.generation,
    _c.observed_generation,
    cast(_c.published_ports, Text) != _EMPTY_LIST,
    _c.missing_since,
)


def resting_row(columns: Sequence[Any]) -> RestingRow:
    """A `RestingRow` from a row of `RESTING_COLUMNS`."""
    gpus = columns[4]
    return RestingRow._make([*columns[:4], [] if gpus == _EMPTY_LIST else json.loads(gpus) or [], *columns[5:]])


def at_rest_clause() -> ColumnElement[bool]:
    """Rows for which `RowTask` does nothing unless their runtime objects or their IDC's reachability say
    otherwise (`needs_task`): stopped on request, or in error with no runtime object recorded (a failed
    create, a disappearance) and no update or restart asked for since."""
    return or_(
        and_(_c.desired == DesiredState.STOPPED, _c.status == ContainerStatus.STOPPED, _c.reason == STOPPED_REASON),
        and_(
            _c.desired == DesiredState.RUNNING,
            _c.status == ContainerStatus.ERROR,
            _c.runtime_id == "",
            _c.generation <= _c.observed_generation,
            _c.restart_generation <= _c.observed_restart_generation,
        ),
    )


def holds_nothing_clause() -> ColumnElement[bool]:
    """Among rows at rest, those that hold no GPU and record no object. `needs_task` is true for one only
    when an object carries its id or its IDC is unreachable and it is stopped (`bare_needing_task_clause`),
    so a pass need not read them at all otherwise."""
    return and_(cast(_c.gpu_uuids, Text) == _EMPTY_LIST, _c.runtime_id == "")


def bare_needing_task_clause(unreachable: Collection[str], configured: Collection[str]) -> ColumnElement[bool]:
    """Rows at rest holding nothing whose task marks them unknown: stopped, on an IDC whose runtime could not
    be listed or that has none. (Those with an object are found by id from the object listing.)"""
    return and_(
        at_rest_clause(),
        holds_nothing_clause(),
        _c.status == ContainerStatus.STOPPED,
        or_(_c.idc_id.in_(unreachable), _c.idc_id.not_in(configured)),
    )


def needs_task(row: RestingRow, objects: list[RuntimeObject], reachable: bool) -> bool:
    """Whether `RowTask` would act on or write to a row at rest, given its objects this pass and whether its
    IDC's runtime could be listed; when it would, the pass loads the whole row."""
    if not reachable:  # `_unreachable` marks a stopped row unknown; an error row stays as it is
        return row.status == ContainerStatus.STOPPED
    if row.desired == DesiredState.RUNNING:  # an error with nothing created: only an object changes that
        return bool(objects)
    current = [obj for obj in objects if obj.generation == row.generation]
    if len(current) != len(objects):  # `_converge` removes older generations
        return True
    if not current:  # `_without_object`: a row that should have an object is missing it
        return bool(row.runtime_id) and row.generation <= row.observed_generation
    obj = current[0]  # `_with_object` stops a running object and records it
    return (
        obj.state == ObjectState.RUNNING or obj.id != row.runtime_id or row.has_ports or row.missing_since is not None
    )


def placement_shape(row: ContainerModel, product: ProductModel, spec: WorkloadSpec) -> tuple[object, ...]:
    """What a row asks placement for: rows of one shape are interchangeable to the allocator."""
    return (row.idc_id, product.gpu_model, product.gpu_count, spec.min_cuda_version, product.cpu, product.memory_mb)


def waiting_reason(unschedulable: Unschedulable, idc_id: str) -> str:
    """A waiting container's reason: what it waits for and what frees it."""
    return (
        f"waiting for capacity: {unschedulable.shortage}; it starts by itself once another container or endpoint "
        f"worker on IDC {idc_id} is deleted and frees enough"
    )


def exit_reason(obj: RuntimeObject, product: ProductModel | None) -> str:
    """Why a container ended, in words: the exit code, the signal behind codes over 128, and the memory
    limit when memory is the likely cause. Podman before 5.0 never reports OOMKilled, so a SIGKILL that
    Dockyard did not send is named as the usual suspect rather than asserted."""
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


class RowTask:
    """One row's work in one pass. Owns no state beyond the pass: everything it needs is in the row, the
    observed objects and `PassState`."""

    def __init__(self, state: PassState, row: ContainerModel) -> None:
        self.state = state
        self.row = row
        self.version = row.version
        self.status = row.status
        self.gpu_uuids: tuple[str, ...] = tuple(row.gpu_uuids or ())
        self.objects = state.objects.get(row.id, [])
        self.runtime = state.runtimes.get(row.idc_id)

    @property
    def result(self) -> RowResult:
        return RowResult(self.status, self.gpu_uuids)

    async def run(self) -> RowResult | None:
        """Converge the row one step; returns where it ended, or None when the row was deleted."""
        row = self.row
        if row.idc_id in self.state.unreachable or self.runtime is None:
            await self._unreachable()
            return self.result
        if row.desired == DesiredState.DELETED:
            return await self._terminate(self.runtime)
        try:
            if (refused := self._refused()) is not None:
                await self._stop_refused(self.runtime, refused)
            else:
                await self._converge(self.runtime)
        except RuntimeUnavailable as exc:  # the engine went away mid-pass; the next pass marks it unknown
            log.info("container %s: runtime unavailable mid-pass: %s", row.id, exc)
        return self.result

    def _refused(self) -> str | None:
        """What the row's stored spec holds that today's input rules refuse (stored by an earlier release), or None.
        A generation found fine is not read again (`PassState.specs_checked`): only an update changes a spec."""
        row = self.row
        if self.state.specs_checked.get(row.id) == row.generation:
            return None
        problem = stored_spec_problem(WorkloadSpec.model_validate(row.spec))
        if problem is None:
            self.state.specs_checked[row.id] = row.generation
        return problem

    async def _stop_refused(self, runtime: Runtime, problem: str) -> None:
        """Remove every object of the row, which may run with what is refused (a mount of another organization's
        storage, every GPU), and record `error` saying what and how to run it again."""
        for obj in self.objects:
            try:
                await self._remove(runtime, obj.id)
            except RuntimeFailure as exc:
                log.warning("container %s: its refused object %s not removed this pass: %s", self.row.id, obj.id, exc)
                return
        reason = (
            f"stopped: its configuration, stored before Dockyard checked it, holds what is now refused: {problem}; "
            f"update the container without it (PUT /api/v1/containers/{self.row.id}) and it starts again"
        )
        await self._fail_create(reason, "Refused")

    async def _remove(self, runtime: Runtime, object_id: str) -> None:
        await runtime.remove(object_id)
        self.state.removed.add(object_id)

    # -- writes -------------------------------------------------------------------------------------------

    async def apply(self, event: tuple[str, str] | None = None, **values: Any) -> bool:
        """Write the values that differ from the loaded row, guarded by version; plus `event`, atomically."""
        changed = {key: value for key, value in values.items() if getattr(self.row, key) != value}
        if not changed:
            return True
        async with self.state.db.write() as session:
            written = await guarded_update(session, ContainerModel, self.row.id, self.version, **changed)
            if written and event is not None:
                events.record(
                    session,
                    org_id=self.row.org_id,
                    object_kind=KIND_CONTAINER,
                    object_id=self.row.id,
                    type=event[0],
                    message=event[1],
                )
        if written:
            self.version += 1
            for key, value in changed.items():
                setattr(self.row, key, value)
            self.status = self.row.status
            self.gpu_uuids = tuple(self.row.gpu_uuids or ())
        else:
            log.info("container %s changed during the pass; the next pass redoes it", self.row.id)
        return written

    async def set_status(self, status: ContainerStatus, reason: str, event_type: str, **values: Any) -> bool:
        event = (event_type, reason or status.value) if status != self.row.status else None
        return await self.apply(event, status=status, reason=reason, **values)

    async def delete_row(self) -> bool:
        async with self.state.db.write() as session:
            result = await session.execute(
                delete(ContainerModel).where(ContainerModel.id == self.row.id, ContainerModel.version == self.version)
            )
            deleted = bool(getattr(result, "rowcount", 0) == 1)
            if deleted:
                events.record(
                    session,
                    org_id=self.row.org_id,
                    object_kind=KIND_CONTAINER,
                    object_id=self.row.id,
                    type="Deleted",
                    message="its runtime objects are removed and its GPUs released",
                )
        return deleted

    # -- states -------------------------------------------------------------------------------------------

    async def _unreachable(self) -> None:
        """Nothing is known about the IDC's objects: say so on rows that claim a live object, change nothing
        else (no GPU released, no row deleted) until a pass reaches the runtime again. Why it cannot be reached
        is the operator's (services/idcs.record_runtime_errors), never in a tenant's reason."""
        if self.row.status in (ContainerStatus.RUNNING, ContainerStatus.STOPPED):
            await self.set_status(ContainerStatus.UNKNOWN, unreachable_reason(self.row.idc_id), "Unreachable")

    async def _terminate(self, runtime: Runtime) -> RowResult | None:
        row = self.row
        grace = timedelta(seconds=self.state.settings.zombie_grace_seconds)
        retrying = row.id in self.state.remove_failures
        if row.status == ContainerStatus.ZOMBIE and not retrying and self.state.now < row.created_at + grace:
            return self.result  # an orphan's zombie row waits out the grace before its first removal
        failure = ""
        for obj in self.objects:
            try:
                await self._remove(runtime, obj.id)
            except RuntimeFailure as exc:
                failure = exc.reason
        if failure:
            attempts = self.state.remove_failures.get(row.id, 0) + 1
            self.state.remove_failures[row.id] = attempts
            if attempts >= REMOVE_ATTEMPTS_BEFORE_ZOMBIE:
                reason = f"removing it failed {attempts} times ({failure}); Dockyard keeps retrying"
                await self.set_status(ContainerStatus.ZOMBIE, reason, "Zombie")
            return self.result
        self.state.remove_failures.pop(row.id, None)
        remove_authorized_keys(self.state.settings.data_dir, row.id)
        if await self.delete_row():
            return None
        return self.result

    async def _converge(self, runtime: Runtime) -> None:
        row = self.row
        current = [obj for obj in self.objects if obj.generation == row.generation]
        previous = [obj for obj in self.objects if obj.generation != row.generation]
        for obj in previous:  # an update recreates: the old generation goes first
            try:
                await self._remove(runtime, obj.id)
            except RuntimeFailure as exc:
                await self.set_status(
                    ContainerStatus.ERROR, f"cannot remove the previous version: {exc.reason}", "Failed"
                )
                return
        if current:
            await self._with_object(runtime, current[0])
        else:
            await self._without_object(runtime)

    async def _with_object(self, runtime: Runtime, obj: RuntimeObject) -> None:
        row = self.row
        timeout = self.state.settings.stop_timeout_seconds
        if row.desired == DesiredState.STOPPED:
            if obj.state == ObjectState.RUNNING:
                await runtime.stop(obj.id, timeout)
            await self.set_status(
                ContainerStatus.STOPPED,
                STOPPED_REASON,
                "Stopped",
                runtime_id=obj.id,
                published_ports=[],
                missing_since=None,
            )
            return
        try:
            if row.restart_generation > row.observed_restart_generation:
                obj = await runtime.restart(obj.id, timeout)
            elif obj.state == ObjectState.CREATED or (
                obj.state == ObjectState.EXITED and row.status in (ContainerStatus.CREATING, ContainerStatus.STOPPED)
            ):
                obj = await runtime.start(obj.id)
        except RuntimeFailure as exc:
            await self.set_status(
                ContainerStatus.ERROR,
                exc.reason,
                "Failed",
                observed_restart_generation=row.restart_generation,
                missing_since=None,
            )
            return
        await self._observed(obj)

    async def _observed(self, obj: RuntimeObject) -> None:
        """Record a running object as running and an exited one as the error its exit explains."""
        row = self.row
        common: dict[str, Any] = {
            "runtime_id": obj.id,
            "observed_generation": row.generation,
            "observed_restart_generation": row.restart_generation,
            "missing_since": None,
        }
        if not row.node_id and obj.labels.get(LABEL_NODE):
            # Made before placement recorded CPU-only containers' nodes: the node it holds CPU and memory on.
            common["node_id"] = obj.labels[LABEL_NODE]
        if obj.state == ObjectState.RUNNING:
            if row.status != ContainerStatus.RUNNING:
                common.update(started_at=obj.started_at or self.state.now, exit_code=None)
            await self.set_status(ContainerStatus.RUNNING, "", "Started", published_ports=published(obj), **common)
        elif obj.state == ObjectState.EXITED and row.status != ContainerStatus.ERROR:
            # The object is kept so its logs stay readable, and so are its GPUs until a restart or delete.
            reason = exit_reason(obj, self.state.products.get(row.product_id))
            await self.set_status(
                ContainerStatus.ERROR, reason, "Exited", exit_code=obj.exit_code, published_ports=[], **common
            )
        else:  # already an error (its reason stays), or a state in passing (paused)
            await self.apply(**common)

    async def _without_object(self, runtime: Runtime) -> None:
        row = self.row
        new_generation = row.generation > row.observed_generation
        restart = row.restart_generation > row.observed_restart_generation
        never_created = not row.runtime_id or new_generation
        if row.desired == DesiredState.RUNNING and (
            (never_created and row.status != ContainerStatus.ERROR) or new_generation or restart
        ):
            await self._create(runtime)
        elif row.desired == DesiredState.STOPPED and never_created:
            await self.set_status(ContainerStatus.STOPPED, STOPPED_REASON, "Stopped")
        elif row.runtime_id and row.status in _OBJECT_EXPECTED:
            await self._missing()

    async def _missing(self) -> None:
        """Debounced: one pass that does not see the object (an engine restarting, a list racing a create)
        is not yet a disappearance."""
        row = self.row
        if row.missing_since is None:
            await self.apply(missing_since=self.state.now)
            return
        if self.state.now - row.missing_since < timedelta(seconds=self.state.settings.missing_debounce_seconds):
            return
        await self.set_status(
            ContainerStatus.ERROR,
            "container disappeared: its runtime object was removed outside Dockyard",
            "Disappeared",
            runtime_id="",
            published_ports=[],
            gpu_uuids=[],
            node_id="",
            missing_since=None,
        )

    async def _fail_create(self, reason: str, event_type: str = "Failed") -> None:
        await self.set_status(
            ContainerStatus.ERROR,
            reason,
            event_type,
            gpu_uuids=[],
            node_id="",
            runtime_id="",
            published_ports=[],
            observed_generation=self.row.generation,
            observed_restart_generation=self.row.restart_generation,
        )

    async def _wait(self, unschedulable: Unschedulable) -> None:
        """What the row asks for is held by others: it stays `creating`, holding nothing, with a reason saying what
        it waits for, and every pass asks again (a release wakes the loop). The event comes once per reason."""
        reason = waiting_reason(unschedulable, self.row.idc_id)
        await self.apply(
            ("Waiting", reason) if reason != self.row.reason else None,
            status=ContainerStatus.CREATING,
            reason=reason,
            gpu_uuids=[],
            node_id="",
            runtime_id="",
            published_ports=[],
        )

    async def _allocate(self, product: ProductModel, spec: WorkloadSpec) -> tuple[str, list[GpuInfo]] | None:
        """The row's node, GPUs, CPU and memory, recorded on the row before anything is created so that a crash
        can never hand the same GPU (or the same share of a node) out twice. None when nothing may be created
        this pass: the row waits when others hold what it needs, and ends `error` when no node could ever take
        it."""
        row, allocator = self.row, self.state.allocator
        known = [gpu for uuid in row.gpu_uuids or [] if (gpu := allocator.gpu(uuid)) is not None]
        if row.node_id and len(known) == product.gpu_count == len(row.gpu_uuids):
            return row.node_id, known
        shape = placement_shape(row, product, spec)
        if (older := self.state.no_room.get(shape)) is not None:
            await self._wait(older)
            return None
        # Endpoint workers draw from the same pool in another loop: allocate_and_record refreshes from every row
        # under the shared lock and records the choice before letting go, so neither loop hands out what the
        # other took.
        outcome = await allocate_and_record(
            self.state.gpu_lock,
            self.state.db,
            allocator,
            row.id,
            row.idc_id,
            product.gpu_model,
            product.gpu_count,
            spec.min_cuda_version,
            lambda chosen: self.apply(("Scheduled", describe(chosen)), gpu_uuids=chosen.uuids, node_id=chosen.node_id),
            cpu=product.cpu,
            memory_mb=product.memory_mb,
        )
        if isinstance(outcome, Unschedulable) and outcome.held:
            self.state.no_room[shape] = outcome
            await self._wait(outcome)
            return None
        if isinstance(outcome, Unschedulable):
            await self._fail_create(outcome.reason, "Unschedulable")
            return None
        return None if outcome is None else (outcome.node_id, list(outcome.gpus))

    async def _create(self, runtime: Runtime) -> None:
        row = self.row
        product = self.state.products.get(row.product_id)
        if product is None:
            await self._fail_create(f"product {row.product_id} no longer exists; recreate the container")
            return
        spec = WorkloadSpec.model_validate(row.spec)
        placed = await self._allocate(product, spec)
        if placed is None:
            return
        node_id, gpus = placed
        data_dir = self.state.settings.data_dir
        keys = public_keys_for(row, self.state.ssh_keys)
        if keys:
            write_authorized_keys(data_dir, row.id, keys)
        run_spec = build_run_spec(
            row, product=product, box=self.state.box, data_dir=data_dir, public_keys=keys, gpus=gpus, node_id=node_id
        )
        run_spec = await private_images.with_pull_policy(self.state.db, row.idc_id, run_spec)
        try:
            obj = await runtime.create(run_spec)
            obj = await runtime.start(obj.id)
        except RuntimeFailure as exc:
            with contextlib.suppress(RuntimeFailure, RuntimeUnavailable):
                await runtime.remove(object_name(row.id, row.generation))
            await self._fail_create(exc.reason)
            return
        await self._observed(obj)
