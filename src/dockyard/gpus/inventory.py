"""Discover a host's GPUs through NVML, or build the simulated inventory an operator declared.

NVML is the source `nvidia-smi` itself reads; UUIDs are what we allocate by, because indices change with
`CUDA_VISIBLE_DEVICES` and across reboots while UUIDs do not. A simulated inventory is for machines with no
GPU (tests, demos): it is marked `simulated` in every answer that shows it, and its GPUs are never
attached to containers as devices.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from dockyard.core.status import GpuSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    uuid: str
    index: int
    model: str
    memory_mb: int
    minor_number: int = -1
    simulated: bool = False
    healthy: bool = True  # False: NVML showed it failing (gpus/health.py); nothing new is placed on it
    health_reason: str = ""


@dataclass(frozen=True)
class Inventory:
    source: GpuSource
    driver_version: str = ""
    cuda_version: str = ""
    gpus: list[GpuInfo] = field(default_factory=list)


def _cuda_version(value: int) -> str:
    # NVML encodes CUDA 12.4 as 12040.
    return f"{value // 1000}.{(value % 1000) // 10}"


def text(value: str | bytes) -> str:
    """An NVML string: `str` from nvidia-ml-py 11.515 on, `bytes` before."""
    return value.decode() if isinstance(value, bytes) else str(value)


def load_nvml() -> Any:
    """The NVML bindings (nvidia-ml-py's `pynvml`); a test passes a fake module of the same functions instead."""
    import pynvml

    return pynvml


def discover_nvml(nvml: Any = None) -> Inventory | None:
    """The local GPUs through `nvml` (the real bindings when None): each one's model, memory, UUID and minor
    number, and the driver's version and the CUDA version it supports; None where there is no driver (a CPU
    machine). A GPU that does not answer is left out. Memory is NVML's total in MiB, as `nvidia-smi
    --query-gpu=memory.total` reports it."""
    nvml = nvml if nvml is not None else load_nvml()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.info("no NVIDIA driver found (%s): this node has no GPUs", exc)
        return None
    try:
        driver = text(nvml.nvmlSystemGetDriverVersion())
        cuda = _cuda_version(nvml.nvmlSystemGetCudaDriverVersion_v2())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                gpu = GpuInfo(
                    uuid=text(nvml.nvmlDeviceGetUUID(handle)),
                    index=index,
                    model=text(nvml.nvmlDeviceGetName(handle)),
                    memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)),
                    minor_number=int(nvml.nvmlDeviceGetMinorNumber(handle)),
                )
            except nvml.NVMLError as exc:
                # A GPU that fails already cannot be used: the node starts with the others.
                log.warning("GPU %d does not answer NVML (%s): left out of this node's inventory", index, exc)
                continue
            gpus.append(gpu)
        log.info("NVML: driver %s, CUDA %s, %s", driver, cuda, ", ".join(f"{g.model} {g.uuid}" for g in gpus))
        return Inventory(GpuSource.NVML, driver, cuda, gpus)
    finally:
        nvml.nvmlShutdown()


def parse_simulated(declaration: str) -> list[tuple[str, int, int]]:
    """`"NVIDIA H100 80GB HBM3:8:81559,NVIDIA L4:2"` -> [(model, count, memory_mb), ...]."""
    result = []
    for part in filter(None, (p.strip() for p in declaration.split(","))):
        pieces = part.split(":")
        if len(pieces) not in (2, 3) or not pieces[0].strip():
            raise ValueError(f"simulated GPUs: expected MODEL:COUNT[:MEMORY_MB], got {part!r}")
        try:
            count = int(pieces[1])
            memory_mb = int(pieces[2]) if len(pieces) == 3 else 81559
        except ValueError as exc:
            raise ValueError(f"simulated GPUs: COUNT and MEMORY_MB must be integers in {part!r}") from exc
        if not 0 < count <= 64:
            raise ValueError(f"simulated GPUs: COUNT must be 1-64 in {part!r}")
        result.append((pieces[0].strip(), count, memory_mb))
    return result


def simulated_inventory(node_id: str, declaration: str, driver_version: str, cuda_version: str) -> Inventory:
    """Deterministic UUIDs per node and slot, so a restart finds the same GPUs its labels name."""
    gpus: list[GpuInfo] = []
    for model, count, memory_mb in parse_simulated(declaration):
        for _ in range(count):
            index = len(gpus)
            digest = hashlib.sha256(f"{node_id}/{index}".encode()).hexdigest()
            uuid = f"GPU-sim-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:28]}"
            gpus.append(GpuInfo(uuid, index, model, memory_mb, simulated=True))
    return Inventory(GpuSource.SIMULATED, driver_version, cuda_version, gpus)
