"""`/api/v1/containers` over a real database: create and its validation, the seed's exact GET shape, list,
tenancy, and the GPU-product rules with a simulated inventory."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update

from dockyard.config import Settings
from dockyard.core.inputs import USER_SDK_SWITCHES
from dockyard.core.workload import WorkloadSpec
from dockyard.db.models import ContainerModel, IdcModel, NetworkStorageModel
from dockyard.services import keys
from tests.conftest import Harness
from tests.core.test_inputs import BAD_MOUNT_PATHS, GOOD_MOUNT_PATHS, RESERVED_ENVS

TEMPLATE = {
    "name": "web",
    "path": "localhost/busybox:latest",
    "command": "httpd -f -p 8080",
    "envs": [{"name": "API_TOKEN", "value": "tok-0123456789abcdef"}, {"name": "MODE", "value": "template"}],
    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
}

# Seed 003: GMI's GET /api/v1/containers/{id} example, verbatim.
SEED_003: dict[str, Any] = {
    "reason": "<string>",
    "status": "unknown",
    "storages": [{"containerPath": "/workspace", "id": "550e8400-e29b-41d4-a716-446655440000"}],
    "idc": "<string>",
    "product": "<string>",
    "name": "LLM training",
    "templateId": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
    "createdAt": "2023-11-07T05:31:56Z",
    "id": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
    "inboundIP": {"ipAddress": "<string>", "status": "ready"},
    "modifiedAt": "2023-11-07T05:31:56Z",
    "orgId": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
    "outboundIP": {"ipAddress": "<string>", "status": "ready"},
    "publicIP": {"ipAddress": "<string>", "status": "ready"},
    "args": [],
    "command": "",
    "envs": [{"name": "access_token", "value": "kalsk113=="}],
    "ports": [],
    "sshKeyIdList": ["3c90c3cc-0d44-4b50-8888-8dd25736052a"],
}

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPTg7mTxcZXUXgGIMuYGybGhxe0T0kY+XH1HoJtYtjQq me@laptop"


async def make_template(client: httpx.AsyncClient, **overrides: Any) -> str:
    answer = await client.post("/api/v1/templates", json={**TEMPLATE, **overrides})
    assert answer.status_code == 200, answer.text
    template_id: str = answer.json()["id"]
    return template_id


def container_body(template_id: str, **overrides: Any) -> dict[str, Any]:
    return {"count": 1, "idc": "local", "product": "cpu.small", "name": "box", "templateId": template_id, **overrides}


async def create_one(client: httpx.AsyncClient, template_id: str, **overrides: Any) -> str:
    answer = await client.post("/api/v1/containers", json=container_body(template_id, **overrides))
    assert answer.status_code == 200, answer.text
    container_id: str = answer.json()[0]["id"]
    return container_id


async def add_storage(harness: Harness, org: str, idc: str = "local") -> str:
    async with harness.context.db.write() as session:
        org_row = await keys.get_or_create_org(session, org)
        if await session.get(IdcModel, idc) is None:
            session.add(IdcModel(id=idc, name=idc))
            await session.flush()
        row = NetworkStorageModel(org_id=org_row.id, name="data", idc_id=idc, size_gb=10)
        session.add(row)
        await session.flush()
        return row.id


async def container_row(harness: Harness, container_id: str) -> ContainerModel:
    async with harness.context.db.read_session() as session:
        row = await session.get(ContainerModel, container_id)
        assert row is not None
        return row


def assert_same_shape(expected: Any, actual: Any, where: str = "$") -> None:
    """Same keys and the same JSON types, recursively (lists compared through their first items)."""
    assert type(actual) is type(expected), f"{where}: {type(actual).__name__} instead of {type(expected).__name__}"
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{where}: keys differ by {set(actual) ^ set(expected)}"
        for key in expected:
            assert_same_shape(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list) and expected:
        assert actual, f"{where}: empty where the seed has items"
        assert_same_shape(expected[0], actual[0], f"{where}[0]")


def field_of(answer: httpx.Response) -> str:
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["reason"] == "INVALID_ARGUMENT"
    field: str = body["details"][0]["field"]
    assert field in body["message"]
    return field


async def test_create_records_desired_state_and_overlays_the_template(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    woken: list[str] = []
    harness.context.waker = woken.append
    template_id = await make_template(client)
    key_id = (await client.post("/api/v1/ssh-keys", json={"name": "me", "publicKey": ED25519})).json()["id"]
    storage_id = await add_storage(harness, "acme")
    body = container_body(
        template_id,
        args=["--verbose"],
        envs=[{"name": "MODE", "value": "request"}, {"name": "EXTRA", "value": "1"}],
        sshKeyIdList=[key_id],
        storages=[{"containerPath": "/workspace", "id": storage_id}],
    )
    answer = await client.post("/api/v1/containers", json=body)
    assert answer.status_code == 200, answer.text
    [created] = answer.json()
    assert set(created) == {"id"}
    assert woken == ["containers"]

    row = await container_row(harness, created["id"])
    assert (row.status, row.desired, row.generation) == ("creating", "running", 1)
    spec = WorkloadSpec.model_validate(row.spec)
    assert spec.image == "localhost/busybox:latest"
    assert spec.command == ["httpd", "-f", "-p", "8080"]  # empty request command keeps the template's
    assert spec.args == ["--verbose"]
    box = harness.context.box
    assert {e.name: box.decrypt(e.value) for e in spec.envs} == {
        "API_TOKEN": "tok-0123456789abcdef",
        "MODE": "request",
        "EXTRA": "1",
    }
    assert all(e.value.startswith("enc:v1:") for e in spec.envs)
    assert [(v.storage_id, v.mount_path) for v in spec.volumes] == [(storage_id, "/workspace")]
    assert spec.gpu_count == 0
    assert row.ssh_key_ids == [key_id]

    got = (await client.get(f"/api/v1/containers/{created['id']}")).json()
    assert got["status"] == "creating"
    assert got["command"] == "httpd -f -p 8080"
    assert got["envs"] == [
        {"name": "API_TOKEN", "value": "to******"},
        {"name": "MODE", "value": "******"},
        {"name": "EXTRA", "value": "******"},
    ]
    assert got["ports"] == [{"containerPort": 8080, "port": None, "protocol": "TCP"}]
    assert got["publicIP"] == {"ipAddress": "", "status": "pending"}
    assert got["storages"] == [{"containerPath": "/workspace", "id": storage_id}]


async def test_request_command_and_ports_replace_the_templates(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    container_id = await create_one(
        client, template_id, command="sleep 'a b'", ports=[{"containerPort": 22, "port": 42022, "protocol": "TCP"}]
    )
    spec = WorkloadSpec.model_validate((await container_row(harness, container_id)).spec)
    assert spec.command == ["sleep", "a b"]
    assert [(p.container_port, p.host_port) for p in spec.ports] == [(22, 42022)]


async def test_count_names_containers_with_suffixes(client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    answer = await client.post("/api/v1/containers", json=container_body(template_id, count=3, name="worker"))
    assert answer.status_code == 200, answer.text
    ids = [item["id"] for item in answer.json()]
    assert len(set(ids)) == 3
    names = {(await client.get(f"/api/v1/containers/{i}")).json()["name"] for i in ids}
    assert names == {"worker-1", "worker-2", "worker-3"}


async def test_get_has_exactly_the_seed_shape(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client, ports=[])
    key_id = (await client.post("/api/v1/ssh-keys", json={"name": "me", "publicKey": ED25519})).json()["id"]
    storage_id = await add_storage(harness, "acme")
    container_id = await create_one(
        client,
        template_id,
        name="LLM training",
        sshKeyIdList=[key_id],
        storages=[{"containerPath": "/workspace", "id": storage_id}],
    )
    answer = await client.get(f"/api/v1/containers/{container_id}")
    assert answer.status_code == 200
    got = answer.json()
    assert_same_shape(SEED_003, got)
    assert got["id"] == container_id
    assert got["templateId"] == template_id
    assert got["idc"] == "local"
    assert got["product"] == "cpu.small"
    assert got["sshKeyIdList"] == [key_id]
    assert got["createdAt"].endswith("Z")
    assert got["ports"] == []
    assert got["args"] == []
    assert got["inboundIP"] == {"ipAddress": "", "status": "none"}  # no ports: nothing to reach
    assert answer.headers["ETag"] == '"1"'


async def test_running_container_reports_published_ports_and_address(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    async with harness.context.db.write() as session:
        row = await session.get(ContainerModel, container_id)
        assert row is not None
        row.status = "running"  # type: ignore[assignment]
        row.published_ports = [{"containerPort": 8080, "port": 31234, "protocol": "TCP"}]
    got = (await client.get(f"/api/v1/containers/{container_id}")).json()
    assert got["ports"] == [{"containerPort": 8080, "port": 31234, "protocol": "TCP"}]
    for key in ("inboundIP", "outboundIP", "publicIP"):
        assert got[key] == {"ipAddress": "127.0.0.1", "status": "ready"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 101}, "count"),
        ({"idc": "bad idc"}, "idc"),
        ({"idc": "x" * 51}, "idc"),
        ({"product": "bad/product"}, "product"),
        ({"name": "-starts-with-dash"}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"templateId": "not-a-uuid"}, "templateId"),
        ({"ports": [{"containerPort": 1}] * 6}, "ports"),
        ({"ports": [{"containerPort": 80, "protocol": "SCTP"}]}, "ports[0].protocol"),
        ({"sshKeyIdList": ["nope"]}, "sshKeyIdList[0]"),
        ({"envs": [{"name": "1BAD", "value": "x"}]}, "envs[0].name"),
        ({"storages": [{"containerPath": "relative", "id": "550e8400-e29b-41d4-a716-446655440000"}]}, None),
    ],
)
async def test_schema_validation_names_the_field(
    client: httpx.AsyncClient, overrides: dict[str, Any], field: str | None
) -> None:
    body = container_body("3c90c3cc-0d44-4b50-8888-8dd25736052a", **overrides)
    named = field_of(await client.post("/api/v1/containers", json=body))
    assert named == (field or "storages[0].containerPath")


async def test_missing_required_fields_are_named(client: httpx.AsyncClient) -> None:
    answer = await client.post("/api/v1/containers", json={"count": 1})
    assert answer.status_code == 422
    fields = {detail["field"] for detail in answer.json()["details"]}
    assert fields == {"idc", "product", "name", "templateId"}


async def test_database_validation_names_the_field(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    post = client.post

    async def field(**overrides: Any) -> tuple[str, str]:
        answer = await post("/api/v1/containers", json=container_body(template_id, **overrides))
        return field_of(answer), answer.json()["message"]

    assert (await field(idc="nowhere"))[0] == "idc"
    assert (await field(product="cpu.huge"))[0] == "product"
    named, message = await field(product="serverless.cpu")
    assert named == "product"
    assert "serverless" in message
    named, message = await field(templateId="3c90c3cc-0d44-4b50-8888-8dd25736052a")
    assert named == "templateId"
    assert "not found" in message
    assert (await field(sshKeyIdList=["3c90c3cc-0d44-4b50-8888-8dd25736052a"]))[0] == "sshKeyIdList[0]"
    unknown_storage = [{"containerPath": "/data", "id": "550e8400-e29b-41d4-a716-446655440000"}]
    assert (await field(storages=unknown_storage))[0] == "storages[0].id"
    elsewhere = await add_storage(harness, "acme", idc="far")
    named, message = await field(storages=[{"containerPath": "/data", "id": elsewhere}])
    assert named == "storages[0].id"
    assert "IDC far" in message
    here = await add_storage(harness, "acme")
    twice = [{"containerPath": "/data", "id": here}, {"containerPath": "/data/", "id": here}]
    assert (await field(storages=twice))[0] == "storages[1].containerPath"
    assert (await field(envs=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]))[0] == "envs"
    assert (await field(command="sh -c 'unclosed"))[0] == "command"

    async with harness.context.db.write() as session:
        idc = await session.get(IdcModel, "local")
        assert idc is not None
        idc.status = "maintenance"  # type: ignore[assignment]
    named, message = await field()
    assert named == "idc"
    assert "maintenance" in message
    async with harness.context.db.read_session() as session:
        assert list(await session.scalars(select(ContainerModel.id))) == []


async def test_fixed_host_port_is_one_containers(client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    fixed = [{"containerPort": 80, "port": 40080, "protocol": "TCP"}]
    first = await create_one(client, template_id, ports=fixed)
    answer = await client.post("/api/v1/containers", json=container_body(template_id, ports=fixed))
    assert field_of(answer) == "ports[0].port"
    assert first in answer.json()["message"]
    several = container_body(template_id, count=2, ports=[{"containerPort": 80, "port": 40081}])
    assert field_of(await client.post("/api/v1/containers", json=several)) == "ports[0].port"
    fixed_template = await make_template(client, ports=[{"containerPort": 80, "port": 40082}])
    from_template = await client.post("/api/v1/containers", json=container_body(fixed_template, count=2))
    assert field_of(from_template) == "templateId"
    assert "the template's ports fix a host port" in from_template.json()["message"]
    udp = await client.post(
        "/api/v1/containers",
        json=container_body(template_id, ports=[{"containerPort": 80, "port": 40080, "protocol": "UDP"}]),
    )
    assert udp.status_code == 200, udp.text
    assert (await client.delete(f"/api/v1/containers/{first}")).status_code == 200
    again = await client.post("/api/v1/containers", json=container_body(template_id, ports=fixed))
    assert again.status_code == 200, again.text  # a container being deleted no longer claims its port


async def test_list_pages_filters_and_orders_newest_first(client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    ids = [await create_one(client, template_id, name=f"job {i}") for i in range(5)]
    await create_one(client, template_id, name="other")
    first = (await client.get("/api/v1/containers", params={"page": 1, "pageSize": 2})).json()
    assert (first["total"], first["page"], first["pageSize"]) == (6, 1, 2)
    assert [item["name"] for item in first["items"]] == ["other", "job 4"]
    third = (await client.get("/api/v1/containers", params={"page": 3, "pageSize": 2})).json()
    assert [item["id"] for item in third["items"]] == [ids[1], ids[0]]
    named = (await client.get("/api/v1/containers", params={"name": "JOB"})).json()
    assert named["total"] == 5
    assert (await client.get("/api/v1/containers", params={"status": "running"})).json()["total"] == 0
    assert (await client.get("/api/v1/containers", params={"status": "creating"})).json()["total"] == 6
    assert field_of(await client.get("/api/v1/containers", params={"pageSize": 1001})) == "pageSize"
    assert field_of(await client.get("/api/v1/containers", params={"status": "sleeping"})) == "status"


async def test_list_at_ten_thousand_rows(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    row = await container_row(harness, container_id)
    async with harness.context.db.write() as session:
        await session.execute(
            insert(ContainerModel),
            [
                {
                    "id": f"00000000-0000-0000-0000-{n:012d}",
                    "org_id": row.org_id,
                    "member_id": row.member_id,
                    "name": f"bulk {n}",
                    "idc_id": "local",
                    "product_id": "cpu.small",
                    "template_id": template_id,
                    "command": "",
                    "spec": row.spec,
                    "ssh_key_ids": [],
                    "desired": "running",
                    "status": "creating",
                    "reason": "",
                    "created_at": row.created_at.replace(year=2020),
                    "modified_at": row.created_at,
                    "version": 1,
                    "generation": 1,
                    "restart_generation": 0,
                    "gpu_uuids": [],
                    "published_ports": [],
                    "observed_generation": 0,
                    "observed_restart_generation": 0,
                    "node_id": "",
                    "runtime_id": "",
                }
                for n in range(9_999)
            ],
        )
    page = (await client.get("/api/v1/containers", params={"page": 1, "pageSize": 1000})).json()
    assert page["total"] == 10_000
    assert len(page["items"]) == 1000
    assert page["items"][0]["id"] == container_id  # the newest, ahead of the bulk rows
    last = (await client.get("/api/v1/containers", params={"page": 10, "pageSize": 1000})).json()
    assert len(last["items"]) == 1000
    assert last["items"][-1]["id"] == "00000000-0000-0000-0000-000000000000"


async def test_other_org_sees_nothing(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    other = await harness.new_client("globex")
    try:
        url = f"/api/v1/containers/{container_id}"
        assert (await other.get(url)).status_code == 404
        assert (await other.get(url)).json()["reason"] == "NOT_FOUND"
        assert (await other.put(url, json={"name": "x", "templateId": template_id})).status_code == 404
        assert (await other.delete(url)).status_code == 404
        for action in ("start", "stop", "restart"):
            assert (await other.post(f"{url}/{action}")).status_code == 404
        assert (await other.get(f"{url}/logs")).status_code == 404
        assert (await other.get("/api/v1/containers")).json()["total"] == 0
        # Another organization's template, SSH key or storage is as unknown as a wrong id.
        answer = await other.post("/api/v1/containers", json=container_body(template_id))
        assert field_of(answer) == "templateId"
        key_id = (await client.post("/api/v1/ssh-keys", json={"name": "me", "publicKey": ED25519})).json()["id"]
        storage_id = await add_storage(harness, "acme")
        theirs = await make_template(other)
        answer = await other.post("/api/v1/containers", json=container_body(theirs, sshKeyIdList=[key_id]))
        assert field_of(answer) == "sshKeyIdList[0]"
        storages = [{"containerPath": "/data", "id": storage_id}]
        answer = await other.post("/api/v1/containers", json=container_body(theirs, storages=storages))
        assert field_of(answer) == "storages[0].id"
    finally:
        await other.aclose()
    assert (await client.get(f"/api/v1/containers/{container_id}")).status_code == 200


class TestGpuProducts:
    """With a declared simulated inventory of two H100s."""

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"simulated_gpus": "NVIDIA H100 80GB HBM3:2"})

    async def test_gpu_product_gets_its_gpu_count(self, harness: Harness, client: httpx.AsyncClient) -> None:
        template_id = await make_template(client)
        container_id = await create_one(client, template_id, product="gpu.h100.1x")
        assert WorkloadSpec.model_validate((await container_row(harness, container_id)).spec).gpu_count == 1

    async def test_more_gpus_than_the_idc_has_is_refused(self, client: httpx.AsyncClient) -> None:
        template_id = await make_template(client)
        answer = await client.post("/api/v1/containers", json=container_body(template_id, product="gpu.h100.8x"))
        assert field_of(answer) == "product"
        assert "needs 8 \N{MULTIPLICATION SIGN} H100 GPUs" in answer.json()["message"]


async def test_gpu_product_without_gpus_says_what_to_do(client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    answer = await client.post("/api/v1/containers", json=container_body(template_id, product="gpu.h100.1x"))
    assert field_of(answer) == "product"
    assert answer.json()["details"][0]["message"] == (
        "product gpu.h100.1x needs 1 \N{MULTIPLICATION SIGN} H100 GPU but IDC local has none; "
        "pick a CPU product (cpu.small) or declare a simulated inventory (DOCKYARD_SIMULATED_GPUS)"
    )


async def test_put_recreates_and_keeps_masked_secrets(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    container_id = await create_one(client, template_id, envs=[{"name": "DB_PASSWORD", "value": "hunter2-hunter2"}])
    got = (await client.get(f"/api/v1/containers/{container_id}")).json()
    assert {"name": "DB_PASSWORD", "value": "hu******"} in got["envs"]
    woken: list[str] = []
    harness.context.waker = woken.append
    got["name"] = "renamed"
    got["args"] = ["--again"]
    answer = await client.put(f"/api/v1/containers/{container_id}", json=got)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"id": container_id}
    assert woken == ["containers"]

    row = await container_row(harness, container_id)
    assert (row.name, row.generation, row.status) == ("renamed", 2, "creating")
    assert row.reason == "recreating with the new configuration; local data is lost, storages are kept"
    spec = WorkloadSpec.model_validate(row.spec)
    values = {e.name: harness.context.box.decrypt(e.value) for e in spec.envs}
    assert values == {"API_TOKEN": "tok-0123456789abcdef", "MODE": "template", "DB_PASSWORD": "hunter2-hunter2"}
    assert spec.args == ["--again"]
    assert spec.command == ["httpd", "-f", "-p", "8080"]


async def test_put_omitted_fields_keep_current_values(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    storage_id = await add_storage(harness, "acme")
    container_id = await create_one(
        client, template_id, command="sleep 60", storages=[{"containerPath": "/data", "id": storage_id}]
    )
    other_template = await make_template(client, path="localhost/other:1", envs=[], ports=[])
    answer = await client.put(f"/api/v1/containers/{container_id}", json={"name": "box", "templateId": other_template})
    assert answer.status_code == 200, answer.text
    spec = WorkloadSpec.model_validate((await container_row(harness, container_id)).spec)
    assert spec.image == "localhost/other:1"
    assert spec.command == ["sleep", "60"]
    assert [v.storage_id for v in spec.volumes] == [storage_id]
    assert {e.name for e in spec.envs} == {"API_TOKEN", "MODE"}
    cleared = await client.put(
        f"/api/v1/containers/{container_id}",
        json={"name": "box", "templateId": other_template, "storages": [], "ports": []},
    )
    assert cleared.status_code == 200, cleared.text
    spec = WorkloadSpec.model_validate((await container_row(harness, container_id)).spec)
    assert spec.volumes == []
    assert spec.ports == []


async def test_put_validation(client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    url = f"/api/v1/containers/{container_id}"
    assert field_of(await client.put(url, json={"templateId": template_id})) == "name"
    missing = await client.put(url, json={"name": "box", "templateId": "3c90c3cc-0d44-4b50-8888-8dd25736052a"})
    assert field_of(missing) == "templateId"
    assert (
        await client.put("/api/v1/containers/nope", json={"name": "b", "templateId": template_id})
    ).status_code == 404


async def test_if_match_and_etag(client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    url = f"/api/v1/containers/{container_id}"
    got = await client.get(url)
    etag = got.headers["ETag"]
    body = {"name": "box", "templateId": template_id}
    assert (await client.put(url, json=body, headers={"If-Match": etag})).status_code == 200
    new_etag = (await client.get(url)).headers["ETag"]
    assert new_etag != etag
    stale = await client.put(url, json=body, headers={"If-Match": etag})
    assert stale.status_code == 409
    assert stale.json()["reason"] == "CONFLICT"
    assert "GET it again" in stale.json()["message"]
    assert field_of(await client.put(url, json=body, headers={"If-Match": "yesterday"})) == "If-Match"
    superscript = "\N{SUPERSCRIPT TWO}".encode("latin-1")  # a digit to str.isdigit, not to int(): it was a 500
    assert field_of(await client.put(url, json=body, headers={"If-Match": superscript})) == "If-Match"
    assert (await client.put(url, json=body, headers={"If-Match": f"W/{new_etag}"})).status_code == 200


async def test_delete_then_actions_are_refused(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    url = f"/api/v1/containers/{container_id}"
    woken: list[str] = []
    harness.context.waker = woken.append
    first = await client.delete(url)
    assert (first.status_code, first.json()) == (200, {})
    assert (await client.delete(url)).status_code == 200  # twice is fine
    assert woken == ["containers", "containers"]
    row = await container_row(harness, container_id)
    assert (row.desired, row.status) == ("deleted", "terminating")
    assert (await client.get(url)).json()["status"] == "terminating"
    for action in ("start", "stop", "restart"):
        refused = await client.post(f"{url}/{action}")
        assert refused.status_code == 409
        assert "being deleted" in refused.json()["message"]
    assert (await client.put(url, json={"name": "box", "templateId": template_id})).status_code == 409


async def test_stop_start_restart_record_desired_state(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    url = f"/api/v1/containers/{container_id}"
    # Each answers the status it leads to, in progress (GMI's ContainerAction), not the status it found.
    stopped = await client.post(f"{url}/stop")
    assert stopped.status_code == 200
    assert stopped.json() == {"id": container_id, "status": "stopped", "reason": "stop requested; in progress"}
    row = await container_row(harness, container_id)
    assert (row.desired, row.status) == ("stopped", "creating")  # observed state is the reconciler's to write
    assert (await client.post(f"{url}/start")).json() == {
        "id": container_id,
        "status": "running",
        "reason": "start requested; in progress",
    }
    assert (await container_row(harness, container_id)).desired == "running"
    await client.post(f"{url}/stop")
    restarted = await client.post(f"{url}/restart")
    assert (restarted.json()["status"], restarted.json()["reason"]) == ("running", "restart requested; in progress")
    row = await container_row(harness, container_id)
    assert (row.desired, row.restart_generation) == ("running", 1)
    await client.post(f"{url}/restart")
    assert (await container_row(harness, container_id)).restart_generation == 2
    # A container already where the action leads is answered as it is.
    async with harness.context.db.write() as session:
        await session.execute(
            update(ContainerModel).where(ContainerModel.id == container_id).values(status="running", reason="up")
        )
    assert (await client.post(f"{url}/start")).json() == {"id": container_id, "status": "running", "reason": "up"}


def refused(answer: httpx.Response, field: str, says: str) -> None:
    assert field_of(answer) == field, answer.text
    assert says in answer.json()["details"][0]["message"], answer.text


async def test_unsafe_storage_paths_are_refused_on_create_and_update(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    """Podman's compatible API writes a mount as `--mount` CSV: a containerPath with a comma once mounted another
    organization's storage or the host's /etc. Only a strict path passes, on create and on update."""
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    storage_id = await add_storage(harness, "acme")
    for path, says in BAD_MOUNT_PATHS:
        storages = [{"containerPath": path, "id": storage_id}]
        created = await client.post("/api/v1/containers", json=container_body(template_id, storages=storages))
        refused(created, "storages[0].containerPath", says)
        update = {"name": "box", "templateId": template_id, "storages": storages}
        refused(await client.put(f"/api/v1/containers/{container_id}", json=update), "storages[0].containerPath", says)
    async with harness.context.db.read_session() as session:
        assert list(await session.scalars(select(ContainerModel.id))) == [container_id]
        row = await session.get(ContainerModel, container_id)
        assert row is not None
        assert row.spec["volumes"] == []

    storages = [{"containerPath": path, "id": storage_id} for path in GOOD_MOUNT_PATHS]
    accepted = await create_one(client, template_id, storages=storages)
    got = (await client.get(f"/api/v1/containers/{accepted}")).json()
    assert [s["containerPath"] for s in got["storages"]] == [path.rstrip("/") for path in GOOD_MOUNT_PATHS]


async def test_reserved_variables_are_refused_in_container_envs(client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    container_id = await create_one(client, template_id)
    for name in RESERVED_ENVS:
        envs = [{"name": name, "value": "all"}]
        refused(
            await client.post("/api/v1/containers", json=container_body(template_id, envs=envs)),
            "envs[0].name",
            f"{name} is reserved",
        )
        update = {"name": "box", "templateId": template_id, "envs": envs}
        refused(
            await client.put(f"/api/v1/containers/{container_id}", json=update), "envs[0].name", f"{name} is reserved"
        )
    switches = [{"name": name, "value": "true"} for name in sorted(USER_SDK_SWITCHES)]
    accepted = await create_one(client, template_id, envs=switches)
    got = (await client.get(f"/api/v1/containers/{accepted}")).json()
    assert set(USER_SDK_SWITCHES) <= {env["name"] for env in got["envs"]}


async def test_nul_in_commands_and_values_is_refused(client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    post = client.post
    refused(await post("/api/v1/containers", json=container_body(template_id, command="sleep\x001")), "command", "NUL")
    refused(await post("/api/v1/containers", json=container_body(template_id, args=["ok", "a\x00"])), "args[1]", "NUL")
    envs = [{"name": "A", "value": "x\x00y"}]
    refused(await post("/api/v1/containers", json=container_body(template_id, envs=envs)), "envs[0].value", "NUL")
    multiline = [{"name": "A", "value": "line one\nline 'two'; $(three)"}]
    assert (await post("/api/v1/containers", json=container_body(template_id, envs=multiline))).status_code == 200
