"""Placement logic: GPUs by UUID, one node, the product's model, the CUDA floor, holders never shared; CPU and
memory counted per node the same way."""

from __future__ import annotations

import pytest

from dockyard.gpus.allocation import (
    GpuAllocator,
    NodeInventory,
    Placement,
    Unschedulable,
    cuda_satisfies,
    version_tuple,
)
from dockyard.gpus.inventory import GpuInfo


def node(
    node_id: str,
    count: int,
    model: str = "NVIDIA H100 80GB HBM3",
    cuda: str = "12.4",
    cpus: float = 0.0,
    memory_mb: int = 0,
) -> NodeInventory:
    gpus = tuple(GpuInfo(f"GPU-{node_id}-{i}", i, model, 81559, minor_number=i) for i in range(count))
    return NodeInventory(node_id, "local", cuda, gpus, cpus, memory_mb)


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
    with pytest.raises(Unschedulable, match=r"needs 1 \u00d7 H100, all 4 on IDC local are in use"):
        allocator.allocate("c3", "local", "H100", 1)


def test_a_holder_may_keep_its_own_gpus_and_released_ones_are_free_again() -> None:
    allocator = GpuAllocator([node("a", 1)])
    allocator.hold("zombie", ["GPU-a-0"])
    with pytest.raises(Unschedulable):
        allocator.allocate("c1", "local", "H100", 1)
    assert allocator.allocate("zombie", "local", "H100", 1).uuids == ["GPU-a-0"]
    allocator.release("zombie")
    assert allocator.allocate("c1", "local", "H100", 1).uuids == ["GPU-a-0"]


def test_packs_onto_the_fullest_node_that_fits() -> None:
    allocator = GpuAllocator([node("big", 8), node("small", 2)])
    assert allocator.allocate("c1", "local", "H100", 2).node_id == "small"
    assert allocator.allocate("c2", "local", "H100", 4).node_id == "big"
    with pytest.raises(Unschedulable, match="at most 4 of 10 on IDC local are free on one node"):
        allocator.allocate("c3", "local", "H100", 5)


def test_model_and_cuda_refusals_say_what_to_do() -> None:
    allocator = GpuAllocator([node("a", 2, model="NVIDIA L4", cuda="12.2")])
    with pytest.raises(Unschedulable, match="no H100 GPU exists on IDC local"):
        allocator.allocate("c1", "local", "H100", 1)
    with pytest.raises(Unschedulable, match=r"CUDA 12.4 or newer \(the newest has 12.2\)"):
        allocator.allocate("c1", "local", "L4", 1, "12.4")
    with pytest.raises(Unschedulable, match="no L4 GPU exists on IDC other"):
        allocator.allocate("c1", "other", "L4", 1)


def test_cpu_and_memory_are_counted_per_node_and_packed() -> None:
    allocator = GpuAllocator([node("a", 0, cpus=8, memory_mb=4096), node("b", 0, cpus=8, memory_mb=4096)])
    allocator.place_all({"running": Placement("b", 2, 1024)})
    # The fullest node that still fits: b keeps a free for something large.
    assert allocator.allocate("c1", "local", "", 0, cpu=4, memory_mb=2048).node_id == "b"
    assert allocator.allocate("c2", "local", "", 0, cpu=4, memory_mb=2048).node_id == "a"
    with pytest.raises(Unschedulable) as refused:
        allocator.allocate("c3", "local", "", 0, cpu=4, memory_mb=3000)
    assert refused.value.reason == (
        "no node of IDC local has 4 vCPUs and 3000 MB free (the most free on one: 4 of 8 vCPUs and 2048 of 4096 MB); "
        "stop or delete a container, or try again later"
    )
    # Asked again, a holder's own share is its own; released, it is anyone's.
    assert allocator.allocate("c2", "local", "", 0, cpu=4, memory_mb=2048).node_id == "a"
    allocator.release("c1")
    assert allocator.allocate("c3", "local", "", 0, cpu=4, memory_mb=3000).node_id == "b"


def test_a_node_of_unknown_size_limits_nothing_and_an_idc_without_nodes_places_nowhere() -> None:
    allocator = GpuAllocator([node("a", 0)])
    assert allocator.allocate("c1", "local", "", 0, cpu=1000, memory_mb=10**9).node_id == "a"
    assert allocator.allocate("c2", "elsewhere", "", 0, cpu=1, memory_mb=1).node_id == ""


def test_free_gpus_on_a_node_without_the_cpu_are_not_enough() -> None:
    allocator = GpuAllocator([node("a", 2, cpus=16, memory_mb=131072)])
    assert allocator.allocate("c1", "local", "H100", 1, cpu=16, memory_mb=65536).uuids == ["GPU-a-0"]
    gpus_but_no_cpu = r"has 1 free GPU, 16 vCPUs and 65536 MB free \(the most free on one: 0 of 16 vCPUs"
    with pytest.raises(Unschedulable, match=gpus_but_no_cpu):
        allocator.allocate("c2", "local", "H100", 1, cpu=16, memory_mb=65536)


def test_a_refusal_says_whether_others_hold_the_room_or_no_node_could_ever_take_it() -> None:
    allocator = GpuAllocator([node("a", 2, cpus=16, memory_mb=65536), node("b", 0, cpus=4, memory_mb=4096)])
    allocator.allocate("c1", "local", "H100", 2, cpu=8, memory_mb=8192)
    with pytest.raises(Unschedulable) as taken:
        allocator.allocate("c2", "local", "H100", 1)
    assert (taken.value.held, taken.value.shortage) == (
        True,
        "no free GPU: needs 1 \u00d7 H100, all 2 on IDC local are in use",
    )
    with pytest.raises(Unschedulable) as too_many:
        allocator.allocate("c2", "local", "H100", 3)
    assert (too_many.value.held, too_many.value.reason) == (
        False,
        "no node of IDC local has 3 H100 GPUs (the most on one: 2); choose a product with fewer GPUs",
    )
    with pytest.raises(Unschedulable) as too_large:
        allocator.allocate("c2", "local", "H100", 1, cpu=32, memory_mb=1024)
    assert (too_large.value.held, too_large.value.reason) == (
        False,
        "no node of IDC local with 1 H100 GPU has 32 vCPUs and 1024 MB in all (the largest: 16 vCPUs and 65536 MB); "
        "choose a smaller product",
    )
    with pytest.raises(Unschedulable) as busy:
        allocator.allocate("c2", "local", "", 0, cpu=12, memory_mb=1024)
    assert busy.value.held  # a holds 8 of its 16 vCPUs: it takes 12 once c1 is gone
    with pytest.raises(Unschedulable) as never:
        allocator.allocate("c2", "local", "", 0, cpu=17, memory_mb=1024)
    assert not never.value.held
    assert never.value.reason.endswith("(the largest: 16 vCPUs and 65536 MB); choose a smaller product")


def test_an_unhealthy_gpu_is_never_handed_out() -> None:
    """Packing would pick node b (fewest free GPUs); its one healthy GPU goes first, then a's, then none."""
    a = node("a", 2)
    sick = GpuInfo("GPU-b-0", 0, "NVIDIA H100 80GB HBM3", 81559, 0, healthy=False, health_reason="reported XID 79")
    b = NodeInventory("b", "local", "12.4", (sick, GpuInfo("GPU-b-1", 1, "NVIDIA H100 80GB HBM3", 81559, 1)))
    allocator = GpuAllocator([a, b])
    assert allocator.allocate("c1", "local", "H100", 1).uuids == ["GPU-b-1"]
    assert allocator.allocate("c2", "local", "H100", 2).uuids == ["GPU-a-0", "GPU-a-1"]
    with pytest.raises(Unschedulable) as refused:
        allocator.allocate("c3", "local", "H100", 1)
    assert refused.value.held
    assert refused.value.reason.startswith("no free GPU: needs 1 \N{MULTIPLICATION SIGN} H100, all 4 on IDC local are")
    assert "(1 unhealthy: GPU-b-0 reported XID 79)" in refused.value.reason
