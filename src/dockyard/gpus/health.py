"""GPU health through NVML: which of a node's GPUs have failed, and why.

A GPU is unhealthy when NVML cannot query it (it "fell off the bus", or the driver lost it), or when it reports a
critical XID error, the driver's record of a hardware or driver fault. XIDs arrive as NVML events: the check keeps
one event set open, registered for `nvmlEventTypeXidCriticalError` on every GPU, and drains it without waiting at
each check. The XIDs an application causes itself (a kernel's illegal address, a context it reset: 13, 31, 43, 45,
68, 109), which leave the GPU fine for the next one, are ignored, as the Kubernetes device plugin ignores them. On a
GPU where events are not supported, memory faults are read instead: pages retired and awaiting a reset, or a row
remapping that failed (NVIDIA's guidance for draining a GPU). Clock-throttle reasons are not read: a power or
thermal slowdown makes a GPU slower, not wrong.

An XID marks a GPU unhealthy until the server restarts and discovers its GPUs again (a reset is the operator's to
make, and NVML delivers no event for it); a GPU that stopped answering is healthy again as soon as it answers.
Every call blocks (NVML can hang for seconds on a GPU that fell off the bus): run `check` in a worker thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from dockyard.gpus.inventory import load_nvml, text

log = logging.getLogger(__name__)

# XIDs caused by an application rather than by the GPU (the Kubernetes NVIDIA device plugin's list).
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})


class NvmlHealth:
    """Checks GPUs by UUID through `nvml` (the real bindings when None; a test passes a fake module). Opened at
    the first `check`, kept open across checks so no XID between two checks is missed; `close` ends it."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._lock = threading.Lock()
        self._open = False
        self._events: Any = None
        self._registered: set[str] = set()
        self._no_events: set[str] = set()  # GPUs whose events NVML does not support
        self._xids: dict[str, str] = {}  # GPU UUID -> the first critical XID it reported, in words

    @property
    def nvml(self) -> Any:
        if self._nvml is None:
            self._nvml = load_nvml()
        return self._nvml

    def check(self, uuids: Iterable[str]) -> dict[str, str]:
        """GPU UUID -> why it is unhealthy, for each of `uuids` that is; the healthy ones are absent."""
        uuids = list(uuids)
        with self._lock:
            nvml = self.nvml
            if not self._open:
                try:
                    nvml.nvmlInit()
                except nvml.NVMLError as exc:
                    return dict.fromkeys(uuids, f"NVML cannot be initialised: {exc}; is the NVIDIA driver loaded?")
                self._open = True
                try:
                    self._events = nvml.nvmlEventSetCreate()
                except nvml.NVMLError as exc:
                    log.info("NVML events are not available (%s): GPU memory faults are read instead", exc)
            unhealthy: dict[str, str] = {}
            handles: dict[str, Any] = {}
            for uuid in uuids:
                try:
                    handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
                    nvml.nvmlDeviceGetMemoryInfo(handle)
                except nvml.NVMLError as exc:
                    unhealthy[uuid] = f"stopped answering NVML: {exc}"
                    continue
                handles[uuid] = handle
                self._register(uuid, handle)
            self._drain_events()
            for uuid, handle in handles.items():
                if uuid in self._xids:
                    unhealthy[uuid] = self._xids[uuid]
                elif uuid in self._no_events and (fault := self._memory_fault(handle)) is not None:
                    unhealthy[uuid] = fault
            return unhealthy

    def _register(self, uuid: str, handle: Any) -> None:
        nvml = self.nvml
        if uuid in self._registered or uuid in self._no_events:
            return
        if self._events is None:
            self._no_events.add(uuid)
            return
        try:
            nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, self._events)
            self._registered.add(uuid)
        except nvml.NVMLError as exc:
            log.info("GPU %s: XID events are not available (%s); its memory faults are read instead", uuid, exc)
            self._no_events.add(uuid)

    def _drain_events(self) -> None:
        """Take every event that arrived since the last check, without waiting."""
        nvml = self.nvml
        if self._events is None:
            return
        while True:
            try:
                event = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError_Timeout:
                return
            except nvml.NVMLError as exc:
                log.warning("reading NVML events failed (%s); the next check reads again", exc)
                return
            xid = int(event.eventData)
            if event.eventType != nvml.nvmlEventTypeXidCriticalError or xid in APPLICATION_XIDS:
                continue
            try:
                uuid = text(nvml.nvmlDeviceGetUUID(event.device))
            except nvml.NVMLError:
                continue
            log.warning("GPU %s reported the critical XID error %d", uuid, xid)
            self._xids.setdefault(uuid, f"reported the critical XID error {xid}")

    def _memory_fault(self, handle: Any) -> str | None:
        nvml = self.nvml
        try:
            if nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle):
                return "has retired memory pages awaiting a GPU reset"
        except nvml.NVMLError:
            pass
        try:
            _, _, _, failed = nvml.nvmlDeviceGetRemappedRows(handle)
            if failed:
                return "failed to remap a row of its memory"
        except nvml.NVMLError:
            pass
        return None

    def close(self) -> None:
        with self._lock:
            if not self._open:
                return
            nvml = self.nvml
            try:
                if self._events is not None:
                    nvml.nvmlEventSetFree(self._events)
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                log.info("closing NVML: %s", exc)
            self._open, self._events = False, None
            self._registered.clear()
            self._no_events.clear()
