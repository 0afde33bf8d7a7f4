"""The network-storage reconciler over a real database and the in-memory runtime: a `deleting` storage
loses its volume, then its row; an unreachable or refusing runtime leaves it for the next pass."""

from __future__ import annotations

import httpx
import pytest

from dockyard.app import build_loops
from dockyard.db.models import NetworkStorageModel
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.reconcilers.network_storages import NetworkStorageReconciler
from dockyard.runtimes.base import RuntimeFailure, RuntimeUnavailable
from dockyard.services.runspec import storage_volume
from tests.conftest import Harness
from tests.fakes import FakeRuntime
from tests.reconcilers.conftest import make_containers, make_template

STORAGE = {"name": "datasets", "region_id": "local", "size_gb": 10}


async def new_storage(client: httpx.AsyncClient, runtime: FakeRuntime) -> str:
    storage_id: str = (await client.post("/gpus/v2/network-storages", json=STORAGE)).json()["id"]
    await runtime.ensure_volume(storage_volume(storage_id), {"dockyard.id": storage_id})
    return storage_id


async def row_exists(harness: Harness, storage_id: str) -> bool:
    async with harness.context.db.read() as session:
        return await session.get(NetworkStorageModel, storage_id) is not None


async def test_deleting_storage_loses_volume_then_row(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime
) -> None:
    doomed = await new_storage(client, fake_runtime)
    kept = await new_storage(client, fake_runtime)
    assert (await client.delete(f"/gpus/v2/network-storages/{doomed}")).status_code == 200

    reconciler = NetworkStorageReconciler(harness.context)
    await reconciler.reconcile_once()

    assert storage_volume(doomed) not in fake_runtime.volumes
    assert storage_volume(kept) in fake_runtime.volumes
    assert not await row_exists(harness, doomed)
    assert await row_exists(harness, kept)
    assert (await client.get(f"/gpus/v2/network-storages/{doomed}")).status_code == 404
    await reconciler.reconcile_once()  # nothing left to do: a second pass changes nothing
    assert await row_exists(harness, kept)


async def test_volume_already_gone_still_finishes(harness: Harness, client: httpx.AsyncClient) -> None:
    storage_id = (await client.post("/gpus/v2/network-storages", json=STORAGE)).json()["id"]
    await client.delete(f"/gpus/v2/network-storages/{storage_id}")
    await NetworkStorageReconciler(harness.context).reconcile_once()
    assert not await row_exists(harness, storage_id)


@pytest.mark.parametrize(
    "error", [RuntimeUnavailable("engine down"), RuntimeFailure("volume is in use by container abc")]
)
async def test_runtime_error_leaves_it_for_next_pass(
    harness: Harness,
    client: httpx.AsyncClient,
    fake_runtime: FakeRuntime,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    storage_id = await new_storage(client, fake_runtime)
    await client.delete(f"/gpus/v2/network-storages/{storage_id}")

    async def refuse(name: str) -> None:
        raise error

    reconciler = NetworkStorageReconciler(harness.context)
    with monkeypatch.context() as patched:
        patched.setattr(fake_runtime, "remove_volume", refuse)
        await reconciler.reconcile_once()
    assert await row_exists(harness, storage_id)
    assert storage_volume(storage_id) in fake_runtime.volumes

    await reconciler.reconcile_once()
    assert not await row_exists(harness, storage_id)
    assert storage_volume(storage_id) not in fake_runtime.volumes


async def test_idc_without_runtime_waits(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime
) -> None:
    storage_id = await new_storage(client, fake_runtime)
    await client.delete(f"/gpus/v2/network-storages/{storage_id}")
    runtime = harness.context.runtimes.pop("local")
    try:
        await NetworkStorageReconciler(harness.context).reconcile_once()
        assert await row_exists(harness, storage_id)
    finally:
        harness.context.runtimes["local"] = runtime
    await NetworkStorageReconciler(harness.context).reconcile_once()
    assert not await row_exists(harness, storage_id)


def test_server_runs_the_loop(harness: Harness) -> None:
    loops = {loop.name: loop for loop in build_loops(harness.context, harness.routes)}
    assert isinstance(loops["network_storages"], NetworkStorageReconciler)
    assert loops["network_storages"].interval == harness.context.settings.reconcile_interval


async def test_a_mounted_storage_asks_the_runtime_for_its_declared_size(
    harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime
) -> None:
    storage_id = (await client.post("/gpus/v2/network-storages", json=STORAGE)).json()["id"]
    template_id = await make_template(client)
    (container_id,) = await make_containers(client, template_id, storages=[{"id": storage_id, "containerPath": "/d"}])
    await ContainerReconciler(harness.context).reconcile_once()
    (obj,) = [obj for obj in fake_runtime.objects.values() if obj.resource_id == container_id]
    (mount,) = fake_runtime.specs[obj.id].mounts
    assert (mount.volume, mount.size_gb) == (storage_volume(storage_id), STORAGE["size_gb"])
