"""The containers reconciler: converges what each IDC's runtime runs to the container rows' desired state, on the
reconciler core (reconcilers/core.py: observe, the guarded writes, placement, orphans, gauges).

The database holds what users want (`desired`, `generation`, `restart_generation`, the spec) and what was
last observed (`status`, `reason`, `observed_*`, `runtime_id`, `gpu_uuids`); the runtime is the truth about
what exists. The loop is level-triggered: every pass looks at the whole picture afresh, so a missed wake-up,
a crash or a stale write costs at most one pass, never a wrong state.

One pass:

1. **Load** the container rows, the products, the organizations, the nodes with their GPUs and the SSH keys
   the rows name, in one read transaction. Rows *at rest* (stopped on request, or in error with no runtime
   object recorded and no update or restart asked for since; `containers_rows.at_rest_clause`) are not read
   whole: with thousands of stopped containers a pass would otherwise spend its time, on the event loop
   every API request shares, building objects for rows with nothing to do. Those holding GPUs or recording
   an object are read as a few columns (`RestingRow`); those holding nothing are only counted by status.
   Every other row is read whole.
2. **Observe**: ask each IDC's runtime once for its managed objects (`list_managed`) and index those of kind
   `container` by their `dockyard.id` label. An IDC whose runtime cannot be reached is marked unreachable.
   Then **wake** the rows at rest that the observations concern, reading them whole and fresh to be handled
   like any other row: those whose columns make `containers_rows.needs_task` say their row task would act
   (an object that runs though the row says stopped, an object of another generation or id, a missing
   object, an unreachable IDC), the rows holding nothing that an object names by id (an object whose id
   matches no row at all is an orphan) and the stopped ones on an unreachable IDC. The rest are settled for
   this pass: still counted in the GPU allocations, the orphan check and the `dockyard_containers` gauge.
   Nothing about them is kept between passes, so the level-triggered guarantee holds for them too.
3. **Rebuild the GPU allocations** from the rows' `gpu_uuids` (those at rest included) and the objects'
   `dockyard.gpus` labels (a zombie still holds its GPUs). Nothing from an earlier pass is trusted, so a
   restarted server sees exactly the allocations in force.
4. **Act, row by row, concurrently** (at most eight rows at once), outside any transaction; each row's
   outcome (`containers_rows.RowTask`) is written with a guarded write (`WHERE id = ? AND version = ?`) in a
   short transaction with the event that explains it. A row changed by the API meanwhile is not overwritten;
   the next pass redoes it. A failure on one row is logged and never stops the others. Teardowns run before
   everything else, so the GPUs they free can be handed out in the same pass.
   - *unreachable IDC*: running and stopped rows become `unknown`; nothing else changes (no GPU released,
     no row deleted) until a pass reaches the runtime again and recomputes.
   - *desired deleted*: remove every object of the row (all generations), then delete the row. After three
     failed passes the row shows `zombie` with the runtime's reason and removal is retried every pass.
   - *stored spec refused*: a spec stored by an earlier release that today's input rules refuse
     (`core.stored_specs`: a mount path carrying engine options, a reserved variable) has every object removed,
     as it may run with what is refused, and the row becomes `error` naming the value and saying to update it;
     checked once per generation (an update is the only thing that changes a spec, and the API checks it).
   - *desired running, no object of the current generation* (new, updated or restarted): objects of older
     generations are removed first; the node and its GPUs are chosen and recorded on the row before anything is created,
     so a crash can never hand one GPU out twice; then create, start, read back the published ports and
     record `running`. A recreated container asks for the host ports it had published before, so its addresses stay;
     when one is taken on the host by then, it is started on ports the runtime chooses and its reason (and a
     `PortsChanged` event) says which changed, from what to what, while it runs. A `RuntimeFailure` (image not found,
     port taken) gives `error` with the runtime's reason, removes the half-made object and releases the GPUs. A row
     that does not fit because others hold what it needs (no free GPU, no node with the product's CPU and memory
     free: reconcilers/nodes.py,
     gpus/allocation.py) *waits*: it stays `creating`, holding nothing, its reason saying what it waits for
     (an event once per reason), and is placed by the first pass that finds room; a container or worker that
     releases capacity wakes the loop. One that no node could take even empty (no such GPU, a CUDA too old,
     more CPU or memory than any node has) gives `error` saying so. Waiting rows are placed first come, first
     served, as Kueue's default BestEffortFIFO queues do: rows go to the act step oldest first (`created_at`,
     then id), a row reaches the placement lock (first in, first out) before it awaits anything else, and a
     younger row of the same request as one that found no room this pass waits without asking, so nothing
     freed meanwhile goes to it first; a younger row of a smaller request may still take what the older one
     cannot use, so one large request never holds back every small one.
   - *object running*: `running` (the published ports are refreshed). *Object exited while desired
     running*: `error` "exited with code N" (or out of memory); the object is kept so its logs stay readable
     and its GPUs stay held until the container is restarted or deleted.
   - *desired stopped*: stop the object, `stopped`. Desired running again: start it.
   - *restart requested* (`restart_generation` ahead of `observed_restart_generation`): restart the object
     (or create it when there is none, as after an error), then record the generation seen.
   - *object missing* where the row says it exists: `missing_since` is set on the first pass; only after
     `missing_debounce_seconds` does the row become `error` "container disappeared" and release its GPUs.
     An object that reappears clears `missing_since`.
5. **Orphans**: a managed container object whose id has no row is a zombie. A row with status `zombie` is
   inserted for it (when its organization still exists) so users and operators see it; once older than
   `zombie_grace_seconds` it is removed like any deleted container. Objects without Dockyard's labels are
   never listed, so never touched.
6. **Networks**: every listed object, of any kind, is moved onto its organization's network where it is on
   another (one made before organizations had networks of their own), live and with an event, and the networks
   no listed object needs are removed (reconcilers/networks.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import and_, func, select, union
from sqlalchemy.exc import IntegrityError

from dockyard.context import ServerContext
from dockyard.core.loops import LoopName
from dockyard.core.status import ContainerStatus, DesiredState
from dockyard.db.base import utcnow
from dockyard.db.models import ContainerModel, EndpointModel, OrganizationModel, ProductModel
from dockyard.gpus.allocation import GpuAllocator, NodeInventory, load_inventory
from dockyard.metrics_registry import per_registry
from dockyard.reconcilers.containers_rows import (
    RESTING_COLUMNS,
    PassState,
    RestingRow,
    RowResult,
    RowTask,
    at_rest_clause,
    bare_needing_task_clause,
    holds_nothing_clause,
    needs_task,
    resting_row,
)
from dockyard.reconcilers.core import EventTarget, Observation, RuntimeLoop, export_statuses, observe
from dockyard.reconcilers.networks import converge_networks
from dockyard.runtimes.base import LABEL_NODE, LABEL_ORG, RuntimeObject
from dockyard.services import idcs
from dockyard.services.runspec import KIND_CONTAINER, load_ssh_keys

log = logging.getLogger(__name__)

# Rows at rest read whole by id per statement: well under any database's limit on bound parameters.
_WAKE_BATCH = 500


@dataclass
class _Metrics:
    containers: Gauge
    gpus_allocated: Gauge
    gpus_total: Gauge


@per_registry
def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    """One set of gauges per registry, shared by every reconciler built on it (a restarted loop included)."""
    return _Metrics(
        Gauge("dockyard_containers", "Containers by status", ["status"], registry=registry),
        Gauge("dockyard_gpus_allocated", "GPUs held by containers", registry=registry),
        Gauge("dockyard_gpus_total", "GPUs known on all nodes", registry=registry),
    )


@dataclass
class _Loaded:
    rows: list[ContainerModel]  # whole rows, each given a `RowTask`
    resting: list[RestingRow]  # rows at rest holding something; after `_wake`, only those left at rest
    bare_counts: Counter[ContainerStatus]  # rows at rest holding nothing (never read) by status
    products: dict[str, ProductModel]
    org_ids: set[str]
    inventory: list[NodeInventory]
    ssh_keys: dict[tuple[str, str], str]
    # (IDC, organization) for each organization with a container (in any state) or an endpoint (even at zero
    # workers) there: its network stays while one of them may run again (reconcilers/networks.py).
    homes: set[tuple[str, str]]


class ContainerReconciler(RuntimeLoop):
    """The `containers` loop; see the module docstring for the algorithm."""

    name = LoopName.CONTAINERS

    def __init__(self, context: ServerContext) -> None:
        super().__init__(context, "container")
        self._remove_failures: dict[str, int] = {}
        self._metrics = _metrics_for(context.registry)

    async def reconcile_once(self) -> None:
        await self._capacity.refresh()
        loaded = await self._load()
        observation = await observe(self.context.runtimes)
        objects = observation.objects(KIND_CONTAINER)
        named = {row.idc_id for row in loaded.rows} | {row.idc_id for row in loaded.resting}
        unreachable = self._unreachable(observation, named)
        # Every pass lists every runtime, rows or not: an engine missing from the start is reported at once.
        await idcs.record_runtime_errors(
            self.context.db, {idc_id: unreachable.get(idc_id, "") for idc_id in self.context.runtimes}
        )
        await self._wake(loaded, objects, unreachable)
        allocator = GpuAllocator(loaded.inventory)
        for row in loaded.rows:
            allocator.hold(row.id, row.gpu_uuids or [])
        for resting in loaded.resting:  # a stopped container keeps its GPUs
            allocator.hold(resting.id, resting.gpu_uuids)
        for resource_id, objs in objects.items():
            for obj in objs:
                allocator.hold(resource_id, obj.gpu_uuids)
        self._specs.keep_only(row.id for row in loaded.rows)
        state = PassState(
            db=self.context.db,
            settings=self.context.settings,
            box=self.context.box,
            now=utcnow(),
            runtimes=self.context.runtimes,
            products=loaded.products,
            ssh_keys=loaded.ssh_keys,
            allocator=allocator,
            objects=objects,
            unreachable=unreachable,
            remove_failures=self._remove_failures,
            gpu_lock=self.context.gpu_lock,
            specs=self._specs,
        )
        row_ids = {row.id for row in loaded.rows} | {row.id for row in loaded.resting}
        # Teardowns go first: the GPUs they free are then free for this pass's creates and restarts.
        leaving = [row for row in loaded.rows if row.desired == DesiredState.DELETED]
        staying = [row for row in loaded.rows if row.desired != DesiredState.DELETED]
        results = await asyncio.gather(*(self._row(state, row) for row in leaving))
        for row, result in zip(leaving, results, strict=True):
            if result is None:
                allocator.release(row.id)
        results += await asyncio.gather(*(self._row(state, row) for row in staying))
        orphans = {resource_id: objs for resource_id, objs in objects.items() if resource_id not in row_ids}
        await self._orphans.sweep(
            orphans,
            observation,
            self.context.runtimes,
            self.context.settings.zombie_grace_seconds,
            lambda resource_id, objs: self._adopt(resource_id, objs, loaded.org_ids, observation),
        )
        await converge_networks(
            self.context.db, self.context.runtimes, observation, loaded.org_ids, state.removed, loaded.homes
        )
        settled = [RowResult(row.status, tuple(row.gpu_uuids)) for row in loaded.resting]
        self._export(state, [result for result in results if result is not None] + settled, loaded.bare_counts, objects)

    def _unreachable(self, observation: Observation, idc_ids: set[str]) -> dict[str, str]:
        """The IDCs whose runtime could not be listed, and those among `idc_ids` (those the rows name) that have
        none."""
        unreachable = dict(observation.unreachable)
        for idc_id in sorted(idc_ids):
            if idc_id not in self.context.runtimes:
                unreachable.setdefault(idc_id, f"no runtime is configured for IDC {idc_id}")
        return unreachable

    async def _load(self) -> _Loaded:
        async with self.context.db.read() as session:
            rows = list(
                await session.scalars(
                    select(ContainerModel)
                    .where(~at_rest_clause())
                    .order_by(ContainerModel.created_at, ContainerModel.id)
                )
            )
            holding = and_(at_rest_clause(), ~holds_nothing_clause())
            resting = [
                resting_row(columns) for columns in await session.execute(select(*RESTING_COLUMNS).where(holding))
            ]
            bare = and_(at_rest_clause(), holds_nothing_clause())
            by_status = select(ContainerModel.status, func.count()).where(bare).group_by(ContainerModel.status)
            bare_counts = Counter[ContainerStatus](
                {status: count for status, count in await session.execute(by_status)}
            )
            products = {p.id: p for p in await session.scalars(select(ProductModel))}
            org_ids = set(await session.scalars(select(OrganizationModel.id)))
            owners = union(
                select(ContainerModel.idc_id, ContainerModel.org_id), select(EndpointModel.idc_id, EndpointModel.org_id)
            )
            homes = {(idc_id, org_id) for idc_id, org_id in await session.execute(owners)}
            settings = self.context.settings
            inventory = await load_inventory(session, settings.cpu_overcommit, settings.memory_overcommit)
            ssh_keys = await load_ssh_keys(session, [row for row in rows if row.desired == DesiredState.RUNNING])
        return _Loaded(rows, resting, bare_counts, products, org_ids, inventory, ssh_keys, homes)

    async def _wake(
        self, loaded: _Loaded, objects: dict[str, list[RuntimeObject]], unreachable: dict[str, str]
    ) -> None:
        """Read whole and afresh the rows at rest that this pass's observations concern (`needs_task`), to be
        handled like the others; a row changed since the first read is simply handled as it now is."""
        woken = {
            row.id for row in loaded.resting if needs_task(row, objects.get(row.id, []), row.idc_id not in unreachable)
        }
        loaded.resting = [row for row in loaded.resting if row.id not in woken]
        known = {row.id for row in loaded.rows} | {row.id for row in loaded.resting} | woken
        # An object whose id matches no row read so far belongs to a row at rest holding nothing, or to none.
        ids = sorted(woken) + sorted(resource_id for resource_id in objects if resource_id not in known)
        fetched: dict[str, ContainerModel] = {}
        async with self.context.db.read() as session:
            for start in range(0, len(ids), _WAKE_BATCH):
                batch = ContainerModel.id.in_(ids[start : start + _WAKE_BATCH])
                fetched.update((row.id, row) for row in await session.scalars(select(ContainerModel).where(batch)))
            unreached = bare_needing_task_clause(list(unreachable), list(self.context.runtimes))
            fetched.update((row.id, row) for row in await session.scalars(select(ContainerModel).where(unreached)))
            # A row that changed between the reads may come back here though the first read already has it.
            fetched = {row_id: row for row_id, row in fetched.items() if row_id in woken or row_id not in known}
            loaded.ssh_keys.update(
                await load_ssh_keys(session, [row for row in fetched.values() if row.desired == DesiredState.RUNNING])
            )
        for row in fetched.values():
            if row.id not in woken:
                # Counted among the rows holding nothing by the first read, and now by its task's result. A row
                # changed in between may take one from the wrong status, for this pass's gauge only.
                loaded.bare_counts[row.status] = max(0, loaded.bare_counts[row.status] - 1)
        if fetched:
            loaded.rows = sorted([*loaded.rows, *fetched.values()], key=lambda row: (row.created_at, row.id))

    @staticmethod
    def _row(state: PassState, row: ContainerModel) -> Awaitable[RowResult | None]:
        task = RowTask(state, row)
        return state.steps.run(task.run(), lambda: task.result, "reconciling container %s", row.id)

    async def _adopt(
        self, resource_id: str, objs: list[RuntimeObject], org_ids: set[str], observation: Observation
    ) -> bool:
        """Give an orphan of an organization that exists a `zombie` row, which users and operators see and the
        terminate path removes after the grace; False (no row: it is removed after the grace) when its organization
        is gone."""
        first = objs[0]
        org_id = first.labels.get(LABEL_ORG, "")
        if org_id not in org_ids:
            return False
        grace = self.context.settings.zombie_grace_seconds
        reason = (
            "the runtime still runs this container but Dockyard has no record of it; "
            f"it will be removed after {grace:g} s"
        )
        try:
            async with self.context.db.write() as session:
                session.add(
                    ContainerModel(
                        id=resource_id,
                        org_id=org_id,
                        name=first.name,
                        idc_id=observation.idc_of[first.id],
                        product_id="",
                        template_id="",
                        spec={"image": ""},
                        desired=DesiredState.DELETED,
                        generation=first.generation,
                        observed_generation=first.generation,
                        status=ContainerStatus.ZOMBIE,
                        reason=reason,
                        node_id=first.labels.get(LABEL_NODE, ""),
                        gpu_uuids=sorted({uuid for obj in objs for uuid in obj.gpu_uuids}),
                        runtime_id=first.id,
                    )
                )
                EventTarget(org_id, KIND_CONTAINER, resource_id).record(session, "Zombie", reason)
        except IntegrityError:
            log.info("orphan %s got a row meanwhile; the next pass reconciles it", resource_id)
        return True

    def _export(
        self,
        state: PassState,
        results: list[RowResult],
        bare_counts: Counter[ContainerStatus],
        objects: dict[str, list[RuntimeObject]],
    ) -> None:
        export_statuses(
            self._metrics.containers, ContainerStatus, bare_counts + Counter(result.status for result in results)
        )
        held = {uuid for result in results for uuid in result.gpu_uuids}
        held.update(uuid for objs in objects.values() for obj in objs for uuid in obj.gpu_uuids)
        self._metrics.gpus_allocated.set(sum(1 for uuid in held if state.allocator.gpu(uuid) is not None))
        self._metrics.gpus_total.set(state.allocator.total)
