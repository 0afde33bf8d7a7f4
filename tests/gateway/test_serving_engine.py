"""Serverless endpoints end to end on real Podman: a real server (uvicorn on a loopback port, SQLite, every
loop running) runs the example worker image as endpoint workers, and clients call it through the gateway
over real sockets.

- Scale to zero and back: the first request is held through the cold start; 50 concurrent requests bring
  three workers; with no load the endpoint returns to zero workers; every request is answered 200.
- A rolling update: a new image is PUT while a client sends requests without pause; the workers roll to
  the new version and no request fails.
- The `openai` client gets a streamed chat completion through the gateway.
- A worker's ports answer the gateway only: another organization's container reaches them on no address.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import openai
import pytest

from dockyard.config import default_public_address
from tests.engine import answered, http_probe, network_of
from tests.servers import EngineServer, engine_server, new_key, wait_for

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, engine_url: str, worker_images: dict[str, str]
) -> Iterator[EngineServer]:
    with engine_server(tmp_path_factory.mktemp("serving"), engine_url) as running:
        yield running


def create_endpoint(server: EngineServer, image: str, **worker_config: Any) -> str:
    body = {
        "type": "sync",
        "name": "serving-test",
        "product_id": "serverless.cpu",
        "image": image,
        "ports": [8080],
        "health_check": {"path": "/health", "port": 8080},
        "worker_config": {"min_replicas": 0, "max_replicas": 3, "request_timeout": 60, **worker_config},
        "policy": {"type": "concurrency", "value": 1},
    }
    with server.api() as api:
        response = api.post("/gpus/v2/endpoints", json=body)
    assert response.status_code == 200, response.text
    endpoint_id: str = response.json()["id"]
    return endpoint_id


def get_endpoint(server: EngineServer, endpoint_id: str) -> dict[str, Any]:
    with server.api() as api:
        response = api.get(f"/gpus/v2/endpoints/{endpoint_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def delete_endpoint(server: EngineServer, endpoint_id: str) -> None:
    with server.api() as api:
        assert api.delete(f"/gpus/v2/endpoints/{endpoint_id}").status_code == 200
    wait_for("the endpoint deleted", lambda: _gone(server, endpoint_id))


def _gone(server: EngineServer, endpoint_id: str) -> bool:
    with server.api() as api:
        return api.get(f"/gpus/v2/endpoints/{endpoint_id}").status_code == 404


def test_scale_from_zero_to_three_workers_and_back_to_zero(server: EngineServer) -> None:
    endpoint_id = create_endpoint(server, "localhost/dockyard-worker:1", idle_timeout=3, max_concurrent_per_worker=4)
    assert get_endpoint(server, endpoint_id)["workers"] == []
    base = f"{server.url}/{endpoint_id}"

    # The first request reaches an endpoint with no worker at all: it is held through the cold start.
    first = httpx.post(f"{base}/echo", content=b"first", headers=server.headers, timeout=60)
    assert first.status_code == 200, first.text
    assert first.json()["body"] == "first"

    seen_workers: set[str] = set()
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            ready = [w for w in get_endpoint(server, endpoint_id)["workers"] if w["status"]["status"] == "ready"]
            peak = max(peak, len(ready))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=server.headers, timeout=120) as client:
            return await asyncio.gather(*(client.get(f"{base}/sleep?s=1") for _ in range(50)))

    try:
        responses = asyncio.run(burst())
    finally:
        stop.set()
        watcher.join()
    assert [r.status_code for r in responses] == [200] * 50
    seen_workers = {r.headers["x-dockyard-worker"] for r in responses}
    assert peak == 3, f"at most {peak} workers were ready under 50 concurrent requests"
    assert len(seen_workers) == 3

    # No load: after idle_timeout every worker is drained and removed.
    wait_for("back to zero workers", lambda: get_endpoint(server, endpoint_id)["workers"] == [], deadline=60)
    with server.api() as api:
        kinds = [e["type"] for e in api.get(f"/gpus/v2/endpoints/{endpoint_id}/events").json()["data"]]
    assert "ScaledUp" in kinds
    assert "ScaledDown" in kinds

    # And back up again from zero.
    again = httpx.post(f"{base}/echo", content=b"again", headers=server.headers, timeout=60)
    assert again.status_code == 200
    delete_endpoint(server, endpoint_id)


def test_a_new_image_rolls_the_workers_while_requests_keep_succeeding(server: EngineServer) -> None:
    endpoint_id = create_endpoint(
        server, "localhost/dockyard-worker:1", min_replicas=2, max_replicas=2, max_concurrent_per_worker=4
    )
    wait_for(
        "two ready workers",
        lambda: sum(w["status"]["status"] == "ready" for w in get_endpoint(server, endpoint_id)["workers"]) == 2,
    )
    base = f"{server.url}/{endpoint_id}"
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(headers=server.headers, timeout=60) as client:
            while not stop.is_set():
                response = client.post(f"{base}/echo", content=b"x")
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["version"])

    clients = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(0.5)
        with server.api() as api:
            assert (
                api.put(f"/gpus/v2/endpoints/{endpoint_id}", json={"image": "localhost/dockyard-worker:2"}).status_code
                == 200
            )

        def rolled() -> bool:
            endpoint = get_endpoint(server, endpoint_id)
            return (
                endpoint["status"]["status"] == "running"
                and len(endpoint["workers"]) == 2
                and versions[-20:] == ["2"] * 20
            )

        wait_for("the workers rolled to version 2", rolled, deadline=90)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert len(statuses) > 100
    failed = [s for s in statuses if s != 200]
    assert failed == [], f"{len(failed)} of {len(statuses)} requests failed during the roll: {sorted(set(failed))}"
    assert versions[0] == "1"
    assert versions[-1] == "2"
    delete_endpoint(server, endpoint_id)


def test_the_openai_client_streams_a_chat_completion_through_the_gateway(server: EngineServer) -> None:
    endpoint_id = create_endpoint(server, "localhost/dockyard-worker:1")
    client = openai.OpenAI(base_url=f"{server.url}/{endpoint_id}/v1", api_key=server.key, timeout=60)
    stream = client.chat.completions.create(
        model="dockyard-test", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    parts = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(parts) >= 5  # streamed as separate events, not one body
    assert "".join(parts) == "Hello from worker 1."
    whole = client.chat.completions.create(model="dockyard-test", messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == "Hello from worker 1."
    delete_endpoint(server, endpoint_id)


def test_a_sync_worker_is_reached_through_the_gateway_only(
    server: EngineServer, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    """The attack as found: a sync worker's ports were published on every interface, so another organization's
    container (and anyone who reached the host) got answers from it with no key, bypassing the gateway. Now
    they are published on loopback only, where the gateway and the prober on the same host reach them."""
    endpoint_id = create_endpoint(server, "localhost/dockyard-worker:1", min_replicas=1, max_replicas=1)
    wait_for("a ready worker", lambda: [w for w in get_endpoint(server, endpoint_id)["workers"] if ready(w)])
    (worker,) = docker_client.containers.list(filters={"label": f"dockyard.endpoint={endpoint_id}"})
    bindings = [b for entries in worker.attrs["NetworkSettings"]["Ports"].values() for b in entries or []]
    assert bindings, "the worker publishes its serving port"
    port = int(bindings[0]["HostPort"])
    worker_ip = network_of(worker)[1]["IPAddress"]

    # Another organization runs a container of its own through the API.
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {new_key(server.url, 'intruder')}"}
    ) as api:
        template = api.post("/api/v1/templates", json={"name": "probe", "path": busybox_image, "command": "sleep 600"})
        assert template.status_code == 200, template.text
        body = {
            "count": 1,
            "idc": "local",
            "product": "cpu.small",
            "name": "probe",
            "templateId": template.json()["id"],
        }
        created = api.post("/api/v1/containers", json=body)
        assert created.status_code == 200, created.text
        container_id = created.json()[0]["id"]
        wait_for(
            "the intruder's container running",
            lambda: api.get(f"/api/v1/containers/{container_id}").json()["status"] == "running",
        )
    (intruder,) = docker_client.containers.list(filters={"label": f"dockyard.id={container_id}"})
    gateway = network_of(intruder)[1]["Gateway"]
    for host, target in ((default_public_address(), port), (gateway, port), (worker_ip, 8080)):
        code, output = http_probe(intruder, host, target, "/health")
        assert code != 0, (host, target, output)
        assert not answered((code, output)), (host, target, output)
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}

    answer = httpx.post(f"{server.url}/{endpoint_id}/echo", content=b"through", headers=server.headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["body"] == "through"
    delete_endpoint(server, endpoint_id)


def ready(worker: dict[str, Any]) -> bool:
    return bool(worker["status"]["status"] == "ready")
