"""The GPU health loop: the local node's GPUs checked through NVML, and their rows kept to what it shows.

A loop of its own rather than a step of the containers or endpoints loop: its interval (`DOCKYARD_GPU_HEALTH_INTERVAL`)
is NVML's, not the database's, and an NVML call that hangs on a GPU that fell off the bus must hold up no placing
pass. It runs, as every loop, in the server that leads, and checks the GPUs of that server's node, the host of its
local engine, when they were discovered through NVML (a simulated inventory has no health to read).

A GPU that turns unhealthy gets its row's `health` and `health_reason`, an event on the node (`GET
/admin/v1/nodes/{id}/events`), and the placing loops woken: placement skips it from now on (gpus/allocation.py), the
endpoint loop fails the workers on it so that new ones are placed elsewhere or wait saying why, and product and IDC
availability count it out. One healthy again gets its row back and an event, and the placing loops are woken too.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select, update

from dockyard.context import ServerContext
from dockyard.core.loops import LoopName
from dockyard.core.status import GpuHealth, GpuSource
from dockyard.db.models import GpuModel, NodeModel
from dockyard.gpus.health import NvmlHealth
from dockyard.services import events
from dockyard.services.inventory import NODE_EVENTS

log = logging.getLogger(__name__)

# How long one check may take before every GPU it has not answered for counts as not answering.
NVML_PATIENCE_SECONDS = 10.0


class GpuHealthLoop:
    name = LoopName.GPU_HEALTH

    def __init__(
        self, context: ServerContext, node_id: str, health: NvmlHealth, patience: float = NVML_PATIENCE_SECONDS
    ) -> None:
        self.context = context
        self.node_id = node_id
        self.health = health
        self.patience = patience
        self.interval = context.settings.gpu_health_interval
        self._check: asyncio.Task[dict[str, str]] | None = None

    async def reconcile_once(self) -> None:
        async with self.context.db.read() as session:
            node = await session.get(NodeModel, self.node_id)
            if node is None or node.gpu_source != GpuSource.NVML:
                return
            rows = {
                uuid: (health, reason)
                for uuid, health, reason in await session.execute(
                    select(GpuModel.uuid, GpuModel.health, GpuModel.health_reason).where(
                        GpuModel.node_id == self.node_id
                    )
                )
            }
        if not rows:
            return
        unhealthy = await self._unhealthy(list(rows))
        changed = False
        for uuid, (health, reason) in rows.items():
            now = (GpuHealth.UNHEALTHY, unhealthy[uuid]) if uuid in unhealthy else (GpuHealth.HEALTHY, "")
            if now != (health, reason):
                changed |= await self._record(uuid, (health, reason), now)
        if changed:
            self.context.wake(LoopName.ENDPOINTS)
            self.context.wake(LoopName.CONTAINERS)

    async def _unhealthy(self, uuids: list[str]) -> dict[str, str]:
        """NVML's answer, in a worker thread; every GPU when it has not answered within the patience. A check
        still running from an earlier pass is waited for rather than started again beside it."""
        if self._check is None or self._check.done():
            self._check = asyncio.create_task(asyncio.to_thread(self.health.check, uuids))
        done, _ = await asyncio.wait({self._check}, timeout=self.patience)
        if not done:
            why = f"stopped answering: NVML did not answer within {self.patience:g} s"
            return dict.fromkeys(uuids, why)
        check, self._check = self._check, None
        return check.result()

    async def _record(self, uuid: str, was: tuple[GpuHealth, str], now: tuple[GpuHealth, str]) -> bool:
        """Write `now` to the GPU's row if it still holds `was`, with an event on the node; whether it was written."""
        health, reason = now
        async with self.context.db.write() as session:
            result = await session.execute(
                update(GpuModel)
                .where(GpuModel.uuid == uuid, GpuModel.health == was[0], GpuModel.health_reason == was[1])
                .values(health=health, health_reason=reason)
            )
            if getattr(result, "rowcount", 0) != 1:
                return False
            if health == GpuHealth.UNHEALTHY:
                kind, message = "GpuUnhealthy", f"GPU {uuid} {reason}: nothing new is placed on it"
            else:
                kind, message = "GpuHealthy", f"GPU {uuid} answers again"
            events.record(
                session, org_id="", object_kind=NODE_EVENTS, object_id=self.node_id, type=kind, message=message
            )
        log.warning("node %s: %s", self.node_id, message)
        return True

    async def close(self) -> None:
        """End the NVML session (a check still hung in its thread is left to end on its own)."""
        if self._check is None or self._check.done():
            await asyncio.to_thread(self.health.close)
