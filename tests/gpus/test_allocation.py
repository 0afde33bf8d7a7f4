"""GPU allocation logic: by UUID, one node, the product's model, the CUDA floor, holders never shared."""

from __future__ import annotations

import pytest

from dockyard.gpus.allocation import GpuAllocator, NodeInventory, NoFreeGpu, cuda_satisfies, version_tuple
from dockyard.gpus.inventory import GpuInfo


def node(node_id: str, count: int, model: str = "NVIDIA H100 80GB HBM3", cuda: str = "12.4") -> NodeInventory:
    gpus = tuple(GpuInfo(f"GPU-{node_id}-{i}", i, model, 81559, minor_number=i) for i in range(count))
    return NodeInventory(node_id, "local", cuda, gpus)


def test_cuda_versions_compare_numerically() -> None:
    assert version_tuple("12.10") > version_tuple("12.4")
    assert cuda_satisfies("12.10", "12.4")
    assert not cuda_satisfies("12.4", "12.10")
    assert cuda_satisfies("12.4", None)
    assert not cuda_satisfies("", "11.0")


def test_allocates_by_uuid_on_one_node_and_never_twice() -> None:
    allocator = GpuAllocator([node("a", 4)])
    first = allocator.allocate("c1", "local", "h100", 2)
    second = allocator.allocate("c2", "local", "H100", 2)
    assert first.node_id == second.node_id == "a"
    assert first.uuids == ["GPU-a-0", "GPU-a-1"]
    assert second.uuids == ["GPU-a-2", "GPU-a-3"]
    assert allocator.allocated == allocator.total == 4
    with pytest.raises(NoFreeGpu, match=r"needs 1 \u00d7 H100, all 4 on IDC local are in use"):
        allocator.allocate("c3", "local", "H100", 1)


def test_a_holder_may_keep_its_own_gpus_and_released_ones_are_free_again() -> None:
    allocator = GpuAllocator([node("a", 1)])
    allocator.hold("zombie", ["GPU-a-0"])
    with pytest.raises(NoFreeGpu):
        allocator.allocate("c1", "local", "H100", 1)
    assert allocator.allocate("zombie", "local", "H100", 1).uuids == ["GPU-a-0"]
    allocator.release("zombie")
    assert allocator.allocate("c1", "local", "H100", 1).uuids == ["GPU-a-0"]


def test_packs_onto_the_fullest_node_that_fits() -> None:
    allocator = GpuAllocator([node("big", 8), node("small", 2)])
    assert allocator.allocate("c1", "local", "H100", 2).node_id == "small"
    assert allocator.allocate("c2", "local", "H100", 4).node_id == "big"
    with pytest.raises(NoFreeGpu, match="at most 4 of 10 on IDC local are free on one node"):
        allocator.allocate("c3", "local", "H100", 5)


def test_model_and_cuda_refusals_say_what_to_do() -> None:
    allocator = GpuAllocator([node("a", 2, model="NVIDIA L4", cuda="12.2")])
    with pytest.raises(NoFreeGpu, match="no H100 GPU exists on IDC local"):
        allocator.allocate("c1", "local", "H100", 1)
    with pytest.raises(NoFreeGpu, match=r"CUDA 12.4 or newer \(the newest has 12.2\)"):
        allocator.allocate("c1", "local", "L4", 1, "12.4")
    with pytest.raises(NoFreeGpu, match="no L4 GPU exists on IDC other"):
        allocator.allocate("c1", "other", "L4", 1)
