"""The containers reconciler: converges what each IDC's runtime runs to the container rows' desired state.

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
   outcome is written with a guarded write (`WHERE id = ? AND version = ?`) in a short transaction with the
   event that explains it. A row changed by the API meanwhile is not overwritten; the next pass redoes it.
   A failure on one row is logged and never stops the others. Teardowns run before everything else, so the
   GPUs they free can be handed out in the same pass.
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
     record `running`. A `RuntimeFailure` (image not found, port taken) gives `error` with the runtime's
     reason, removes the half-made object and releases the GPUs. A row that does not fit because others hold
     what it needs (no free GPU, no node with the product's CPU and memory free: reconcilers/nodes.py,
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
6. **Networks**: every listed object of an organization that exists, of any kind (containers and endpoint
   workers) and in any state, that is on another network than its organization's (`runspec.org_network`), as
   one made before organizations had networks of their own is on the engine's default network, is moved onto
   its organization's network and off every other, live (`Runtime.move_to_network`: it keeps running and its
   published ports), with a `NetworkMoved` event on the container or the worker's endpoint; level-triggered,
   so one moved back behind Dockyard's back is moved again. Then an organization's network on an IDC whose
   listing holds no object of that organization is removed: each holds a subnet of the engine's address
   pools, which are finite (Docker's defaults hold about 30 bridge networks). An object created on it since
   the listing keeps it, as the runtime never removes a network an object is on, and a create that comes
   after the removal makes it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import and_, func, select
from sqlalchemy.exc import IntegrityError

from dockyard.context import ServerContext
from dockyard.core.loops import LoopName
from dockyard.core.status import ContainerStatus, DesiredState
from dockyard.db.base import utcnow
from dockyard.db.models import ContainerModel, OrganizationModel, ProductModel
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
from dockyard.reconcilers.endpoints_workers import KIND_ENDPOINT
from dockyard.reconcilers.nodes import NodeCapacity
from dockyard.runtimes.base import (
    LABEL_KIND,
    LABEL_NODE,
    LABEL_ORG,
    Runtime,
    RuntimeFailure,
    RuntimeObject,
    RuntimeUnavailable,
)
from dockyard.services import events, idcs
from dockyard.services.runspec import KIND_CONTAINER, load_ssh_keys, org_network
from dockyard.services.worker_runspec import KIND_WORKER, LABEL_ENDPOINT

log = logging.getLogger(__name__)

CONCURRENCY = 8
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


class ContainerReconciler:
    """The `containers` loop; see the module docstring for the algorithm."""

    name = LoopName.CONTAINERS

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.interval = context.settings.reconcile_interval
        self._remove_failures: dict[str, int] = {}
        self._specs_checked: dict[str, int] = {}  # `PassState.specs_checked`, kept for the rows read whole
        # Orphans whose organization is gone get no row; their first sighting is remembered here instead.
        self._orphans_seen: dict[str, float] = {}
        self._idc_by_object: dict[str, str] = {}  # runtime object id -> the IDC that listed it, this pass
        # Objects listed this pass on another network than their organization's, with the IDC that listed them.
        self._misplaced: list[tuple[str, RuntimeObject]] = []
        self._orgs_by_idc: dict[str, set[str]] = {}  # IDC listed this pass -> organizations with an object on it
        self._metrics = _metrics_for(context.registry)
        self._capacity = NodeCapacity(context)

    async def reconcile_once(self) -> None:
        await self._capacity.refresh()
        loaded = await self._load()
        objects, unreachable = await self._observe(
            {row.idc_id for row in loaded.rows} | {row.idc_id for row in loaded.resting}
        )
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
            specs_checked={row.id: g for row in loaded.rows if (g := self._specs_checked.get(row.id)) is not None},
        )
        self._specs_checked = state.specs_checked
        limit = asyncio.Semaphore(CONCURRENCY)
        row_ids = {row.id for row in loaded.rows} | {row.id for row in loaded.resting}
        # Teardowns go first: the GPUs they free are then free for this pass's creates and restarts.
        leaving = [row for row in loaded.rows if row.desired == DesiredState.DELETED]
        staying = [row for row in loaded.rows if row.desired != DesiredState.DELETED]
        results = await asyncio.gather(*(self._row(limit, state, row) for row in leaving))
        for row, result in zip(leaving, results, strict=True):
            if result is None:
                allocator.release(row.id)
        results += await asyncio.gather(*(self._row(limit, state, row) for row in staying))
        await self._orphans(state, loaded.org_ids, {rid: objs for rid, objs in objects.items() if rid not in row_ids})
        await self._move_to_own_networks(loaded.org_ids, state.removed)
        await self._remove_unused_networks()
        settled = [RowResult(row.status, tuple(row.gpu_uuids)) for row in loaded.resting]
        self._export(state, [result for result in results if result is not None] + settled, loaded.bare_counts, objects)

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
            settings = self.context.settings
            inventory = await load_inventory(session, settings.cpu_overcommit, settings.memory_overcommit)
            ssh_keys = await load_ssh_keys(session, [row for row in rows if row.desired == DesiredState.RUNNING])
        return _Loaded(rows, resting, bare_counts, products, org_ids, inventory, ssh_keys)

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

    async def _observe(self, idc_ids: set[str]) -> tuple[dict[str, list[RuntimeObject]], dict[str, str]]:
        """Managed container objects by container id, and the IDCs whose runtime could not be listed (or that
        have no runtime at all, among `idc_ids`, those the rows name)."""
        objects: dict[str, list[RuntimeObject]] = defaultdict(list)
        unreachable: dict[str, str] = {}
        idcs = list(self.context.runtimes)
        self._idc_by_object = {}
        self._orgs_by_idc = {}
        self._misplaced = []

        async def listing(idc_id: str) -> list[RuntimeObject]:
            try:
                return await self.context.runtimes[idc_id].list_managed()
            except RuntimeUnavailable as exc:
                unreachable[idc_id] = str(exc) or type(exc).__name__
                return []

        for idc_id, listed in zip(idcs, await asyncio.gather(*(listing(idc_id) for idc_id in idcs)), strict=True):
            if idc_id not in unreachable:
                self._orgs_by_idc[idc_id] = {obj.labels.get(LABEL_ORG, "") for obj in listed}
            for obj in listed:
                if obj.networks and obj.networks != (org_network(obj.labels.get(LABEL_ORG, "")),):
                    self._misplaced.append((idc_id, obj))
                if obj.labels.get(LABEL_KIND) == KIND_CONTAINER and obj.resource_id:
                    objects[obj.resource_id].append(obj)
                    self._idc_by_object[obj.id] = idc_id
        for idc_id in sorted(idc_ids):
            if idc_id not in self.context.runtimes:
                unreachable.setdefault(idc_id, f"no runtime is configured for IDC {idc_id}")
        return dict(objects), unreachable

    async def _row(self, limit: asyncio.Semaphore, state: PassState, row: ContainerModel) -> RowResult | None:
        async with limit:
            task = RowTask(state, row)
            try:
                return await task.run()
            except Exception:
                log.exception("reconciling container %s failed; the next pass retries", row.id)
                return task.result

    async def _orphans(self, state: PassState, org_ids: set[str], orphans: dict[str, list[RuntimeObject]]) -> None:
        """Give each orphan a `zombie` row (the terminate path removes it after the grace), or, when its
        organization is gone, remove it once it has been seen for longer than the grace."""
        grace = state.settings.zombie_grace_seconds
        for resource_id in list(self._orphans_seen):
            if resource_id not in orphans:
                del self._orphans_seen[resource_id]
        for resource_id, objs in orphans.items():
            org_id = objs[0].labels.get(LABEL_ORG, "")
            idc_id = self._idc_by_object[objs[0].id]
            try:
                if org_id in org_ids:
                    await self._insert_zombie(resource_id, org_id, idc_id, objs, grace)
                    continue
                first_seen = self._orphans_seen.setdefault(resource_id, time.monotonic())
                if time.monotonic() - first_seen >= grace:
                    runtime = self.context.runtimes[idc_id]
                    for obj in objs:
                        await runtime.remove(obj.id)
                    del self._orphans_seen[resource_id]
            except Exception:
                log.exception("handling orphan container %s failed; the next pass retries", resource_id)

    async def _move_to_own_networks(self, org_ids: set[str], removed: set[str]) -> None:
        """Step 6: move each object listed on another network than its organization's onto it and off the others
        (but those `removed` this pass)."""
        limit = asyncio.Semaphore(CONCURRENCY)

        async def move(idc_id: str, obj: RuntimeObject) -> None:
            org = obj.labels.get(LABEL_ORG, "")
            network = org_network(org)
            async with limit:
                try:
                    await self.context.runtimes[idc_id].move_to_network(obj.id, network, org)
                except (RuntimeFailure, RuntimeUnavailable) as exc:
                    log.warning("object %s not moved onto network %s this pass: %s", obj.name, network, exc)
                    return
            left = ", ".join(name for name in obj.networks if name != network) or "no other"
            message = (
                f"moved onto its organization's network {network} and off {left}, without a restart: it was made "
                "before each organization had a network of its own"
            )
            log.info("object %s %s", obj.name, message)
            kind, object_id = KIND_CONTAINER, obj.resource_id
            if obj.labels.get(LABEL_KIND) == KIND_WORKER:
                kind, object_id = KIND_ENDPOINT, obj.labels.get(LABEL_ENDPOINT, "")
                message = f"worker {obj.resource_id}: {message}"
            async with self.context.db.write() as session:
                events.record(
                    session, org_id=org, object_kind=kind, object_id=object_id, type="NetworkMoved", message=message
                )

        await asyncio.gather(
            *(
                move(idc_id, obj)
                for idc_id, obj in self._misplaced
                if obj.labels.get(LABEL_ORG) in org_ids and obj.id not in removed
            )
        )

    async def _remove_unused_networks(self) -> None:
        """Step 6: remove each listed IDC's networks that no organization with an object there joins."""
        for idc_id, orgs in self._orgs_by_idc.items():
            runtime = self.context.runtimes[idc_id]
            keep = {org_network(org_id) for org_id in orgs}
            try:
                for name in await runtime.list_networks():
                    if name not in keep:
                        await self._remove_network(runtime, name)
            except (RuntimeUnavailable, RuntimeFailure) as exc:
                log.info("networks of IDC %s not pruned this pass: %s", idc_id, exc)

    @staticmethod
    async def _remove_network(runtime: Runtime, name: str) -> None:
        try:
            await runtime.remove_network(name)
        except RuntimeFailure as exc:  # an object joined it since the listing
            log.debug("network %s kept: %s", name, exc.reason)
        else:
            log.info("removed network %s: no object of its organization is left", name)

    async def _insert_zombie(
        self, resource_id: str, org_id: str, idc_id: str, objs: list[RuntimeObject], grace: float
    ) -> None:
        first = objs[0]
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
                        idc_id=idc_id,
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
                events.record(
                    session,
                    org_id=org_id,
                    object_kind=KIND_CONTAINER,
                    object_id=resource_id,
                    type="Zombie",
                    message=reason,
                )
        except IntegrityError:
            log.info("orphan %s got a row meanwhile; the next pass reconciles it", resource_id)

    def _export(
        self,
        state: PassState,
        results: list[RowResult],
        bare_counts: Counter[ContainerStatus],
        objects: dict[str, list[RuntimeObject]],
    ) -> None:
        counts: dict[str, int] = {status.value: bare_counts[status] for status in ContainerStatus}
        held: set[str] = set()
        for result in results:
            counts[result.status.value] += 1
            held.update(result.gpu_uuids)
        for objs in objects.values():
            for obj in objs:
                held.update(obj.gpu_uuids)
        for status, count in counts.items():
            self._metrics.containers.labels(status).set(count)
        self._metrics.gpus_allocated.set(sum(1 for uuid in held if state.allocator.gpu(uuid) is not None))
        self._metrics.gpus_total.set(state.allocator.total)
