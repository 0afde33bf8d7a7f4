"""`/admin/v1` over a real database: IDCs, products, nodes and simulated GPUs, and who may call it."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select, update

from dockyard.core.status import DesiredState, GpuSource
from dockyard.db.models import ContainerModel, NodeModel, OrganizationModel
from dockyard.services.bootstrap import bootstrap, local_node_id
from tests.conftest import Harness

IDC = {"id": "us-west-1", "name": "US West 1", "country": "US", "country_subdivision": "CA"}
PRODUCT = {
    "id": "gpu.l4.1x",
    "idc_id": "local",
    "category": "instance",
    "gpu_model": "NVIDIA L4",
    "gpu_count": 1,
    "gpu_memory_mb": 23034,
    "cpu": 4,
    "memory_mb": 16384,
    "pids_limit": 2048,
    "disk_gb": 50,
    "price_per_hour": 0.7,
    "product_line": "l4",
    "valid": True,
}


async def add_container(harness: Harness, **values: Any) -> str:
    """A container row as the containers service would leave it (the fields these routes read)."""
    async with harness.context.db.write() as session:
        org_id = await session.scalar(select(OrganizationModel.id).where(OrganizationModel.name == "acme"))
        defaults: dict[str, Any] = {
            "name": "c",
            "idc_id": "local",
            "product_id": "cpu.small",
            "template_id": "t",
            "spec": {"image": "localhost/busybox:latest"},
        }
        row = ContainerModel(org_id=org_id, **(defaults | values))
        session.add(row)
        await session.flush()
        return row.id


def assert_error(answer: httpx.Response, code: int, field: str | None = None) -> dict[str, Any]:
    assert answer.status_code == code, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == {"code", "reason", "message", "details"}
    assert body["code"] == code
    if field is not None:
        assert [d["field"] for d in body["details"]] == [field], body
        assert field in body["message"]
    return body


async def test_admin_routes_need_an_admin(harness: Harness, client: httpx.AsyncClient) -> None:
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dockyard.test") as anonymous:
        assert_error(await anonymous.get("/admin/v1/idcs"), 401)
    body = assert_error(await client.get("/admin/v1/nodes"), 403)
    assert "admin" in body["message"]
    assert_error(await client.post("/admin/v1/idcs", json=IDC), 403)
    assert [idc["id"] for idc in (await harness.admin.get("/admin/v1/idcs")).json()] == ["local"]


async def test_keys_of_an_unknown_organization_are_404(harness: Harness) -> None:
    body = assert_error(await harness.admin.post("/admin/v1/organizations/nope/keys", json={}), 404)
    assert "nope" in body["message"]


async def test_an_admin_key_of_an_organization_is_an_operator(harness: Harness) -> None:
    org = (await harness.admin.post("/admin/v1/organizations", json={"name": "ops"})).json()
    key = (await harness.admin.post(f"/admin/v1/organizations/{org['id']}/keys", json={"is_admin": True})).json()
    transport = httpx.ASGITransport(app=harness.app)
    headers = {"Authorization": f"Bearer {key['key']}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://dockyard.test", headers=headers) as ops:
        answer = await ops.get("/admin/v1/idcs")
    assert answer.status_code == 200
    assert [idc["id"] for idc in answer.json()] == ["local"]


async def test_organizations_and_keys(harness: Harness) -> None:
    admin = harness.admin
    org = (await admin.post("/admin/v1/organizations", json={"name": "initech"})).json()
    assert_error(await admin.post("/admin/v1/organizations", json={"name": "initech"}), 409)
    assert_error(await admin.post("/admin/v1/organizations", json={"name": "has space"}), 422, "name")
    assert [o["name"] for o in (await admin.get("/admin/v1/organizations")).json()] == ["acme", "initech"]

    created = (
        await admin.post(f"/admin/v1/organizations/{org['id']}/keys", json={"member": "alice", "name": "ci"})
    ).json()
    assert created["key"].startswith(created["prefix"])
    listed = (await admin.get(f"/admin/v1/organizations/{org['id']}/keys")).json()
    assert [(k["id"], k["name"], k["revoked_at"]) for k in listed] == [(created["id"], "ci", None)]
    assert "key" not in listed[0]

    transport = httpx.ASGITransport(app=harness.app)
    headers = {"Authorization": f"Bearer {created['key']}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://dockyard.test", headers=headers) as user:
        assert (await user.get("/gpus/v2/network-storages")).status_code == 200
        assert (await admin.delete(f"/admin/v1/keys/{created['id']}")).status_code == 200
        assert_error(await user.get("/gpus/v2/network-storages"), 401)
    assert_error(await admin.delete(f"/admin/v1/keys/{created['id']}"), 404)
    revoked = (await admin.get(f"/admin/v1/organizations/{org['id']}/keys")).json()[0]
    assert revoked["revoked_at"].endswith("Z")


async def test_idc_create_list_patch(harness: Harness) -> None:
    admin = harness.admin
    created = await admin.post("/admin/v1/idcs", json=IDC)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["status"] == "available"
    assert body["runtime_kind"] == "engine"
    assert body["created_at"].endswith("Z")
    # The new IDC's runtime is usable at once, without a server restart.
    assert harness.context.runtime_for("us-west-1") is not None

    assert_error(await admin.post("/admin/v1/idcs", json=IDC), 409)
    assert [idc["id"] for idc in (await admin.get("/admin/v1/idcs")).json()] == ["local", "us-west-1"]

    patched = await admin.patch("/admin/v1/idcs/us-west-1", json={"status": "maintenance"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "maintenance"
    assert patched.json()["name"] == "US West 1"
    renamed = (await admin.patch("/admin/v1/idcs/us-west-1", json={"name": "West"})).json()
    assert (renamed["name"], renamed["status"]) == ("West", "maintenance")

    assert_error(await admin.patch("/admin/v1/idcs/us-west-1", json={"status": "full"}), 422, "status")
    assert_error(await admin.patch("/admin/v1/idcs/nowhere", json={"name": "x"}), 404)


async def test_idc_validation_names_the_field(harness: Harness) -> None:
    admin = harness.admin
    body = assert_error(await admin.post("/admin/v1/idcs", json={**IDC, "runtime_kind": "kubernetes"}), 422)
    assert body["details"][0]["field"] == "runtime_kind"
    assert "engine" in body["message"]
    assert_error(await admin.post("/admin/v1/idcs", json={**IDC, "runtime_kind": "vm"}), 422, "runtime_kind")
    assert_error(await admin.post("/admin/v1/idcs", json={**IDC, "id": "has space"}), 422, "id")
    assert_error(await admin.post("/admin/v1/idcs", json={**IDC, "name": ""}), 422, "name")
    assert_error(await admin.post("/admin/v1/idcs", json={**IDC, "country": "x" * 65}), 422, "country")
    assert_error(await admin.post("/admin/v1/idcs", json={**IDC, "runtime_url": "/var/run/x.sock"}), 422, "runtime_url")
    remote = await admin.post("/admin/v1/idcs", json={**IDC, "runtime_url": "tcp://10.0.0.5:2375"})
    assert remote.json()["runtime_url"] == "tcp://10.0.0.5:2375"


async def test_an_engine_url_with_a_password_is_refused_without_echoing_it(harness: Harness) -> None:
    # As found by the log canary: such a URL was stored and answered as given, and the docker SDK's refusal of it
    # ("Invalid bind address format: tcp://robot:<password>@...") became the IDC's runtime error.
    for url in ("tcp://robot:pw-s3cret@10.0.0.5:2376", "ssh://robot:pw-s3cret@10.0.0.5", "https://:pw-s3cret@h:1"):
        answer = await harness.admin.post("/admin/v1/idcs", json={**IDC, "runtime_url": url})
        assert "no engine API takes" in assert_error(answer, 422, "runtime_url")["message"]
        assert "pw-s3cret" not in answer.text
    keyed = await harness.admin.post("/admin/v1/idcs", json={**IDC, "runtime_url": "ssh://robot@10.0.0.5"})
    assert keyed.status_code == 200, keyed.text


async def test_product_lifecycle(harness: Harness) -> None:
    admin = harness.admin
    created = await admin.post("/admin/v1/products", json=PRODUCT)
    assert created.status_code == 200, created.text
    assert created.json()["gpu_model"] == "NVIDIA L4"
    assert_error(await admin.post("/admin/v1/products", json=PRODUCT), 409)

    listed = {p["id"]: p for p in (await admin.get("/admin/v1/products")).json()}
    assert "cpu.small" in listed
    assert listed["gpu.l4.1x"]["price_per_hour"] == 0.7

    replacement = {k: v for k, v in PRODUCT.items() if k != "id"} | {"price_per_hour": 0.9, "valid": False}
    replaced = await admin.put("/admin/v1/products/gpu.l4.1x", json=replacement)
    assert replaced.status_code == 200, replaced.text
    got = (await admin.get("/admin/v1/products/gpu.l4.1x")).json()
    assert (got["price_per_hour"], got["valid"]) == (0.9, False)
    assert_error(await admin.put("/admin/v1/products/nope", json=replacement), 404)

    assert (await admin.delete("/admin/v1/products/gpu.l4.1x")).status_code == 200
    assert_error(await admin.get("/admin/v1/products/gpu.l4.1x"), 404)
    assert_error(await admin.delete("/admin/v1/products/gpu.l4.1x"), 404)


async def test_product_bounds_name_the_field(harness: Harness) -> None:
    admin = harness.admin
    for field, value in [
        ("gpu_count", 65),
        ("gpu_count", -1),
        ("cpu", 0),
        ("cpu", 2000),
        ("memory_mb", 1),
        ("pids_limit", 5),
        ("disk_gb", 0),
        ("price_per_hour", -1),
        ("gpu_memory_mb", 10**9),
        ("category", "vm"),
        ("id", "a/b"),
    ]:
        assert_error(await admin.post("/admin/v1/products", json={**PRODUCT, field: value}), 422, field)
    assert_error(await admin.post("/admin/v1/products", json={**PRODUCT, "idc_id": "mars"}), 422, "idc_id")
    no_model = {**PRODUCT, "gpu_model": ""}
    assert_error(await admin.post("/admin/v1/products", json=no_model), 422, "gpu_model")


async def test_product_in_use_cannot_be_deleted(harness: Harness) -> None:
    container_id = await add_container(harness, product_id="cpu.small")
    body = assert_error(await harness.admin.delete("/admin/v1/products/cpu.small"), 409)
    assert container_id in body["message"]

    async with harness.context.db.write() as session:
        await session.execute(
            update(ContainerModel).where(ContainerModel.id == container_id).values(desired=DesiredState.DELETED)
        )
    assert (await harness.admin.delete("/admin/v1/products/cpu.small")).status_code == 200


async def test_nodes_show_simulated_gpus_and_their_holders(harness: Harness) -> None:
    admin = harness.admin
    node_id = local_node_id()
    nodes = (await admin.get("/admin/v1/nodes")).json()
    assert [(n["id"], n["gpu_source"], n["simulated"], n["gpus"]) for n in nodes] == [(node_id, "none", False, [])]

    declared = await admin.put(
        f"/admin/v1/nodes/{node_id}/simulated-gpus",
        json={"model": "NVIDIA H100 80GB HBM3", "count": 2, "memory_mb": 81559, "cuda_version": "12.2"},
    )
    assert declared.status_code == 200, declared.text
    node = declared.json()
    assert (node["gpu_source"], node["simulated"], node["cuda_version"]) == ("simulated", True, "12.2")
    assert [(g["index"], g["simulated"], g["allocated_to"]) for g in node["gpus"]] == [(0, True, None), (1, True, None)]
    held = node["gpus"][1]["uuid"]

    container_id = await add_container(harness, node_id=node_id, gpu_uuids=[held])
    listed = (await admin.get("/admin/v1/nodes")).json()[0]
    assert listed["simulated"] is True
    assert [g["allocated_to"] for g in listed["gpus"]] == [None, container_id]

    shrink = await admin.put(f"/admin/v1/nodes/{node_id}/simulated-gpus", json={"count": 1})
    assert held in assert_error(shrink, 409)["message"]
    assert_error(await admin.put(f"/admin/v1/nodes/{node_id}/simulated-gpus", json={"count": 0}), 409)

    # Declaring more keeps the held GPU under the same UUID.
    grown = (await admin.put(f"/admin/v1/nodes/{node_id}/simulated-gpus", json={"count": 4})).json()
    assert [g["uuid"] for g in grown["gpus"]][1] == held
    assert grown["gpus"][1]["allocated_to"] == container_id

    async with harness.context.db.write() as session:
        await session.execute(update(ContainerModel).values(gpu_uuids=[]))
    cleared = (await admin.put(f"/admin/v1/nodes/{node_id}/simulated-gpus", json={"count": 0})).json()
    assert (cleared["gpu_source"], cleared["simulated"], cleared["gpus"]) == ("none", False, [])


async def test_simulated_gpus_are_refused_on_real_gpus_and_validated(harness: Harness) -> None:
    admin = harness.admin
    node_id = local_node_id()
    url = f"/admin/v1/nodes/{node_id}/simulated-gpus"
    assert_error(await admin.put(url, json={"count": 65}), 422, "count")
    assert_error(await admin.put(url, json={"count": 1, "model": "a:b"}), 422, "model")
    assert_error(await admin.put(url, json={"count": 1, "driver_version": "new"}), 422, "driver_version")
    assert_error(await admin.put("/admin/v1/nodes/nowhere/simulated-gpus", json={"count": 1}), 404)

    async with harness.context.db.write() as session:
        await session.execute(update(NodeModel).values(gpu_source=GpuSource.NVML))
    body = assert_error(await admin.put(url, json={"count": 1}), 409)
    assert "NVML" in body["message"]


async def test_simulated_gpus_declared_through_the_api_survive_a_restart(harness: Harness) -> None:
    node_id = local_node_id()
    declared = await harness.admin.put(f"/admin/v1/nodes/{node_id}/simulated-gpus", json={"count": 2})
    assert declared.status_code == 200, declared.text
    before = sorted(gpu["uuid"] for gpu in declared.json()["gpus"])

    await bootstrap(harness.context.db, harness.context.settings)  # what a server start runs

    node = next(n for n in (await harness.admin.get("/admin/v1/nodes")).json() if n["id"] == node_id)
    assert node["gpu_source"] == "simulated"
    assert sorted(gpu["uuid"] for gpu in node["gpus"]) == before
