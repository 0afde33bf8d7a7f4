"""Fixtures of the tests that need a real NVIDIA GPU (marked `gpu`). Elsewhere they skip, saying what is missing.
A test module takes them by importing them:

    from tests.gpu_devices import cuda_image, nvml_inventory  # noqa: F401

- `nvml_inventory`: the host's GPUs as NVML discovers them; skips where NVML cannot be loaded (no driver).
- `cuda_image`: an image on the engine under test with a Python that has PyTorch, named by
  `DOCKYARD_TEST_CUDA_IMAGE` (examples/gpu-worker builds one) and its Python by `DOCKYARD_TEST_CUDA_PYTHON`
  (`python3` by default); skips where none is named. A conftest nearer the tests may override it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from dockyard.gpus.inventory import Inventory, discover_nvml


@dataclass(frozen=True)
class CudaImage:
    name: str  # an image present on the engine
    python: str  # its Python with PyTorch


@pytest.fixture(scope="session")
def nvml_inventory() -> Inventory:
    try:
        inventory = discover_nvml()
    except Exception as exc:  # the bindings themselves missing or broken
        pytest.skip(f"no NVIDIA driver: NVML could not be loaded ({exc})")
    if inventory is None:
        pytest.skip("no NVIDIA driver: NVML could not be loaded")
    if not inventory.gpus:
        pytest.skip("no GPU: NVML lists none")
    return inventory


@pytest.fixture(scope="session")
def cuda_image() -> CudaImage:
    name = os.environ.get("DOCKYARD_TEST_CUDA_IMAGE", "")
    if not name:
        pytest.skip("no CUDA image: set DOCKYARD_TEST_CUDA_IMAGE to an image with PyTorch (examples/gpu-worker)")
    return CudaImage(name, os.environ.get("DOCKYARD_TEST_CUDA_PYTHON", "python3"))


def nvidia_smi(*args: str) -> str:
    """`nvidia-smi` on the host; skips where it is missing."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no nvidia-smi on PATH: the NVIDIA driver's utilities are not installed")
    return subprocess.run(["nvidia-smi", *args], check=True, capture_output=True, text=True, timeout=60).stdout
