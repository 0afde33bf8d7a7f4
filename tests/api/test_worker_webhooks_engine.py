"""The worker webhooks end to end on real Podman with the official worker SDKs unchanged: what their plain
synchronous handlers and their progress updates need of the server (examples/*-worker, `HANDLER=sync`).

The server is the one `dockyard server` runs (its HTTP protocol and keep-alive), listening on every interface so that
worker containers reach it through the bridge's host address."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import ppio_gpus
import pytest
import runpod

from tests.api.test_jobs_engine import create_async_endpoint
from tests.servers import EngineServer, engine_server

pytestmark = pytest.mark.engine

SDKS = ("runpod", "ppio")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, engine_url: str, sdk_worker_images: dict[str, str]
) -> Iterator[EngineServer]:
    # A lease of 15 s (pings every 5 s): short enough to see a lost lease, long enough that pings a loaded machine
    # delays still renew it.
    data = tmp_path_factory.mktemp("webhooks")
    with engine_server(data, engine_url, host="0.0.0.0", job_lease_seconds=15) as running:
        yield running


def client(server: EngineServer, sdk: str, endpoint_id: str) -> Any:
    """The SDK's own client of the endpoint, at the base it uses (ppio-gpus: /v1, runpod: /v2)."""
    if sdk == "ppio":
        return ppio_gpus.Endpoint(endpoint_id, api_key=server.key, endpoint_url_base=f"{server.url}/v1")
    runpod.api_key = server.key
    runpod.endpoint_url_base = f"{server.url}/v2"
    return runpod.Endpoint(endpoint_id)


def listed(server: EngineServer, endpoint_id: str) -> dict[str, Any]:
    with server.api() as api:
        job: dict[str, Any] = api.get(f"/gpus/v2/endpoints/{endpoint_id}/jobs").json()["data"][0]
        return job


@pytest.mark.parametrize("sdk", SDKS)
def test_a_plain_synchronous_handler_of_8_s_completes_once_with_its_output(
    server: EngineServer, sdk_worker_images: dict[str, str], sdk: str
) -> None:
    # RunPod's hello-world shape, `def handler(job): time.sleep(8); return ...`: the handler blocks the SDK's event
    # loop, and the SDK posts the result on the pooled connection its job-take left idle 8 s before.
    endpoint_id = create_async_endpoint(server, sdk_worker_images[sdk], envs={"HANDLER": "sync"})
    job = client(server, sdk, endpoint_id).run({"sleep": 8})

    output = job.output(timeout=150)
    assert job.status() == "COMPLETED"
    assert output["input"] == {"sleep": 8}
    record = listed(server, endpoint_id)
    assert record["attempts"] == 1, json.dumps(record["history"], indent=1)
    assert [attempt["outcome"] for attempt in record["history"]] == ["completed"]
