"""Finishes the deletion of network storages: removes each `deleting` storage's volume from its IDC's
runtime, then drops the row.

A pass is load → act outside any transaction → guarded delete. Removing a volume that is already gone
succeeds, so a pass interrupted after the removal simply redoes it; a runtime that cannot be reached, or
that refuses because an object still uses the volume, leaves the row for the next pass.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select

from dockyard.context import ServerContext
from dockyard.core.loops import LoopName
from dockyard.core.status import NetworkStorageStatus
from dockyard.db.models import NetworkStorageModel
from dockyard.runtimes.base import RuntimeFailure, RuntimeUnavailable
from dockyard.services.runspec import storage_volume

log = logging.getLogger(__name__)


class NetworkStorageReconciler:
    name = LoopName.NETWORK_STORAGES

    def __init__(self, context: ServerContext, interval: float | None = None) -> None:
        self.context = context
        self.interval = interval if interval is not None else context.settings.reconcile_interval

    async def reconcile_once(self) -> None:
        async with self.context.db.read() as session:
            rows = await session.execute(
                select(NetworkStorageModel.id, NetworkStorageModel.idc_id, NetworkStorageModel.version).where(
                    NetworkStorageModel.status == NetworkStorageStatus.DELETING
                )
            )
            pending = [(row.id, row.idc_id, row.version) for row in rows]
        for storage_id, idc_id, version in pending:
            if await self._remove_volume(storage_id, idc_id):
                async with self.context.db.write() as session:
                    # Guarded: a row changed since it was loaded is left for the next pass to judge afresh.
                    await session.execute(
                        delete(NetworkStorageModel).where(
                            NetworkStorageModel.id == storage_id,
                            NetworkStorageModel.version == version,
                            NetworkStorageModel.status == NetworkStorageStatus.DELETING,
                        )
                    )

    async def _remove_volume(self, storage_id: str, idc_id: str) -> bool:
        """Whether the volume is gone from the runtime now."""
        runtime = self.context.runtime_for(idc_id)
        if runtime is None:
            log.warning("network storage %s: IDC %s has no runtime on this server; retrying later", storage_id, idc_id)
            return False
        try:
            await runtime.remove_volume(storage_volume(storage_id))
        except RuntimeUnavailable as exc:
            log.info("network storage %s: runtime of IDC %s unreachable (%s); retrying later", storage_id, idc_id, exc)
            return False
        except RuntimeFailure as exc:
            log.warning("network storage %s: volume not removed yet: %s", storage_id, exc.reason)
            return False
        return True
