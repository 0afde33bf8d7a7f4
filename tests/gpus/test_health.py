"""NVML inventory and health against a fake NVML: what is discovered, and what makes a GPU unhealthy."""

from __future__ import annotations

from dockyard.core.status import GpuSource
from dockyard.gpus.health import NvmlHealth
from dockyard.gpus.inventory import GpuInfo, discover_nvml
from tests.gpus.fake_nvml import FakeGpu, FakeNvml

A = "GPU-2f8a0c1e-1234-5678-9abc-def012345678"
B = "GPU-7d0b9c3a-aaaa-bbbb-cccc-0123456789ab"


def test_the_inventory_is_what_nvml_reports() -> None:
    nvml = FakeNvml(FakeGpu(A, minor=0), FakeGpu(B, name="NVIDIA L4", memory_mib=23034, minor=3), cuda=12040)
    inventory = discover_nvml(nvml)
    assert inventory is not None
    assert inventory.source == GpuSource.NVML
    assert inventory.driver_version == "580.95.05"  # NVML's bytes decoded
    assert inventory.cuda_version == "12.4"
    assert inventory.gpus == [
        GpuInfo(A, 0, "NVIDIA H100 80GB HBM3", 81559, minor_number=0),
        GpuInfo(B, 1, "NVIDIA L4", 23034, minor_number=3),
    ]
    assert nvml.open == 0  # shut down again


def test_a_gpu_that_does_not_answer_is_left_out_of_the_inventory() -> None:
    inventory = discover_nvml(FakeNvml(FakeGpu(A, minor=0), FakeGpu(B, minor=1, lost=True)))
    assert inventory is not None
    assert [gpu.uuid for gpu in inventory.gpus] == [A]


def test_no_driver_is_no_inventory() -> None:
    assert discover_nvml(FakeNvml(FakeGpu(A), loaded=False)) is None


def test_a_critical_xid_marks_its_gpu_unhealthy_until_restart() -> None:
    nvml = FakeNvml(FakeGpu(A, minor=0), FakeGpu(B, minor=1))
    health = NvmlHealth(nvml)
    assert health.check([A, B]) == {}
    nvml.xid(A, 13)  # an application's own fault: the GPU is fine
    assert health.check([A, B]) == {}
    nvml.xid(B, 79)  # fell off the bus
    assert health.check([A, B]) == {B: "reported the critical XID error 79"}
    assert health.check([A, B]) == {B: "reported the critical XID error 79"}  # stays until rediscovered
    assert nvml.inits == 1  # one session across checks, so no event between two is lost
    health.close()
    assert nvml.open == 0


def test_a_gpu_that_stops_answering_is_unhealthy_while_it_does() -> None:
    gpu = FakeGpu(A)
    health = NvmlHealth(FakeNvml(gpu))
    gpu.lost = True
    assert health.check([A]) == {A: "stopped answering NVML: GPU is lost"}
    gpu.lost = False
    assert health.check([A]) == {}


def test_without_events_memory_faults_are_read() -> None:
    pages, rows, fine = FakeGpu(A, events=False), FakeGpu(B, events=False), FakeGpu("GPU-c", events=False)
    health = NvmlHealth(FakeNvml(pages, rows, fine))
    assert health.check([A, B, "GPU-c"]) == {}
    pages.pages_pending = True
    rows.remap_failed = True
    assert health.check([A, B, "GPU-c"]) == {
        A: "has retired memory pages awaiting a GPU reset",
        B: "failed to remap a row of its memory",
    }


def test_a_driver_that_cannot_be_loaded_makes_every_gpu_unhealthy() -> None:
    unhealthy = NvmlHealth(FakeNvml(FakeGpu(A), loaded=False)).check([A])
    assert unhealthy[A].startswith("NVML cannot be initialised: Driver Not Loaded")
