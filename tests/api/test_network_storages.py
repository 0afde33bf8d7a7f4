"""`/gpus/v2/network-storages` over a real database: create, read, grow, mount accounting, tenancy, delete."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import update

from dockyard.core.status import DesiredState, NetworkStorageStatus
from dockyard.db.models import ContainerModel, NetworkStorageModel
from tests.api.test_admin import add_container, assert_error
from tests.conftest import Harness
from tests.reconcilers.test_endpoints import make_endpoint

STORAGE = {"name": "datasets", "region_id": "local", "size_gb": 100}


def mounting(*storage_ids: str) -> dict[str, object]:
    return {
        "image": "localhost/busybox:latest",
        "volumes": [{"storage_id": sid, "mount_path": f"/mnt/{n}"} for n, sid in enumerate(storage_ids)],
    }


async def test_create_get_list(client: httpx.AsyncClient) -> None:
    before = int(time.time())
    created = await client.post("/gpus/v2/network-storages", json=STORAGE)
    assert created.status_code == 200, created.text
    storage_id = created.json()["id"]

    got = (await client.get(f"/gpus/v2/network-storages/{storage_id}")).json()
    assert got == {
        "id": storage_id,
        "name": "datasets",
        "region_id": "local",
        "size_gb": 100,
        "status": "available",
        "mounted_by": [],
        "created_at": got["created_at"],
    }
    assert isinstance(got["created_at"], int)
    assert before - 1 <= got["created_at"] <= int(time.time()) + 1

    second = (await client.post("/gpus/v2/network-storages", json={**STORAGE, "name": "models"})).json()["id"]
    listed = (await client.get("/gpus/v2/network-storages")).json()
    assert sorted(s["id"] for s in listed["data"]) == sorted([storage_id, second])


async def test_validation_names_the_field(client: httpx.AsyncClient) -> None:
    url = "/gpus/v2/network-storages"
    assert_error(await client.post(url, json={**STORAGE, "name": ""}), 422, "name")
    assert_error(await client.post(url, json={**STORAGE, "name": "n" * 256}), 422, "name")
    body = assert_error(await client.post(url, json={**STORAGE, "name": "data\n[ERROR] forged"}), 422, "name")
    assert "control characters" in body["message"]
    assert_error(await client.post(url, json={**STORAGE, "size_gb": 0}), 422, "size_gb")
    assert_error(await client.post(url, json={**STORAGE, "size_gb": 65537}), 422, "size_gb")
    body = assert_error(await client.post(url, json={**STORAGE, "region_id": "mars"}), 422, "region_id")
    assert "regions" in body["message"]
    assert_error(await client.post(url, json={"name": "x", "region_id": "local"}), 422, "size_gb")


async def test_grow_only(client: httpx.AsyncClient) -> None:
    storage_id = (await client.post("/gpus/v2/network-storages", json=STORAGE)).json()["id"]
    url = f"/gpus/v2/network-storages/{storage_id}"
    grown = await client.put(url, json={"size_gb": 200})
    assert grown.status_code == 200, grown.text
    assert grown.json() == {}
    assert (await client.get(url)).json()["size_gb"] == 200
    body = assert_error(await client.put(url, json={"size_gb": 150}), 422, "size_gb")
    assert "200" in body["message"]
    assert (await client.get(url)).json()["size_gb"] == 200
    assert (await client.put(url, json={"size_gb": 200})).status_code == 200


async def test_other_org_gets_404(harness: Harness, client: httpx.AsyncClient) -> None:
    storage_id = (await client.post("/gpus/v2/network-storages", json=STORAGE)).json()["id"]
    url = f"/gpus/v2/network-storages/{storage_id}"
    other = await harness.new_client("globex")
    try:
        assert_error(await other.get(url), 404)
        assert_error(await other.put(url, json={"size_gb": 500}), 404)
        assert_error(await other.delete(url), 404)
        assert (await other.get("/gpus/v2/network-storages")).json() == {"data": []}
    finally:
        await other.aclose()
    assert (await client.get(url)).json()["status"] == "available"


async def test_delete_refused_while_mounted(harness: Harness, client: httpx.AsyncClient) -> None:
    storage_id = (await client.post("/gpus/v2/network-storages", json=STORAGE)).json()["id"]
    other_id = (await client.post("/gpus/v2/network-storages", json={**STORAGE, "name": "b"})).json()["id"]
    url = f"/gpus/v2/network-storages/{storage_id}"
    container_id = await add_container(harness, spec=mounting(other_id, storage_id))

    assert (await client.get(url)).json()["mounted_by"] == [container_id]
    listed = {s["id"]: s["mounted_by"] for s in (await client.get("/gpus/v2/network-storages")).json()["data"]}
    assert listed == {storage_id: [container_id], other_id: [container_id]}
    body = assert_error(await client.delete(url), 409)
    assert container_id in body["message"]
    assert (await client.get(url)).json()["status"] == "available"

    async with harness.context.db.write() as session:
        await session.execute(
            update(ContainerModel).where(ContainerModel.id == container_id).values(desired=DesiredState.DELETED)
        )
    assert (await client.get(url)).json()["mounted_by"] == []
    woken: list[str] = []
    harness.context.waker = woken.append
    deleted = await client.delete(url)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {}
    assert woken == ["network_storages"]  # the reconciler is asked to finish the deletion now
    assert (await client.get(url)).json()["status"] == "deleting"
    assert (await client.delete(url)).status_code == 200  # asking again changes nothing
    assert_error(await client.put(url, json={"size_gb": 500}), 409)

    async with harness.context.db.read() as session:
        row = await session.get(NetworkStorageModel, storage_id)
        assert row is not None
        assert row.status == NetworkStorageStatus.DELETING


async def container_mounting(client: httpx.AsyncClient, storage_id: str) -> str:
    """A container created through the API with the storage at /data; its id."""
    template = {"name": "t", "path": "localhost/busybox:latest"}
    template_id = (await client.post("/api/v1/templates", json=template)).json()["id"]
    created = await client.post(
        "/api/v1/containers",
        json={
            "count": 1,
            "idc": "local",
            "product": "cpu.small",
            "name": "trainer",
            "templateId": template_id,
            "storages": [{"containerPath": "/data", "id": storage_id}],
        },
    )
    assert created.status_code == 200, created.text
    container_id: str = created.json()[0]["id"]
    return container_id


async def test_a_container_created_through_the_api_holds_its_storage(client: httpx.AsyncClient) -> None:
    storage_id = (await client.post("/gpus/v2/network-storages", json=STORAGE)).json()["id"]
    container_id = await container_mounting(client, storage_id)

    url = f"/gpus/v2/network-storages/{storage_id}"
    assert (await client.get(url)).json()["mounted_by"] == [container_id]
    assert_error(await client.delete(url), 409)

    assert (await client.delete(f"/api/v1/containers/{container_id}")).status_code == 200
    assert (await client.get(url)).json()["mounted_by"] == []
    assert (await client.delete(url)).status_code == 200


async def test_delete_refused_while_an_endpoints_workers_mount_it(client: httpx.AsyncClient) -> None:
    storage_id = (await client.post("/gpus/v2/network-storages", json=STORAGE)).json()["id"]
    url = f"/gpus/v2/network-storages/{storage_id}"
    container_id = await container_mounting(client, storage_id)
    volume = {"id": storage_id, "type": "network", "size": 10, "mount_point": "/data"}
    endpoint_id = await make_endpoint(client, volumes=[volume])

    assert (await client.get(url)).json()["mounted_by"] == [container_id, endpoint_id]
    body = assert_error(await client.delete(url), 409)
    assert body["message"] == (
        f"network storage {storage_id} is mounted by containers {container_id} and endpoints {endpoint_id}; "
        "delete them or remove the storage from them first"
    )
    assert (await client.delete(f"/api/v1/containers/{container_id}")).status_code == 200
    body = assert_error(await client.delete(url), 409)
    assert body["message"].startswith(f"network storage {storage_id} is mounted by endpoints {endpoint_id};")
    assert (await client.get(url)).json()["status"] == "available"

    assert (await client.delete(f"/gpus/v2/endpoints/{endpoint_id}")).status_code == 200
    assert (await client.get(url)).json()["mounted_by"] == []
    assert (await client.delete(url)).status_code == 200
