"""GPU containers on a real GPU and a real engine: each 1-GPU container sees exactly the GPU it was given (its
`nvidia-smi -L` lists that UUID alone) and runs a CUDA matmul on it, and one container more than the host has GPUs
waits, saying there is no free GPU.

Real GPUs only (`gpu`): elsewhere NVML cannot be loaded and the test is skipped saying so. The containers run
`cuda_image` (tests/gpu_devices.py) under the user-mode network stack, which needs no iptables on the host."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import docker
import pytest

from dockyard.config import Settings
from dockyard.core.status import ContainerStatus, ProductCategory
from dockyard.db.models import ProductModel
from dockyard.gpus.inventory import Inventory
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.runtimes.engine import EngineRuntime
from dockyard.runtimes.nvidia import NvidiaHost
from dockyard.services.bootstrap import LOCAL_IDC
from tests.conftest import Harness
from tests.engine import remove_networks
from tests.engine_harness import database_url  # noqa: F401
from tests.gpu_devices import CudaImage, cuda_image, nvml_inventory  # noqa: F401
from tests.reconcilers.conftest import make_containers, make_template, must_row

pytestmark = [pytest.mark.gpu, pytest.mark.engine]

# A guard against a hang turning into a stuck test run; never an assertion about speed.
DEADLINE = 300.0
PRODUCT = "gpu.real.1x"
MATMUL = (
    "import torch; a = torch.rand(2048, 2048, device='cuda'); b = a @ a; torch.cuda.synchronize(); "
    "print('matmul ok', torch.cuda.device_count(), torch.cuda.get_device_name(0), float(b.sum()))"
)


@pytest.fixture
async def fake_runtime(
    nvml_inventory: Inventory,  # noqa: F811 - skips first where there is no GPU
    engine_url: str,
    docker_client: docker.DockerClient,
    settings: Settings,
) -> AsyncIterator[EngineRuntime]:
    """The harness's runtime: the engine, with the host's driver (DOCKYARD_NVIDIA_DRIVER_ROOT where set)."""
    runtime = EngineRuntime(
        engine_url,
        installation_id="",
        host_path_root=settings.data_dir,
        network_mode="slirp4netns",
        nvidia=NvidiaHost(settings.nvidia_driver_root),
    )
    yield runtime
    if runtime.installation_id:
        for container in docker_client.containers.list(
            all=True, filters={"label": f"dockyard.installation={runtime.installation_id}"}
        ):
            container.remove(force=True)
        remove_networks(runtime.installation_id)


async def test_each_container_sees_exactly_its_gpu_and_one_more_waits(
    nvml_inventory: Inventory,  # noqa: F811
    cuda_image: CudaImage,  # noqa: F811
    harness: Harness,
    fake_runtime: EngineRuntime,
) -> None:
    gpus = nvml_inventory.gpus
    async with harness.context.db.write() as session:
        session.add(
            ProductModel(
                id=PRODUCT,
                idc_id=LOCAL_IDC,
                category=ProductCategory.INSTANCE,
                gpu_model=gpus[0].model,
                gpu_count=1,
                cpu=1.0,
                memory_mb=8192,
            )
        )
    template_id = await make_template(harness.client, image=cuda_image.name, command="sleep", args=["900"], ports=[])
    ids = await make_containers(harness.client, template_id, product=PRODUCT, count=len(gpus) + 1)

    reconciler = ContainerReconciler(harness.context)
    end = time.monotonic() + DEADLINE
    while True:
        await reconciler.reconcile_once()
        rows = [await must_row(harness, container_id) for container_id in ids]
        running = [row for row in rows if row.status == ContainerStatus.RUNNING]
        if len(running) == len(gpus):
            break
        assert time.monotonic() < end, f"not running within {DEADLINE} s: {[(r.status, r.reason) for r in rows]}"
        await asyncio.sleep(0.5)
    (waiting,) = [row for row in rows if row.status != ContainerStatus.RUNNING]
    print(f"container {len(gpus) + 1} of {len(gpus) + 1}: {waiting.status} ({waiting.reason})")
    assert waiting.status == ContainerStatus.CREATING
    assert waiting.reason.startswith("waiting for capacity: no free GPU")

    assert sorted(uuid for row in running for uuid in row.gpu_uuids) == sorted(gpu.uuid for gpu in gpus)
    for row in running:
        listed = await fake_runtime.exec(row.runtime_id, ["nvidia-smi", "-L"])
        print(f"container {row.id} was given {row.gpu_uuids}; nvidia-smi -L inside:\n{listed.output}")
        assert listed.exit_code == 0, listed.output
        assert re.findall(r"UUID: (GPU-[0-9a-f-]+)", listed.output) == row.gpu_uuids
        ran = await fake_runtime.exec(row.runtime_id, [cuda_image.python, "-c", MATMUL])
        print(f"CUDA matmul inside: {ran.output.strip()}")
        assert ran.exit_code == 0, ran.output
        assert ran.output.startswith(f"matmul ok 1 {gpus[0].model}")
