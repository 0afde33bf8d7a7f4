"""The example GPU worker (examples/gpu-worker) served by Dockyard on a real GPU: as a sync endpoint scaled from zero,
answered through the gateway, and as an async endpoint whose job the PPIO client submits and reads back. Each answer
is checked against the same model computed here on the CPU, and must come from the one GPU Dockyard allocated.

The cold start is printed by phase (run pytest with -s to see it), from the client's clock and the worker's, which
the container shares with the host; no time is asserted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import ppio_gpus
import pytest

from tests.gpu.conftest import GpuServer
from tests.servers import wait_for

pytestmark = [pytest.mark.gpu, pytest.mark.engine]

WORKER_PORT = 8080
# A cold start here imports PyTorch and initialises CUDA in a fresh container: far longer than a CPU worker's.
COLD_START_TIMEOUT_S = 120.0
REQUEST = {"seed": 7, "batch": 4}


def endpoint_request(server: GpuServer, image: str, kind: str, interpreter: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": kind,
        "name": f"gpu-{kind}",
        "product_id": server.product_id,
        "image": image,
        "worker_config": {
            "min_replicas": 0,
            "max_replicas": 1,
            "idle_timeout": 300,
            "request_timeout": int(COLD_START_TIMEOUT_S),
        },
    }
    if kind == "sync":
        body |= {"ports": [WORKER_PORT], "health_check": {"path": "/health", "port": WORKER_PORT}}
    else:
        body |= {"command": f"{interpreter} /app/handler.py", "policy": {"type": "queue", "value": 1}}
    return body


def endpoint(server: GpuServer, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Create the endpoint and yield it as its GET shows it; on exit delete it and wait until it is gone, so its
    worker gives the GPU back before the next test asks for one."""
    with server.server.api() as api:
        created = api.post("/gpus/v2/endpoints", json=request)
        assert created.status_code == 200, created.text
        endpoint_id = created.json()["id"]
        try:
            yield api.get(f"/gpus/v2/endpoints/{endpoint_id}").json()
        finally:
            api.delete(f"/gpus/v2/endpoints/{endpoint_id}")
            wait_for(
                f"endpoint {endpoint_id} to be gone",
                lambda: api.get(f"/gpus/v2/endpoints/{endpoint_id}").status_code == 404,
                deadline=120,
            )


@pytest.fixture
def sync_endpoint(gpu_server: GpuServer, gpu_worker_image: str) -> Iterator[dict[str, Any]]:
    yield from endpoint(gpu_server, endpoint_request(gpu_server, gpu_worker_image, "sync"))


@pytest.fixture
def async_endpoint(
    gpu_server: GpuServer, gpu_worker_image: str, gpu_worker_interpreter: str
) -> Iterator[dict[str, Any]]:
    yield from endpoint(gpu_server, endpoint_request(gpu_server, gpu_worker_image, "async", gpu_worker_interpreter))


def expected(reference_model: ModuleType, request: dict[str, Any]) -> list[list[float]]:
    import torch

    with torch.inference_mode():
        rows: list[list[float]] = reference_model.build()(reference_model.inputs(request)).tolist()
    return rows


def assert_answer_is_the_models(
    answer: dict[str, Any], reference_model: ModuleType, server: GpuServer, endpoint_id: str
) -> None:
    """The answer is the model's on the request, computed on the one GPU Dockyard allocated to the endpoint's one
    worker, which saw that GPU alone."""
    assert answer["outputs"] == pytest.approx(expected(reference_model, REQUEST), rel=1e-3, abs=1e-4)
    assert answer["device"].startswith("cuda")
    assert answer["visible_gpus"] == 1
    assert answer["gpu"] == server.gpu_model
    with server.server.api() as api:
        workers = api.get(f"/gpus/v2/endpoints/{endpoint_id}").json()["workers"]
    allocated = {gpu["uuid"]: gpu["allocated_to"] for gpu in server.gpus() if gpu["allocated_to"]}
    assert allocated == {answer["gpu_uuid"]: workers[0]["id"]}
    assert len(workers) == 1


def print_cold_start(kind: str, sent: float, answered: float, phases: dict[str, float]) -> None:
    """The cold start by phase, in seconds, on one line (pytest -s shows it)."""
    steps = [
        ("scale-up and container start", sent, phases["process_start"]),
        ("PyTorch import", phases["process_start"], phases["torch_imported"]),
        ("model load to GPU", phases["torch_imported"], phases["model_on_gpu"]),
        ("ready to first answer", phases["model_on_gpu"], phases["first_answer"]),
        ("answer back to the client", phases["first_answer"], answered),
        ("total", sent, answered),
    ]
    figures = "; ".join(f"{name} {end - start:.3f} s" for name, start, end in steps)
    print(f"\ncold start of the {kind} GPU endpoint: {figures}")


def test_the_sync_gpu_endpoint_scaled_from_zero_answers_through_the_gateway(
    gpu_server: GpuServer, sync_endpoint: dict[str, Any], reference_model: ModuleType
) -> None:
    assert sync_endpoint["workers"] == []
    url = f"{str(sync_endpoint['url']).rstrip('/')}/infer"
    with httpx.Client(headers=gpu_server.server.headers, timeout=COLD_START_TIMEOUT_S + 30) as http:
        sent = time.time()
        first = http.post(url, json=REQUEST)
        answered = time.time()
        assert first.status_code == 200, first.text
        answer = first.json()
        assert_answer_is_the_models(answer, reference_model, gpu_server, sync_endpoint["id"])
        print_cold_start("sync", sent, answered, answer["phases"])

        warm = http.post(url, json=REQUEST)
        assert warm.status_code == 200, warm.text
        assert warm.json()["outputs"] == answer["outputs"]
        assert warm.json()["phases"] == answer["phases"]  # the same worker, not a second cold start


def test_the_async_gpu_endpoint_completes_a_job_of_the_ppio_client(
    gpu_server: GpuServer, async_endpoint: dict[str, Any], reference_model: ModuleType
) -> None:
    client = ppio_gpus.Endpoint(
        async_endpoint["id"], api_key=gpu_server.server.key, endpoint_url_base=f"{gpu_server.server.url}/v1"
    )
    sent = time.time()
    job = client.run(REQUEST)  # from zero workers: the queued job starts one
    output = job.output(timeout=COLD_START_TIMEOUT_S)
    answered = time.time()
    assert job.status() == "COMPLETED"
    assert_answer_is_the_models(output, reference_model, gpu_server, async_endpoint["id"])
    print_cold_start("async", sent, answered, output["phases"])
