"""Node capacity: what each node offers placement in CPUs and memory, kept on its row for the reconcilers that
place (containers, endpoint workers) and for the operator's view.

A node's figures are the operator's (`DOCKYARD_NODE_CPUS`, `DOCKYARD_NODE_MEMORY_MB`) where set, else what its
IDC's engine reports about its host (`docker info`: NCPU, MemTotal; one engine is one host, so every node of the
IDC gets them). `NodeCapacity.refresh` runs at the start of a placing pass: it asks each reachable runtime (the
engine runtime probes once and caches the answer) and writes only a figure that changed, so a pass costs no
database round trip once the figures are known. An engine that cannot be reached leaves its nodes' figures as
they are: nothing is placed there meanwhile anyway.
"""

from __future__ import annotations

import logging

from sqlalchemy import update

from dockyard.context import ServerContext
from dockyard.db.models import NodeModel
from dockyard.runtimes.base import HostCapacity, RuntimeUnavailable

log = logging.getLogger(__name__)


class NodeCapacity:
    """One placing loop's view of what it has recorded; `refresh` before loading the inventory."""

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self._recorded: dict[str, HostCapacity] = {}  # IDC id -> the figures its nodes were given

    async def refresh(self) -> None:
        settings = self.context.settings
        for idc_id, runtime in list(self.context.runtimes.items()):
            declared = HostCapacity(settings.node_cpus, settings.node_memory_mb)
            if not (declared.cpus and declared.memory_mb):
                try:
                    reported = await runtime.capacity()
                except RuntimeUnavailable:
                    continue
                declared = HostCapacity(declared.cpus or reported.cpus, declared.memory_mb or reported.memory_mb)
            if self._recorded.get(idc_id) == declared:
                continue
            async with self.context.db.write() as session:
                await session.execute(
                    update(NodeModel)
                    .where(NodeModel.idc_id == idc_id)
                    .values(cpus=declared.cpus, memory_mb=declared.memory_mb)
                )
            log.info(
                "nodes of IDC %s offer %g CPUs and %d MB of memory (times the overcommit ratios)",
                idc_id,
                declared.cpus,
                declared.memory_mb,
            )
            self._recorded[idc_id] = declared
