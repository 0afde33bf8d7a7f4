"""A fake of the NVML bindings (nvidia-ml-py's `pynvml`): the functions Dockyard calls, over GPUs a test declares,
with the failures a real driver shows (a GPU that stops answering, XID events, memory faults, no events at all)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    pass


class NVMLError_Timeout(NVMLError):  # noqa: N801
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    pass


class NVMLError_GpuIsLost(NVMLError):  # noqa: N801
    pass


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory_mib: int = 81559
    minor: int = 0
    lost: bool = False  # every query fails as NVML's GPU_IS_LOST
    events: bool = True  # whether it supports XID events
    pages_pending: bool = False
    remap_failed: bool = False


class FakeNvml:
    """Passed where a module of NVML's functions is expected (`discover_nvml`, `NvmlHealth`)."""

    NVMLError = NVMLError
    NVMLError_Timeout = NVMLError_Timeout
    NVMLError_NotSupported = NVMLError_NotSupported
    nvmlEventTypeXidCriticalError = 8  # noqa: N815 - pynvml's own name

    def __init__(self, *gpus: FakeGpu, driver: str = "580.95.05", cuda: int = 13000, loaded: bool = True) -> None:
        self.gpus = list(gpus)
        self.driver = driver
        self.cuda = cuda
        self.loaded = loaded
        self.inits = 0
        self.open = 0
        self._queue: deque[SimpleNamespace] = deque()
        self._registered: set[str] = set()

    def xid(self, uuid: str, code: int) -> None:
        """The driver reports XID `code` on the GPU: delivered to an event set registered for it."""
        if uuid in self._registered:
            event = SimpleNamespace(device=uuid, eventType=self.nvmlEventTypeXidCriticalError, eventData=code)
            self._queue.append(event)

    def _gpu(self, handle: str) -> FakeGpu:
        for gpu in self.gpus:
            if gpu.uuid == handle:
                if gpu.lost:
                    raise NVMLError_GpuIsLost("GPU is lost")
                return gpu
        raise NVMLError("Not Found")

    def nvmlInit(self) -> None:  # noqa: N802
        if not self.loaded:
            raise NVMLError("Driver Not Loaded")
        self.inits += 1
        self.open += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.open -= 1

    def nvmlSystemGetDriverVersion(self) -> bytes:  # noqa: N802
        return self.driver.encode()  # as nvidia-ml-py before 11.515 answered

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:  # noqa: N802
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        return self.gpus[index].uuid

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        return self._gpu(uuid).uuid

    def nvmlDeviceGetUUID(self, handle: str) -> str:  # noqa: N802
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: str) -> str:  # noqa: N802
        return self._gpu(handle).name

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:  # noqa: N802
        return SimpleNamespace(total=self._gpu(handle).memory_mib * 1024 * 1024)

    def nvmlDeviceGetMinorNumber(self, handle: str) -> int:  # noqa: N802
        return self._gpu(handle).minor

    def nvmlEventSetCreate(self) -> str:  # noqa: N802
        return "events"

    def nvmlEventSetFree(self, events: str) -> None:  # noqa: N802
        self._registered.clear()

    def nvmlDeviceRegisterEvents(self, handle: str, types: int, events: str) -> None:  # noqa: N802
        if not self._gpu(handle).events:
            raise NVMLError_NotSupported("Not Supported")
        self._registered.add(handle)

    def nvmlEventSetWait_v2(self, events: str, timeout_ms: int) -> Any:  # noqa: N802
        if not self._queue:
            raise NVMLError_Timeout("Timeout")
        return self._queue.popleft()

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: str) -> int:  # noqa: N802
        return int(self._gpu(handle).pages_pending)

    def nvmlDeviceGetRemappedRows(self, handle: str) -> tuple[int, int, int, int]:  # noqa: N802
        gpu = self._gpu(handle)
        return (0, int(gpu.remap_failed), 0, int(gpu.remap_failed))
