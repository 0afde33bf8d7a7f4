"""What the GPU tests need, each fixture skipping with the reason when the machine lacks it: an NVIDIA driver that
NVML loads and a GPU it lists, PyTorch (the reference the answers are checked against), Podman, and the example GPU
worker's image (examples/gpu-worker/build-image makes it on the GPU machine; scripts/gpu-check does all of it).

`gpu_server` is a whole Dockyard server on the real engine (tests/servers.py), listening on every interface so that
async workers reach its webhooks, with a product of one of the machine's GPUs. On a host with no iptables the
engine's containers need a network of their own: DOCKYARD_ENGINE_NETWORK_MODE=slirp4netns, read from the
environment like every setting the test does not set."""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.servers import EngineServer, engine_server

ROOT = Path(__file__).resolve().parents[2]
WORKER_DIR = ROOT / "examples" / "gpu-worker"
GPU_WORKER_IMAGE = "localhost/dockyard-gpu-worker:latest"
PRODUCT_ID = "test.gpu.1x"


def nvml_missing() -> str | None:
    """Why NVML gives no GPU here, or None when it lists at least one."""
    try:
        import pynvml
    except ImportError:
        return "no NVML: nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"no NVIDIA driver: NVML could not be loaded ({exc})"
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return "no GPU: NVML lists none"
    finally:
        pynvml.nvmlShutdown()
    return None


@pytest.fixture(scope="session")
def nvidia_gpu() -> None:
    if (missing := nvml_missing()) is not None:
        pytest.skip(missing)


@pytest.fixture(scope="session")
def reference_model(nvidia_gpu: None) -> ModuleType:
    """examples/gpu-worker/model.py, imported here to compute on the CPU what the GPU worker must answer."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("no PyTorch in this Python: the worker's answers have no reference to be checked against")
    spec = importlib.util.spec_from_file_location("gpu_worker_model", WORKER_DIR / "model.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def gpu_worker_image(nvidia_gpu: None, engine_url: str) -> str:
    if subprocess.run(["podman", "image", "exists", GPU_WORKER_IMAGE], capture_output=True).returncode != 0:
        pytest.skip(f"no GPU worker image: {GPU_WORKER_IMAGE} is missing (examples/gpu-worker/build-image makes it)")
    return GPU_WORKER_IMAGE


@pytest.fixture(scope="session")
def gpu_worker_interpreter(gpu_worker_image: str) -> str:
    """The Python the image runs server.py with (build-image keeps the environment's own path): the async
    endpoint's command runs handler.py with it."""
    cmd = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{index .Config.Cmd 0}}", gpu_worker_image],
        capture_output=True,
        text=True,
        check=True,
    )
    return cmd.stdout.strip()


@dataclass
class GpuServer:
    server: EngineServer
    product_id: str
    gpu_model: str

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)

    def gpus(self) -> list[dict[str, Any]]:
        """The GPUs of every node as the operator's API shows them (`allocated_to` included)."""
        with self.admin() as admin:
            answer = admin.get("/admin/v1/nodes")
        assert answer.status_code == 200, answer.text
        return [gpu for node in answer.json() for gpu in node["gpus"]]


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory, engine_url: str, gpu_worker_image: str) -> Iterator[GpuServer]:
    # A GPU worker's start imports PyTorch and initialises CUDA before its health check passes or it calls in: far
    # longer than the few seconds the fast loops of engine_server allow a CPU worker.
    slow_start = {"health_startup_failures": 300, "worker_call_in_timeout": 180.0}
    with engine_server(tmp_path_factory.mktemp("gpu"), engine_url, host="0.0.0.0", **slow_start) as server:
        running = GpuServer(server, PRODUCT_ID, "")
        gpus = running.gpus()
        assert gpus, "Dockyard found no GPU on a machine where NVML lists one"
        running.gpu_model = gpus[0]["model"]
        product = {
            "id": PRODUCT_ID,
            "idc_id": "local",
            "category": "serverless",
            "gpu_model": running.gpu_model,
            "gpu_count": 1,
            "cpu": 4,
            "memory_mb": 16 * 1024,
        }
        with running.admin() as admin:
            created = admin.post("/admin/v1/products", json=product)
        assert created.status_code == 200, created.text
        yield running
