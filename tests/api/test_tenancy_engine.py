"""Tenancy on the real engine, as a matrix: a second organization's container tries every network path to the first
organization's container and sync worker, and the second organization tries to mount, and to read the logs of,
what the first owns. Zero access is the only acceptable answer; the first organization's own paths answer, which
proves the probes could have got through.

A real server (SQLite, every loop running) on real Podman; the routes without the engine are tried one by one in
test_tenancy.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from dockyard.config import default_public_address
from tests.engine import answered, http_probe, network_of
from tests.servers import EngineServer, engine_server, new_key, wait_for

pytestmark = pytest.mark.engine


@pytest.fixture
def server(tmp_path: Path, engine_url: str, worker_images: dict[str, str]) -> Iterator[EngineServer]:
    with engine_server(tmp_path, engine_url) as running:
        yield running


def _api(server: EngineServer, org: str) -> httpx.Client:
    key = new_key(server.url, org)
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _ok(answer: httpx.Response) -> Any:
    assert answer.status_code == 200, answer.text
    return answer.json()


def _container(api: httpx.Client, image: str, command: str, **extra: Any) -> str:
    template = _ok(api.post("/api/v1/templates", json={"name": "t", "path": image, "command": command}))
    body = {"count": 1, "idc": "local", "product": "cpu.small", "name": "c", "templateId": template["id"], **extra}
    container_id: str = _ok(api.post("/api/v1/containers", json=body))[0]["id"]
    return container_id


def _running(api: httpx.Client, container_id: str) -> bool:
    return bool(_ok(api.get(f"/api/v1/containers/{container_id}"))["status"] == "running")


def test_another_organization_reaches_nothing_on_the_engine(
    server: EngineServer, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    alice, mallory = _api(server, "alice"), _api(server, "mallory")
    try:
        # Alice: a storage with a file in it, a container serving on 8080 with the storage mounted, a sync worker.
        storage = _ok(alice.post("/gpus/v2/network-storages", json={"name": "s", "region_id": "local", "size_gb": 1}))
        serve = "sh -c 'echo alice-private > /data/secret; exec httpd -f -p 8080 -h /data'"
        storages = [{"containerPath": "/data", "id": storage["id"]}]
        served = _container(alice, busybox_image, serve, storages=storages, ports=[{"containerPort": 8080}])
        neighbour = _container(alice, busybox_image, "sleep 600")
        endpoint = {
            "type": "sync",
            "name": "e",
            "product_id": "serverless.cpu",
            "image": "localhost/dockyard-worker:1",
            "ports": [8080],
            "health_check": {"path": "/health", "port": 8080},
            "worker_config": {"min_replicas": 1, "max_replicas": 1},
        }
        endpoint_id = _ok(alice.post("/gpus/v2/endpoints", json=endpoint))["id"]
        # Mallory: a container of her own and a storage of her own.
        intruder_id = _container(mallory, busybox_image, "sleep 600")
        own = _ok(mallory.post("/gpus/v2/network-storages", json={"name": "s", "region_id": "local", "size_gb": 1}))

        for api, container_id in ((alice, served), (alice, neighbour), (mallory, intruder_id)):
            wait_for(f"container {container_id} running", lambda api=api, cid=container_id: _running(api, cid))
        workers = wait_for(
            "a ready worker",
            lambda: [w for w in _ok(alice.get(f"/gpus/v2/endpoints/{endpoint_id}"))["workers"] if w["health"]],
        )
        (worker,) = docker_client.containers.list(filters={"label": f"dockyard.endpoint={endpoint_id}"})
        worker_port = next(
            int(binding["HostPort"])
            for bindings in worker.attrs["NetworkSettings"]["Ports"].values()
            for binding in bindings or []
        )
        (target,) = docker_client.containers.list(filters={"label": f"dockyard.id={served}"})
        (friend,) = docker_client.containers.list(filters={"label": f"dockyard.id={neighbour}"})
        (intruder,) = docker_client.containers.list(filters={"label": f"dockyard.id={intruder_id}"})
        target_ip, worker_ip = network_of(target)[1]["IPAddress"], network_of(worker)[1]["IPAddress"]
        gateway = network_of(intruder)[1]["Gateway"]

        # The network paths, from Mallory's container.
        paths = {
            "Alice's container, by its address": (target_ip, 8080, "/secret"),
            "Alice's worker, by its address": (worker_ip, 8080, "/health"),
            "Alice's worker's host port, on the host's address": (default_public_address(), worker_port, "/health"),
            "Alice's worker's host port, on the bridge's gateway": (gateway, worker_port, "/health"),
        }
        reached = {}
        for what, (host, port, path) in paths.items():
            probe = http_probe(intruder, host, port, path)
            if answered(probe) or "alice-private" in probe[1]:
                reached[what] = probe[1]
        assert not reached, reached
        # The same path from Alice's own neighbour answers: the probes could have got through.
        assert "alice-private" in http_probe(friend, target_ip, 8080, "/secret")[1]

        # Logs, and the API paths to Alice's storage: each as unknown to Mallory as a wrong id.
        assert mallory.get(f"/api/v1/containers/{served}/logs").status_code == 404
        worker_id = workers[0]["id"]
        assert mallory.get(f"/gpus/v2/endpoints/{endpoint_id}/workers/{worker_id}/logs").status_code == 404
        template = _ok(mallory.post("/api/v1/templates", json={"name": "m", "path": busybox_image}))["id"]
        mounts = [
            {"containerPath": "/data", "id": storage["id"]},
            {"containerPath": f"/x,source=dockyard-ns-{storage['id']}", "id": own["id"]},
            {"containerPath": "/x,volume-opt=device=/etc,volume-opt=o=bind,volume-opt=type=none", "id": own["id"]},
        ]
        for mount in mounts:
            body = {"count": 1, "idc": "local", "product": "cpu.small", "name": "m", "templateId": template}
            answer = mallory.post("/api/v1/containers", json={**body, "storages": [mount]})
            assert answer.status_code == 422, (mount, answer.text)
            assert answer.json()["details"][0]["field"].startswith("storages[0]")
        # Through the gateway, Alice's endpoint answers Alice only.
        assert httpx.get(f"{server.url}/{endpoint_id}/health", headers=alice.headers, timeout=30).status_code == 200
        assert httpx.get(f"{server.url}/{endpoint_id}/health", headers=mallory.headers, timeout=30).status_code == 404
    finally:
        alice.close()
        mallory.close()
