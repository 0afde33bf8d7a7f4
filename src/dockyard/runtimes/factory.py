"""Builds the runtime an IDC is bound to."""

from __future__ import annotations

from dockyard.config import Settings
from dockyard.core.status import RuntimeKind
from dockyard.db.models import IdcModel
from dockyard.runtimes.base import Runtime

IMPLEMENTED_KINDS: tuple[RuntimeKind, ...] = (RuntimeKind.ENGINE,)
"""The runtime kinds this build can drive; an IDC of another kind is refused when it is declared."""


def build_runtime(idc: IdcModel, settings: Settings, installation_id: str) -> Runtime:
    if idc.runtime_kind == RuntimeKind.ENGINE:
        from dockyard.runtimes.engine import EngineRuntime
        from dockyard.runtimes.nvidia import NvidiaHost

        return EngineRuntime(
            idc.runtime_url or settings.engine_url,
            installation_id=installation_id,
            network_mode=settings.engine_network_mode,
            host_path_root=settings.data_dir,
            nvidia=NvidiaHost(settings.nvidia_driver_root),
        )
    raise ValueError(f"IDC {idc.id}: runtime kind {idc.runtime_kind} is not available in this build")
