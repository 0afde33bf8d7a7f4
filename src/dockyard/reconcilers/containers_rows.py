"""One container row's share of a reconcile pass (see `reconcilers.containers` for the algorithm as a whole, and
`reconcilers.core` for the machine it runs on).

Rows at rest (`at_rest_clause`) are read as a few columns (`RestingRow`), or when they hold nothing only
counted, instead of whole rows; `needs_task` says, from those columns and the pass's observations, whether
`RowTask` would do anything for one. It mirrors the task's decisions below, so a change to them must be
reflected there.

Each `RowTask` handles exactly one row: it decides from the loaded row and its observed objects, acts on the
runtime, and returns its outcome, an `Update` (a status in the container vocabulary, its reason and the event that
explains it) or the row's `Delete`, which the row's `RowWriter` applies with one guarded write. The only other
write is the placement, recorded by `core.place` before anything is created.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Text, and_, cast, or_

from dockyard.core.status import ContainerStatus, DesiredState
from dockyard.core.workload import WorkloadSpec
from dockyard.db.models import ContainerModel
from dockyard.gpus.allocation import GpuAllocator, Unschedulable
from dockyard.reconcilers.core import (
    Delete,
    Demand,
    EventTarget,
    Outcome,
    Pass,
    RowWriter,
    SpecChecks,
    Update,
    exit_reason,
    launch,
    place,
)
from dockyard.runtimes.base import (
    LABEL_NODE,
    ObjectState,
    PortBinding,
    PortTaken,
    RunSpec,
    Runtime,
    RuntimeFailure,
    RuntimeObject,
)
from dockyard.services.idcs import unreachable_reason
from dockyard.services.runspec import (
    KIND_CONTAINER,
    build_run_spec,
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


@dataclass(kw_only=True)
class PassState(Pass):
    """What one pass loaded and observed; shared read-only by its row tasks (the allocator excepted)."""

    runtimes: dict[str, Runtime]
    ssh_keys: dict[tuple[str, str], str]
    allocator: GpuAllocator
    objects: dict[str, list[RuntimeObject]]  # by container id
    unreachable: dict[str, str]  # IDC id -> why its runtime cannot be reached (for the operator only)
    # container id -> failed removal passes in a row; the reconciler keeps it across passes
    remove_failures: dict[str, int] = field(default_factory=dict)
    # The stored specs found fine, by generation; the reconciler keeps them across passes.
    specs: SpecChecks = field(default_factory=SpecChecks)
    # Runtime objects the row tasks removed this pass: the networks step leaves them alone.
    removed: set[str] = field(default_factory=set)
    # Demands that found no room this pass: a younger row asking the same waits without asking, so what frees during
    # the pass never goes to it ahead of an older one.
    no_room: dict[Demand, Unschedulable] = field(default_factory=dict)


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


def waiting_reason(unschedulable: Unschedulable, idc_id: str) -> str:
    """A waiting container's reason: what it waits for and what frees it."""
    return (
        f"waiting for capacity: {unschedulable.shortage}; it starts by itself once another container or endpoint "
        f"worker on IDC {idc_id} is deleted and frees enough"
    )


def _host_ports(published_ports: Sequence[dict[str, Any]]) -> dict[tuple[int, str], int]:
    """(container port, protocol) -> host port, from the row's `published_ports`; an entry that is not a port
    (none is written so, but the column is JSON) is left out."""
    ports = {}
    for entry in published_ports:
        try:
            ports[int(entry["containerPort"]), str(entry["protocol"]).lower()] = int(entry["port"])
        except (KeyError, TypeError, ValueError):
            continue
    return ports


def keep_host_ports(ports: Sequence[PortBinding], previous: Sequence[dict[str, Any]]) -> list[PortBinding]:
    """`ports` with each port the runtime may choose asking for the host port it had before (`previous`, the row's
    `published_ports`), so a recreate keeps the addresses users were given; a fixed host port stays as it is."""
    before = _host_ports(previous)
    return [
        replace(port, host_port=before.get((port.container_port, port.protocol.lower())))
        if port.host_port is None
        else port
        for port in ports
    ]


def moved_ports(asked: Sequence[PortBinding], kept: Sequence[PortBinding], obj: RuntimeObject) -> str:
    """The host ports `keep_host_ports` asked to keep (`kept`, from the spec's `asked`) that `obj` publishes on
    another one, as a reason a user reads ("" when none moved): each port's previous and new host port, and why."""
    now = {(port.container_port, port.protocol.lower()): port.host_port for port in obj.ports}
    moved = []
    for asked_port, kept_port in zip(asked, kept, strict=True):
        if asked_port.host_port is not None or kept_port.host_port is None:
            continue  # fixed by the user, or new: nothing was kept
        key = (kept_port.container_port, kept_port.protocol.lower())
        if now.get(key, kept_port.host_port) != kept_port.host_port:
            moved.append(f"{key[0]}/{key[1]} {kept_port.host_port} -> {now[key]}")
    if not moved:
        return ""
    return (
        f"host ports changed when the container was recreated ({', '.join(moved)}): the previous ones were taken "
        "on the host; connect to the new ones"
    )


class RowTask:
    """One row's work in one pass. Owns no state beyond the pass: everything it needs is in the row, the
    observed objects and `PassState`."""

    def __init__(self, state: PassState, row: ContainerModel) -> None:
        self.state = state
        self.row = row
        self.writer = RowWriter(state.db, row, EventTarget(row.org_id, KIND_CONTAINER, row.id), "container")
        self.objects = state.objects.get(row.id, [])
        self.runtime = state.runtimes.get(row.idc_id)

    @property
    def result(self) -> RowResult:
        return RowResult(self.row.status, tuple(self.row.gpu_uuids or ()))

    async def run(self) -> RowResult | None:
        """Converge the row one step: act on the runtime, then apply the outcome. Where the row ended, or None when
        it was deleted."""
        outcome: Outcome
        if self.row.idc_id in self.state.unreachable or self.runtime is None:
            outcome = self._unreachable()
        elif self.row.desired == DesiredState.DELETED:
            outcome = await self._terminate(self.runtime)
        elif (refused := self._refused()) is not None:
            outcome = await self._stop_refused(self.runtime, refused)
        else:
            outcome = await self._converge(self.runtime)
        written = await self.writer.apply(outcome)
        return None if written and isinstance(outcome, Delete) else self.result

    def _refused(self) -> str | None:
        """What the row's stored spec holds that today's input rules refuse (stored by an earlier release), or None."""
        return self.state.specs.problem(self.row.id, self.row.generation, self.row.spec)

    async def _stop_refused(self, runtime: Runtime, problem: str) -> Update | None:
        """Remove every object of the row, which may run with what is refused (a mount of another organization's
        storage, every GPU), and record `error` saying what and how to run it again."""
        for obj in self.objects:
            try:
                await self._remove(runtime, obj.id)
            except RuntimeFailure as exc:
                log.warning("container %s: its refused object %s not removed this pass: %s", self.row.id, obj.id, exc)
                return None
        reason = (
            f"stopped: its configuration, stored before Dockyard checked it, holds what is now refused: {problem}; "
            f"update the container without it (PUT /api/v1/containers/{self.row.id}) and it starts again"
        )
        return self._failed_create(reason, "Refused")

    async def _remove(self, runtime: Runtime, object_id: str) -> None:
        await runtime.remove(object_id)
        self.state.removed.add(object_id)

    # -- outcomes -----------------------------------------------------------------------------------------

    def _status(self, status: ContainerStatus, reason: str, event_type: str, **values: Any) -> Update:
        """Record `status` with `reason`; the event, saying the reason (else the status), only when the status
        changes."""
        event = (event_type, reason or status.value) if status != self.row.status else None
        return Update({"status": status, "reason": reason, **values}, event)

    def _failed_create(self, reason: str, event_type: str = "Failed") -> Update:
        return self._status(
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

    def _waiting(self, unschedulable: Unschedulable) -> Update:
        """What the row asks for is held by others: it stays `creating`, holding nothing, with a reason saying what
        it waits for, and every pass asks again (a release wakes the loop). The event comes once per reason."""
        reason = waiting_reason(unschedulable, self.row.idc_id)
        return Update(
            {
                "status": ContainerStatus.CREATING,
                "reason": reason,
                "gpu_uuids": [],
                "node_id": "",
                "runtime_id": "",
                "published_ports": [],
            },
            ("Waiting", reason) if reason != self.row.reason else None,
        )

    def _observed(self, obj: RuntimeObject, moved: str = "") -> Update:
        """A running object recorded as running (`moved`: its reason when just created, saying which host ports
        changed), an exited one as the error its exit explains."""
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
            # A running container's only reason is a change of its host ports, kept while it runs.
            reason = moved if row.status != ContainerStatus.RUNNING else row.reason
            event_type = "PortsChanged" if moved else "Started"
            return self._status(ContainerStatus.RUNNING, reason, event_type, published_ports=published(obj), **common)
        if obj.state == ObjectState.EXITED and row.status != ContainerStatus.ERROR:
            # The object is kept so its logs stay readable, and so are its GPUs until a restart or delete.
            reason = exit_reason(obj, self.state.products.get(row.product_id))
            return self._status(
                ContainerStatus.ERROR, reason, "Exited", exit_code=obj.exit_code, published_ports=[], **common
            )
        return Update(common)  # already an error (its reason stays), or a state in passing (paused)

    def _missing(self) -> Update | None:
        """Debounced: one pass that does not see the object (an engine restarting, a list racing a create)
        is not yet a disappearance."""
        row = self.row
        if row.missing_since is None:
            return Update({"missing_since": self.state.now})
        if self.state.now - row.missing_since < timedelta(seconds=self.state.settings.missing_debounce_seconds):
            return None
        return self._status(
            ContainerStatus.ERROR,
            "container disappeared: its runtime object was removed outside Dockyard",
            "Disappeared",
            runtime_id="",
            published_ports=[],
            gpu_uuids=[],
            node_id="",
            missing_since=None,
        )

    # -- states -------------------------------------------------------------------------------------------

    def _unreachable(self) -> Update | None:
        """Nothing is known about the IDC's objects: say so on rows that claim a live object, change nothing
        else (no GPU released, no row deleted) until a pass reaches the runtime again. Why it cannot be reached
        is the operator's (services/idcs.record_runtime_errors), never in a tenant's reason."""
        if self.row.status in (ContainerStatus.RUNNING, ContainerStatus.STOPPED):
            return self._status(ContainerStatus.UNKNOWN, unreachable_reason(self.row.idc_id), "Unreachable")
        return None

    async def _terminate(self, runtime: Runtime) -> Outcome:
        row, state = self.row, self.state
        grace = timedelta(seconds=state.settings.zombie_grace_seconds)
        retrying = row.id in state.remove_failures
        if row.status == ContainerStatus.ZOMBIE and not retrying and state.now < row.created_at + grace:
            return None  # an orphan's zombie row waits out the grace before its first removal
        failure = ""
        for obj in self.objects:
            try:
                await self._remove(runtime, obj.id)
            except RuntimeFailure as exc:
                failure = exc.reason
        if failure:
            attempts = state.remove_failures.get(row.id, 0) + 1
            state.remove_failures[row.id] = attempts
            if attempts < REMOVE_ATTEMPTS_BEFORE_ZOMBIE:
                return None
            reason = f"removing it failed {attempts} times ({failure}); Dockyard keeps retrying"
            return self._status(ContainerStatus.ZOMBIE, reason, "Zombie")
        state.remove_failures.pop(row.id, None)
        remove_authorized_keys(state.settings.data_dir, row.id)
        return Delete(("Deleted", "its runtime objects are removed and its GPUs released"))

    async def _converge(self, runtime: Runtime) -> Update | None:
        row = self.row
        current = [obj for obj in self.objects if obj.generation == row.generation]
        previous = [obj for obj in self.objects if obj.generation != row.generation]
        for obj in previous:  # an update recreates: the old generation goes first
            try:
                await self._remove(runtime, obj.id)
            except RuntimeFailure as exc:
                return self._status(
                    ContainerStatus.ERROR, f"cannot remove the previous version: {exc.reason}", "Failed"
                )
        if current:
            return await self._with_object(runtime, current[0])
        return await self._without_object(runtime)

    async def _with_object(self, runtime: Runtime, obj: RuntimeObject) -> Update:
        row = self.row
        timeout = self.state.settings.stop_timeout_seconds
        if row.desired == DesiredState.STOPPED:
            if obj.state == ObjectState.RUNNING:
                await runtime.stop(obj.id, timeout)
            return self._status(
                ContainerStatus.STOPPED,
                STOPPED_REASON,
                "Stopped",
                runtime_id=obj.id,
                published_ports=[],
                missing_since=None,
            )
        try:
            if row.restart_generation > row.observed_restart_generation:
                obj = await runtime.restart(obj.id, timeout)
            elif obj.state == ObjectState.CREATED or (
                obj.state == ObjectState.EXITED and row.status in (ContainerStatus.CREATING, ContainerStatus.STOPPED)
            ):
                obj = await runtime.start(obj.id)
        except RuntimeFailure as exc:
            return self._status(
                ContainerStatus.ERROR,
                exc.reason,
                "Failed",
                observed_restart_generation=row.restart_generation,
                missing_since=None,
            )
        return self._observed(obj)

    async def _without_object(self, runtime: Runtime) -> Update | None:
        row = self.row
        new_generation = row.generation > row.observed_generation
        restart = row.restart_generation > row.observed_restart_generation
        never_created = not row.runtime_id or new_generation
        if row.desired == DesiredState.RUNNING and (
            (never_created and row.status != ContainerStatus.ERROR) or new_generation or restart
        ):
            return await self._create(runtime)
        if row.desired == DesiredState.STOPPED and never_created:
            return self._status(ContainerStatus.STOPPED, STOPPED_REASON, "Stopped")
        if row.runtime_id and row.status in _OBJECT_EXPECTED:
            return self._missing()
        return None

    async def _create(self, runtime: Runtime) -> Update | None:
        """Place the row, then create and start its object. A row that does not fit waits when others hold what it
        needs, and ends `error` when no node could ever take it."""
        row, state = self.row, self.state
        product = state.products.get(row.product_id)
        if product is None:
            return self._failed_create(f"product {row.product_id} no longer exists; recreate the container")
        spec = WorkloadSpec.model_validate(row.spec)
        demand = Demand(
            row.idc_id, product.gpu_model, product.gpu_count, spec.min_cuda_version, product.cpu, product.memory_mb
        )
        # Endpoint workers draw from the same pool in another loop: `place` chooses under the shared lock from every
        # row's holdings and records the choice before letting go, so neither loop hands out what the other took.
        placed = await place(self.writer, demand, state.allocator, state.gpu_lock, "Scheduled", state.no_room)
        if isinstance(placed, Unschedulable):
            return self._waiting(placed) if placed.held else self._failed_create(placed.reason, "Unschedulable")
        if placed is None:
            return None
        data_dir = state.settings.data_dir
        keys = public_keys_for(row, state.ssh_keys)
        if keys:
            write_authorized_keys(data_dir, row.id, keys)
        run_spec = build_run_spec(
            row,
            product=product,
            box=state.box,
            data_dir=data_dir,
            public_keys=keys,
            gpus=placed.gpus,
            node_id=placed.node_id,
        )
        kept = keep_host_ports(run_spec.ports, row.published_ports or ())
        try:
            obj = await self._launch(runtime, run_spec, kept)
        except RuntimeFailure as exc:
            return self._failed_create(exc.reason)
        return self._observed(obj, moved_ports(run_spec.ports, kept, obj))

    async def _launch(self, runtime: Runtime, run_spec: RunSpec, kept: list[PortBinding]) -> RuntimeObject:
        """Create and start the object on the host ports it had before (`kept`), else, when one of those is taken
        now, on those the runtime chooses."""
        db, idc_id = self.state.db, self.row.idc_id
        if kept == run_spec.ports:
            return await launch(db, runtime, idc_id, run_spec)
        try:
            return await launch(db, runtime, idc_id, replace(run_spec, ports=kept))
        except PortTaken:
            return await launch(db, runtime, idc_id, run_spec)
