"""Async endpoints end to end on real Podman, with the official SDKs on both sides and nothing changed in them:
worker images built on the `ppio-gpus` and `runpod` worker SDKs (examples/) run as an async endpoint's
workers, and the same SDKs' clients, pointed at Dockyard, submit jobs and read them back.

The server listens on every interface so that worker containers reach its webhooks through the bridge's
host address, as they would on a real installation."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import ppio_gpus
import pytest
import runpod

from tests.servers import EngineServer, engine_server, wait_for

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, engine_url: str, sdk_worker_images: dict[str, str]
) -> Iterator[EngineServer]:
    with engine_server(tmp_path_factory.mktemp("jobs"), engine_url, host="0.0.0.0", job_lease_seconds=6) as running:
        yield running


def create_async_endpoint(server: EngineServer, image: str, envs: dict[str, str] | None = None, **config: Any) -> str:
    body = {
        "type": "async",
        "name": "jobs-e2e",
        "product_id": "serverless.cpu",
        "image": image,
        "envs": [{"key": k, "value": v} for k, v in (envs or {}).items()],
        "worker_config": {"min_replicas": 0, "max_replicas": 2, "idle_timeout": 60, **config},
        "policy": {"type": "queue", "value": 1},
    }
    with server.api() as api:
        answer = api.post("/gpus/v2/endpoints", json=body)
    assert answer.status_code == 200, answer.text
    endpoint_id: str = answer.json()["id"]
    return endpoint_id


def set_max_replicas(server: EngineServer, endpoint_id: str, replicas: int) -> None:
    with server.api() as api:
        current = api.get(f"/gpus/v2/endpoints/{endpoint_id}").json()["worker_config"]
        answer = api.put(
            f"/gpus/v2/endpoints/{endpoint_id}",
            json={"worker_config": {**current, "min_replicas": 0, "max_replicas": replicas}},
        )
    assert answer.status_code == 200, answer.text


def workers(server: EngineServer, endpoint_id: str) -> list[dict[str, Any]]:
    with server.api() as api:
        found: list[dict[str, Any]] = api.get(f"/gpus/v2/endpoints/{endpoint_id}").json()["workers"]
        return found


def test_the_ppio_client_and_worker_sdk_run_jobs_unchanged(
    server: EngineServer, sdk_worker_images: dict[str, str]
) -> None:
    endpoint_id = create_async_endpoint(server, sdk_worker_images["ppio"])
    endpoint = ppio_gpus.Endpoint(endpoint_id, api_key=server.key, endpoint_url_base=f"{server.url}/v1")

    job = endpoint.run({"hello": "ppio"})  # from zero workers: the queued job starts one
    output = job.output(timeout=90)
    assert job.status() == "COMPLETED"
    assert output["sdk"] == "ppio"
    assert output["input"] == {"hello": "ppio"}
    assert output["worker"] in {w["id"] for w in workers(server, endpoint_id)}

    failing = endpoint.run({"fail": "the handler refused"})
    wait_for("the failing job to end", lambda: failing.status() == "FAILED")
    assert "the handler refused" in str(failing._fetch_job().get("error"))

    slow = endpoint.run({"sleep": 30})
    wait_for("the slow job to start", lambda: slow.status() == "IN_PROGRESS")
    slow.cancel()
    assert slow.status() == "CANCELLED"

    health = endpoint.health()
    assert health["jobs"]["completed"] >= 1
    assert health["jobs"]["failed"] >= 1
    assert health["workers"]["idle"] + health["workers"]["running"] >= 1

    # With no worker allowed, jobs stay queued; purge_queue removes exactly them.
    set_max_replicas(server, endpoint_id, 0)
    wait_for("no worker left", lambda: workers(server, endpoint_id) == [])
    queued = [endpoint.run({"n": n}) for n in range(3)]
    assert endpoint.health()["jobs"]["inQueue"] == 3
    purged = endpoint.purge_queue()
    assert purged["removed"] == 3
    assert [job.status() for job in queued] == ["CANCELLED"] * 3


def test_the_runpod_client_and_worker_sdk_run_and_stream_jobs_unchanged(
    server: EngineServer, sdk_worker_images: dict[str, str]
) -> None:
    endpoint_id = create_async_endpoint(server, sdk_worker_images["runpod"])
    runpod.api_key = server.key
    runpod.endpoint_url_base = f"{server.url}/v2"
    endpoint = runpod.Endpoint(endpoint_id)

    job = endpoint.run({"hello": "runpod"})
    output = job.output(timeout=90)
    assert job.status() == "COMPLETED"
    assert output["sdk"] == "runpod"
    assert output["input"] == {"hello": "runpod"}

    synced = endpoint.run_sync({"hello": "again"}, timeout=60)
    assert synced["input"] == {"hello": "again"}

    health = endpoint.health()
    assert health["jobs"]["completed"] >= 2

    # A generator handler's parts are read through `stream`, in order, each once.
    streaming_id = create_async_endpoint(server, sdk_worker_images["runpod"], envs={"HANDLER": "generator"})
    streaming = runpod.Endpoint(streaming_id).run({"parts": 4, "delay": 0.3})
    parts = list(streaming.stream())
    assert [part["part"] for part in parts] == [0, 1, 2, 3]
    assert streaming.status() == "COMPLETED"

    slow = endpoint.run({"sleep": 30})
    wait_for("the slow job to start", lambda: slow.status() == "IN_PROGRESS")
    slow.cancel()
    wait_for("the cancel to hold", lambda: slow.status() == "CANCELLED")

    set_max_replicas(server, endpoint_id, 0)
    wait_for("no worker left", lambda: workers(server, endpoint_id) == [])
    queued = [endpoint.run({"n": n}) for n in range(2)]
    assert endpoint.health()["jobs"]["inQueue"] == 2
    assert endpoint.purge_queue()["removed"] == 2
    assert [job.status() for job in queued] == ["CANCELLED"] * 2


def test_a_worker_killed_mid_job_loses_the_job_to_another_worker(
    server: EngineServer, sdk_worker_images: dict[str, str], engine_url: str
) -> None:
    endpoint_id = create_async_endpoint(server, sdk_worker_images["runpod"], min_replicas=2, max_replicas=2)
    wait_for(
        "two ready workers", lambda: sum(w["status"]["status"] == "ready" for w in workers(server, endpoint_id)) == 2
    )
    runpod.api_key = server.key
    runpod.endpoint_url_base = f"{server.url}/v2"
    job = runpod.Endpoint(endpoint_id).run({"sleep": 4})
    wait_for("the job to start", lambda: job.status() == "IN_PROGRESS")
    with server.api() as api:
        holder = api.get(f"/gpus/v2/endpoints/{endpoint_id}/jobs").json()["data"][0]
    first_worker = holder["workerId"]
    container = f"dy-w-{first_worker[:12]}"
    subprocess.run(["podman", "--url", engine_url, "kill", container], check=True, capture_output=True)

    output = job.output(timeout=120)
    assert output["input"] == {"sleep": 4}
    assert output["worker"] != first_worker
    with server.api() as api:
        listed = api.get(f"/gpus/v2/endpoints/{endpoint_id}/jobs").json()["data"][0]
    assert listed["status"] == "COMPLETED"
    assert listed["attempts"] == 2
