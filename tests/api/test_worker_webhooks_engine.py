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
from tests.servers import EngineServer, engine_server, wait_for

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
    """The SDK's own client of the endpoint, at the base it uses (ppio-gpus: /v1, runpod: /v2). novita-gpus's client
    is ppio-gpus's under other names, at the same /v1."""
    if sdk in ("ppio", "novita"):
        return ppio_gpus.Endpoint(endpoint_id, api_key=server.key, endpoint_url_base=f"{server.url}/v1")
    runpod.api_key = server.key
    runpod.endpoint_url_base = f"{server.url}/v2"
    return runpod.Endpoint(endpoint_id)


def listed(server: EngineServer, endpoint_id: str) -> dict[str, Any]:
    with server.api() as api:
        job: dict[str, Any] = api.get(f"/gpus/v2/endpoints/{endpoint_id}/jobs").json()["data"][0]
        return job


@pytest.mark.parametrize("sdk", [*SDKS, "novita"])
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


@pytest.mark.parametrize("sdk", SDKS)
def test_progress_updates_show_in_status_while_the_job_runs_then_the_result_completes_it(
    server: EngineServer, sdk_worker_images: dict[str, str], sdk: str
) -> None:
    # The SDKs' own example: `progress_update(job, f"Update {n}/3")` from a synchronous handler, then a return.
    endpoint_id = create_async_endpoint(server, sdk_worker_images[sdk], envs={"HANDLER": "sync"})
    updates = ["Update 1/3", "Update 2/3", "Update 3/3"]
    job = client(server, sdk, endpoint_id).run({"progress": updates, "step": 1.5})

    seen: list[Any] = []

    def progress_seen() -> bool:
        state = job._fetch_job()  # what the client's `status()` and `output()` read
        if state["status"] == "IN_PROGRESS" and "output" in state and state["output"] not in seen:
            seen.append(state["output"])
        return state["status"] != "IN_PROGRESS" and state["status"] != "IN_QUEUE"

    wait_for("the job to end", progress_seen, deadline=150)
    assert seen, "no progress value was shown while the job ran"
    assert set(seen) <= set(updates)
    assert job.status() == "COMPLETED"
    assert job.output()["input"] == {"progress": updates, "step": 1.5}
    record = listed(server, endpoint_id)
    assert record["attempts"] == 1, json.dumps(record["history"], indent=1)


@pytest.fixture(scope="module")
def short_keep_alive_server(
    tmp_path_factory: pytest.TempPathFactory, engine_url: str, sdk_worker_images: dict[str, str]
) -> Iterator[EngineServer]:
    """A server that closes idle connections after 3 s, as uvicorn's default of 5 s did when the issue was found, and
    whose leases (15 s) outlast the detection of a lost result (at the worker's next ping, within 5 s)."""
    data = tmp_path_factory.mktemp("short-keep-alive")
    with engine_server(data, engine_url, host="0.0.0.0", keep_alive_timeout_seconds=3, job_lease_seconds=15) as running:
        yield running


def test_a_result_the_worker_could_not_deliver_is_named_so_not_a_lease_expiry(
    short_keep_alive_server: EngineServer, sdk_worker_images: dict[str, str]
) -> None:
    # The handler outlasts the server's keep-alive, so the SDK's post of each result fails ("Server disconnected")
    # and its next ping no longer lists the job: each attempt is ended at that ping and says why.
    server = short_keep_alive_server
    endpoint_id = create_async_endpoint(server, sdk_worker_images["runpod"], envs={"HANDLER": "sync"})
    job = client(server, "runpod", endpoint_id).run({"sleep": 5})

    wait_for("the job to end", lambda: job.status() not in ("IN_QUEUE", "IN_PROGRESS"), deadline=150)
    record = listed(server, endpoint_id)
    assert record["status"] == "FAILED"
    attempts = [attempt for attempt in record["history"] if "attempt" in attempt]
    assert len(attempts) == server.settings.job_max_attempts
    for attempt in attempts:
        assert attempt["outcome"].endswith("finished the job but its result never reached the server"), attempt
    assert record["error"].startswith(f"no result arrived in {server.settings.job_max_attempts} attempts")
    assert "lease expired" not in record["error"]
