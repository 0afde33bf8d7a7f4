"""NVML on a real GPU: the inventory Dockyard records is what `nvidia-smi` reports, and a working GPU is healthy."""

from __future__ import annotations

import csv
import io

import pytest

from dockyard.gpus.health import NvmlHealth
from dockyard.gpus.inventory import Inventory
from tests.gpu_devices import nvidia_smi, nvml_inventory  # noqa: F401

pytestmark = pytest.mark.gpu


def test_the_nvml_inventory_equals_nvidia_smi(nvml_inventory: Inventory) -> None:  # noqa: F811
    query = "name,uuid,memory.total,driver_version"
    listed = nvidia_smi(f"--query-gpu={query}", "--format=csv,noheader,nounits")
    print(f"nvidia-smi --query-gpu={query} --format=csv\n{nvidia_smi(f'--query-gpu={query}', '--format=csv')}")
    print("NVML inventory:", nvml_inventory)
    rows = [[field.strip() for field in row] for row in csv.reader(io.StringIO(listed)) if row]
    ours = [[gpu.model, gpu.uuid, str(gpu.memory_mb), nvml_inventory.driver_version] for gpu in nvml_inventory.gpus]
    assert ours == rows
    assert nvml_inventory.cuda_version
    assert all(gpu.minor_number >= 0 for gpu in nvml_inventory.gpus)


def test_a_working_gpu_is_healthy(nvml_inventory: Inventory) -> None:  # noqa: F811
    health = NvmlHealth()
    try:
        assert health.check(gpu.uuid for gpu in nvml_inventory.gpus) == {}
    finally:
        health.close()
