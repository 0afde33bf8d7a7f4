"""Acceptance: a server killed with SIGKILL in the middle of creating and deleting containers, restarted on
the same database, converges to exactly what was asked for, with the real server, real Podman and a real
database (SQLite, and PostgreSQL where the tests can start one).

After convergence: every surviving container is `running` with exactly one runtime object, no runtime object
lacks a row, deleted containers are gone from both, GPU UUIDs are unique across live containers and equal to
their objects' labels, host ports are unique, and every container's port answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from sqlalchemy import select

from dockyard.core.status import ContainerStatus
from dockyard.db.models import ContainerModel, SettingModel
from dockyard.db.session import Database
from tests.engine import remove_networks
from tests.servers import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.engine]

CONVERGE_SECONDS = 90.0


@pytest.fixture
def crash_env(tmp_path: Path, database_url: str, engine_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKYARD_")}
    env.update(
        DOCKYARD_DATA_DIR=str(tmp_path / "data"),
        DOCKYARD_DATABASE_URL=database_url,
        DOCKYARD_ENGINE_URL=engine_url,
        DOCKYARD_PUBLIC_ADDRESS="127.0.0.1",
        DOCKYARD_RECONCILE_INTERVAL="0.3",
        DOCKYARD_ZOMBIE_GRACE_SECONDS="3",
        DOCKYARD_MISSING_DEBOUNCE_SECONDS="3",
        DOCKYARD_SIMULATED_GPUS="NVIDIA H100 80GB HBM3:4",
        # The host of those 4 GPUs, declared as one is sized (gpu.h100.1x asks 16 vCPUs and 128 GiB each), since
        # placement counts CPUs and memory: this machine's own would not hold the three GPU containers.
        DOCKYARD_NODE_CPUS="64",
        DOCKYARD_NODE_MEMORY_MB=str(512 * 1024),
        DOCKYARD_LOG_LEVEL="info",
    )
    return env


@pytest.fixture
def engine(engine_url: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=engine_url)
    yield client
    client.close()


def create_key(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", "admin", "create-key", "--org", "crash", "--create"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def post_containers(client: httpx.Client, template_id: str, product: str, count: int, name: str) -> list[str]:
    body = {"count": count, "idc": "local", "product": product, "name": name, "templateId": template_id}
    answer = client.post("/api/v1/containers", json=body)
    assert answer.status_code == 200, answer.text
    return [item["id"] for item in answer.json()]


def delete_container(client: httpx.Client, container_id: str) -> None:
    answer = client.delete(f"/api/v1/containers/{container_id}")
    assert answer.status_code == 200, answer.text


def managed_objects(engine: docker.DockerClient, installation: str) -> list[Any]:
    return list(engine.containers.list(all=True, filters={"label": f"dockyard.installation={installation}"}))


async def installation_of(database_url: str) -> str:
    db = Database(database_url)
    try:
        async with db.read() as session:
            row = await session.get(SettingModel, "installation_id")
    finally:
        await db.dispose()
    assert row is not None
    return row.value


async def load_rows(database_url: str) -> list[ContainerModel]:
    db = Database(database_url)
    try:
        async with db.read() as session:
            return list(await session.scalars(select(ContainerModel)))
    finally:
        await db.dispose()


def port_answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    except httpx.HTTPError:
        return False
    return True


def test_sigkill_mid_work_then_restart_converges(
    tmp_path: Path,
    crash_env: dict[str, str],
    database_url: str,
    engine: docker.DockerClient,
    busybox_image: str,
) -> None:
    key = create_key(crash_env)  # makes, migrates and bootstraps the database, installation id included
    installation = asyncio.run(installation_of(database_url))
    server = ServerProcess(crash_env, tmp_path / "server.log")
    try:
        server.start()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            template = {
                "name": "web",
                "path": busybox_image,
                "command": "httpd -f -p 8080 -h /tmp",
                "ports": [{"containerPort": 8080}],
            }
            answer = client.post("/api/v1/templates", json=template)
            assert answer.status_code == 200, answer.text
            template_id = answer.json()["id"]

            first = post_containers(client, template_id, "cpu.small", 4, "before")
            gpus = post_containers(client, template_id, "gpu.h100.1x", 2, "gpu-before")
            time.sleep(1.0)  # let the reconciler get going, so the kill lands mid-work
            delete_container(client, first[0])
            delete_container(client, gpus[0])
            second = post_containers(client, template_id, "cpu.small", 4, "racing")
            time.sleep(0.25)  # a batch of creates takes about half a second here: kill it half-way
            server.kill()

        server.start()
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            third = post_containers(client, template_id, "cpu.small", 4, "after")
            gpus += post_containers(client, template_id, "gpu.h100.1x", 2, "gpu-after")
            delete_container(client, second[1])
            fourth = post_containers(client, template_id, "cpu.small", 4, "late")
            delete_container(client, third[2])

        deleted = {first[0], gpus[0], second[1], third[2]}
        created = [*first, *second, *third, *fourth, *gpus]
        assert len(created) == 20
        wanted = set(created) - deleted

        rows: list[ContainerModel] = []
        deadline = time.monotonic() + CONVERGE_SECONDS
        while True:
            rows = asyncio.run(load_rows(database_url))
            statuses = {row.id: row.status for row in rows}
            if set(statuses) == wanted and all(s == ContainerStatus.RUNNING for s in statuses.values()):
                break
            if time.monotonic() > deadline:
                stuck = {
                    row.id: f"{row.status.value}: {row.reason}" for row in rows if row.status != ContainerStatus.RUNNING
                }
                pytest.fail(f"not converged in {CONVERGE_SECONDS} s; not running: {stuck}\n{server.log_tail()}")
            time.sleep(0.5)

        # The reconciler may still be finishing a pass; wait (bounded) for the runtime side to settle too.
        deadline = time.monotonic() + CONVERGE_SECONDS
        while True:
            objects = managed_objects(engine, installation)
            by_id: dict[str, list[Any]] = {}
            for obj in objects:
                by_id.setdefault(obj.labels["dockyard.id"], []).append(obj)
            if set(by_id) == wanted and all(len(objs) == 1 for objs in by_id.values()):
                break
            if time.monotonic() > deadline:
                counts = {rid: len(objs) for rid, objs in by_id.items()}
                pytest.fail(f"runtime objects never matched the rows: {counts}\n{server.log_tail()}")
            time.sleep(0.5)

        rows = asyncio.run(load_rows(database_url))
        assert {row.id for row in rows} == wanted
        for row in rows:
            (obj,) = by_id[row.id]
            assert obj.status == "running"
            assert row.runtime_id == obj.id
            assert obj.labels["dockyard.gpus"] == ",".join(row.gpu_uuids)
        gpu_rows = [row for row in rows if row.product_id == "gpu.h100.1x"]
        assert len(gpu_rows) == 3
        held = [uuid for row in gpu_rows for uuid in row.gpu_uuids]
        assert len(held) == len(set(held)) == 3
        ports = [entry["port"] for row in rows for entry in row.published_ports]
        assert len(ports) == len(wanted)
        assert len(set(ports)) == len(ports)
        for port in ports:
            deadline = time.monotonic() + 30
            while not port_answers(port):
                assert time.monotonic() < deadline, f"port {port} never answered"
                time.sleep(0.2)
    finally:
        server.stop()
        for obj in managed_objects(engine, installation):
            obj.remove(force=True)
        remove_networks(installation)
