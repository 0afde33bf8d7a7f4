"""The endpoint reconciler and its health prober against real Podman and the test worker image: workers become
ready and answer through their addresses; a worker that exits or turns unhealthy is failed with the reason and
replaced; a new image rolls the workers with a ready worker always routed; a deleted endpoint leaves no
container behind.

Each test's objects carry the fresh installation id of its own database, and are removed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import docker
import httpx
import pytest

from dockyard.core.status import WorkerStatus
from dockyard.db.models import EndpointModel
from dockyard.reconcilers.endpoints import EndpointReconciler
from dockyard.services.worker_runspec import LABEL_ENDPOINT, worker_address
from tests.conftest import Harness
from tests.engine_harness import database_url, fake_runtime  # noqa: F401
from tests.reconcilers.test_endpoints import URL, endpoint_row, make_endpoint, ready_ids, workers_of

pytestmark = pytest.mark.engine

DEADLINE = 60.0


@pytest.fixture
async def reconciler(harness: Harness) -> AsyncIterator[EndpointReconciler]:
    settings = harness.context.settings
    settings.health_check_interval = 0.3
    settings.health_check_timeout = 1.0
    settings.stop_timeout_seconds = 1
    settings.zombie_grace_seconds = 0.5
    endpoints = EndpointReconciler(harness.context, harness.routes)
    yield endpoints
    await endpoints.close()


async def until(
    reconciler: EndpointReconciler, check: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE
) -> None:
    """Reconcile until `check` holds, within a bounded deadline; the prober works in between."""
    end = time.monotonic() + deadline
    while True:
        await reconciler.reconcile_once()
        if await check():
            return
        if time.monotonic() > end:
            pytest.fail(f"not converged within {deadline} s: {what}")
        await asyncio.sleep(0.05)


async def get_json(url: str) -> Any:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(url)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def post(url: str) -> None:
    # /admin/exit ends the process before it answers.
    async with httpx.AsyncClient(timeout=5) as client:
        with contextlib.suppress(httpx.HTTPError):
            await client.post(url)


def containers_of(client: docker.DockerClient, endpoint_id: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_ENDPOINT}={endpoint_id}"}))


async def test_workers_become_ready_fail_roll_and_go_on_podman(
    harness: Harness,
    reconciler: EndpointReconciler,
    worker_images: dict[str, str],
    docker_client: docker.DockerClient,
) -> None:
    endpoint_id = await make_endpoint(harness.client, image=worker_images["1"], min_replicas=2)

    async def ready_count(count: int, generation: int = 1) -> bool:
        workers = await workers_of(harness, endpoint_id)
        ready = [w for w in workers if w.status == WorkerStatus.READY and w.generation == generation]
        return len(ready) == count and len(ready_ids(harness, endpoint_id) & {w.id for w in ready}) == count

    await until(reconciler, lambda: ready_count(2), "two ready workers")
    first = [w for w in await workers_of(harness, endpoint_id) if w.status == WorkerStatus.READY]
    for worker in first:
        address = worker_address(worker.published_ports)
        assert address is not None
        echo = await get_json(f"{address}/echo")
        assert echo["version"] == "1"
    assert len(containers_of(docker_client, endpoint_id)) == 2

    # A worker whose process exits is failed with its exit code and replaced.
    exiting = first[0]
    await post(f"{worker_address(exiting.published_ports)}/admin/exit")

    async def failed_with(worker_id: str, reason: str) -> bool:
        workers = {w.id: w for w in await workers_of(harness, endpoint_id)}
        worker = workers.get(worker_id)
        return worker is not None and worker.status == WorkerStatus.FAILED and worker.reason.startswith(reason)

    await until(reconciler, lambda: failed_with(exiting.id, "exited with code 3"), "the exited worker failed")
    assert exiting.id not in ready_ids(harness, endpoint_id)
    await until(reconciler, lambda: ready_count(2), "the exited worker replaced")

    # A worker that stops answering its health check is failed with the check's reason and replaced.
    sick = first[1]
    await post(f"{worker_address(sick.published_ports)}/admin/unhealthy")
    health_reason = "health check GET /health on port 8080 failed 3 times in a row: status 503"
    await until(reconciler, lambda: failed_with(sick.id, health_reason), "the unhealthy worker failed")
    await until(reconciler, lambda: ready_count(2), "the unhealthy worker replaced")
    before_roll = {w.id for w in await workers_of(harness, endpoint_id) if w.status == WorkerStatus.READY}

    # A new image rolls the workers; at every pass two workers stay routed ready.
    answer = await harness.client.put(f"{URL}/{endpoint_id}", json={"image": worker_images["2"]})
    assert answer.status_code == 200, answer.text

    async def rolled() -> bool:
        assert len(ready_ids(harness, endpoint_id)) >= 2, "the roll left fewer ready workers than wanted"
        workers = await workers_of(harness, endpoint_id)
        return await ready_count(2, generation=2) and not any(w.id in before_roll for w in workers)

    await until(reconciler, rolled, "rolled to version 2")
    for worker in await workers_of(harness, endpoint_id):
        if worker.status == WorkerStatus.READY:
            echo = await get_json(f"{worker_address(worker.published_ports)}/echo")
            assert echo["version"] == "2"
    labels = [c.labels for c in containers_of(docker_client, endpoint_id)]
    running_ids = {label["dockyard.id"] for label in labels}
    assert not running_ids & before_roll  # the old containers are removed
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    await until(reconciler, lambda: _status_is(harness, endpoint_id, "running"), "the endpoint running")

    # DELETE drains and removes every worker, then the row.
    assert (await harness.client.delete(f"{URL}/{endpoint_id}")).status_code == 200

    async def deleted() -> bool:
        return await endpoint_row(harness, endpoint_id) is None

    await until(reconciler, deleted, "the endpoint deleted")
    assert containers_of(docker_client, endpoint_id) == []
    assert endpoint_id not in harness.routes


async def _status_is(harness: Harness, endpoint_id: str, status: str) -> bool:
    row = await endpoint_row(harness, endpoint_id)
    return row is not None and row.status.value == status


async def test_an_endpoint_stored_before_the_checks_has_its_workers_drained_on_podman(
    harness: Harness,
    reconciler: EndpointReconciler,
    worker_images: dict[str, str],
    docker_client: docker.DockerClient,
) -> None:
    """An endpoint an earlier release stored with `NVIDIA_VISIBLE_DEVICES=all` (its workers see every GPU of a host
    with the NVIDIA toolkit): the reconciler of the server after the upgrade drains and removes its workers, and the
    endpoint is `failed` naming the variable and saying to update it."""
    endpoint_id = await make_endpoint(harness.client, image=worker_images["1"], min_replicas=1)

    async def one_ready() -> bool:
        return [w.status for w in await workers_of(harness, endpoint_id)] == [WorkerStatus.READY]

    await until(reconciler, one_ready, "one ready worker")
    assert len(containers_of(docker_client, endpoint_id)) == 1
    async with harness.context.db.write() as session:
        row = await session.get(EndpointModel, endpoint_id)
        assert row is not None
        reserved = {"name": "NVIDIA_VISIBLE_DEVICES", "value": harness.context.box.encrypt("all")}
        row.spec = {**row.spec, "envs": [reserved]}
    restarted = EndpointReconciler(harness.context, harness.routes)
    try:

        async def stopped() -> bool:
            return await workers_of(harness, endpoint_id) == [] and await _status_is(harness, endpoint_id, "failed")

        await until(restarted, stopped, "the workers drained and the endpoint failed")
    finally:
        await restarted.close()
    assert containers_of(docker_client, endpoint_id) == []
    row = await endpoint_row(harness, endpoint_id)
    assert row is not None
    assert row.reason.startswith(
        "stopped: its configuration, stored before Dockyard checked it, holds what is now refused: environment "
        "variable NVIDIA_VISIBLE_DEVICES is reserved: "
    )
    assert row.reason.endswith(f"(PUT /gpus/v2/endpoints/{endpoint_id}) and its workers start again")
