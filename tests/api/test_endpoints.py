"""`/gpus/v2/endpoints` over a real database: create, seed 000's shape, validation naming each field, cursor
paging, filters, tenancy, idempotency, the generation bump rules, delete."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from dockyard.core.status import WorkerStatus
from dockyard.db.models import EndpointModel, IdcModel, ProductModel, WorkerModel
from dockyard.secrets import mask
from tests.api.test_admin import assert_error
from tests.conftest import Harness
from tests.core.test_inputs import BAD_IMAGES, BAD_MOUNT_PATHS, BAD_URL_PATHS, GOOD_MOUNT_PATHS, RESERVED_ENVS

URL = "/gpus/v2/endpoints"
SECRET = "sk-0123456789abcdef"
MINIMAL: dict[str, Any] = {
    "type": "sync",
    "name": "chat",
    "product_id": "serverless.cpu",
    "image": "localhost/worker:1",
    "worker_config": {"max_replicas": 2},
}

# Seed 000's example answer, verbatim: the GET must give every one of these fields with the same JSON types.
SEED: dict[str, Any] = {
    "id": "endpoint-id",
    "type": "<string>",
    "name": "example-endpoint",
    "app_name": "example-app",
    "status": {"status": "running", "error": "", "message": ""},
    "url": "https://endpoint.example.com/endpoint-id",
    "product_id": "<string>",
    "worker_config": {
        "min_replicas": 0,
        "max_replicas": 2,
        "idle_timeout": 300,
        "max_concurrent_per_worker": 10,
        "gpu_num": 1,
        "rootfs_size_gb": 20,
        "min_cuda_version": "12.4",
        "request_timeout": 60,
    },
    "policy": {"type": "queue", "value": 100},
    "image": "registry.example.com/namespace/image:tag",
    "registry_auth_id": "registry-auth-id",
    "entrypoint": "",
    "command": "cargo run",
    "volumes": [{"id": "storage-id", "type": "network", "mount_point": "/data"}],
    "envs": [{"key": "ENV_NAME", "value": "ENV_VALUE"}],
    "ports": [8080],
    "workers": [
        {
            "id": "worker-id",
            "status": {"status": "ready", "error": "", "message": ""},
            "log": "https://logs.example.com/worker-id",
            "health": True,
            "drain": False,
        }
    ],
    "health_check": {"path": "/healthz", "port": 8080},
    "region_id": "region-id",
    "member_id": "member-id",
    "owner_id": "550e8400-e29b-41d4-a716-446655440000",
    "created_at": 1710000000,
}


def assert_same_shape(seed: Any, got: Any, where: str = "") -> None:
    """Same keys and the same JSON types at every level; lists compared element by element to the seed's first."""
    assert type(got) is type(seed), f"{where or 'body'}: {type(got).__name__} where the seed has {type(seed).__name__}"
    if isinstance(seed, dict):
        assert set(got) == set(seed), f"{where or 'body'}: keys {sorted(got)} != {sorted(seed)}"
        for key, value in seed.items():
            assert_same_shape(value, got[key], f"{where}.{key}" if where else key)
    elif isinstance(seed, list):
        assert got, f"{where}: empty where the seed has items"
        for index, item in enumerate(got):
            assert_same_shape(seed[0], item, f"{where}[{index}]")


async def create(client: httpx.AsyncClient, **fields: Any) -> str:
    answer = await client.post(URL, json={**MINIMAL, **fields})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"id"}
    endpoint_id: str = answer.json()["id"]
    return endpoint_id


async def get(client: httpx.AsyncClient, endpoint_id: str) -> dict[str, Any]:
    answer = await client.get(f"{URL}/{endpoint_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def new_storage(client: httpx.AsyncClient, region: str = "local") -> str:
    answer = await client.post("/gpus/v2/network-storages", json={"name": "data", "region_id": region, "size_gb": 10})
    assert answer.status_code == 200, answer.text
    storage_id: str = answer.json()["id"]
    return storage_id


async def new_registry_auth(client: httpx.AsyncClient) -> str:
    answer = await client.post("/gpus/v2/registry-auths", json={"name": "hub", "username": "u", "password": "p"})
    assert answer.status_code == 200, answer.text
    auth_id: str = answer.json()["id"]
    return auth_id


async def endpoint_row(harness: Harness, endpoint_id: str) -> EndpointModel:
    async with harness.context.db.read_session() as session:
        row = await session.get(EndpointModel, endpoint_id)
        assert row is not None
        return row


async def test_get_has_seed_000_shape(harness: Harness, client: httpx.AsyncClient) -> None:
    before = int(time.time())
    storage_id = await new_storage(client)
    auth_id = await new_registry_auth(client)
    endpoint_id = await create(
        client,
        type="async",
        app_name="example-app",
        registry_auth_id=auth_id,
        command="python -m server --port 8080",
        entrypoint="/bin/sh -c",
        worker_config={
            "min_replicas": 1,
            "max_replicas": 3,
            "idle_timeout": 300,
            "max_concurrent_per_worker": 10,
            "gpu_num": 0,
            "rootfs_size_gb": 30,
            "min_cuda_version": "12.4",
            "request_timeout": 90,
        },
        policy={"type": "queue", "value": 5},
        volumes=[{"id": storage_id, "type": "network", "size": 10, "mount_point": "/data/"}],
        envs=[{"key": "API_KEY", "value": SECRET}, {"key": "MODE", "value": "fast"}],
        ports=[8080, 9090],
        health_check={"path": "/healthz", "port": 9090},
    )
    org_id = (await endpoint_row(harness, endpoint_id)).org_id
    async with harness.context.db.write() as session:
        session.add(WorkerModel(endpoint_id=endpoint_id, org_id=org_id, generation=1, status=WorkerStatus.READY))
        session.add(
            WorkerModel(
                endpoint_id=endpoint_id,
                org_id=org_id,
                generation=1,
                status=WorkerStatus.FAILED,
                reason="health check failed",
                health=False,
                drain=True,
            )
        )

    body = await get(client, endpoint_id)
    # Every seed field with its type, and Dockyard's one addition: why its work waits (null when nothing does).
    blocking = body.pop("blocking")
    assert blocking is None or set(blocking) == {"code", "message", "since"}
    assert_same_shape(SEED, body)
    settings = harness.context.settings
    member_id = body["member_id"]
    assert member_id
    assert body["owner_id"]
    assert body["owner_id"] != member_id
    assert before - 1 <= body["created_at"] <= int(time.time()) + 1
    workers = body.pop("workers")
    assert body == {
        "id": endpoint_id,
        "type": "async",
        "name": "chat",
        "app_name": "example-app",
        "status": {"status": "deploying", "error": "", "message": body["status"]["message"]},
        "url": f"{settings.resolved_public_url}/v1/{endpoint_id}",
        "product_id": "serverless.cpu",
        "worker_config": {
            "min_replicas": 1,
            "max_replicas": 3,
            "idle_timeout": 300,
            "max_concurrent_per_worker": 10,
            "gpu_num": 0,
            "rootfs_size_gb": 30,
            "min_cuda_version": "12.4",
            "request_timeout": 90,
        },
        "policy": {"type": "queue", "value": 5},
        "image": "localhost/worker:1",
        "registry_auth_id": auth_id,
        "entrypoint": "/bin/sh -c",
        "command": "python -m server --port 8080",
        "volumes": [{"id": storage_id, "type": "network", "mount_point": "/data"}],
        "envs": [{"key": "API_KEY", "value": mask(SECRET)}, {"key": "MODE", "value": mask("fast")}],
        "ports": [8080, 9090],
        "health_check": {"path": "/healthz", "port": 9090},
        "region_id": "local",
        "member_id": member_id,
        "owner_id": body["owner_id"],
        "created_at": body["created_at"],
    }
    assert SECRET not in str(body)
    assert body["status"]["message"]
    public = settings.resolved_public_url
    assert [(w["status"], w["health"], w["drain"]) for w in workers] == [
        ({"status": "ready", "error": "", "message": ""}, False, False),
        ({"status": "failed", "error": "health check failed", "message": "health check failed"}, False, True),
    ]
    for worker in workers:
        assert worker["log"] == f"{public}/gpus/v2/endpoints/{endpoint_id}/workers/{worker['id']}/logs"

    row = await endpoint_row(harness, endpoint_id)
    assert (row.generation, row.desired_replicas, row.desired.value) == (1, 1, "running")
    assert row.spec["gpu_count"] == 0
    assert row.spec["registry_auth_id"] == auth_id
    assert row.spec["envs"][0]["value"] != SECRET  # encrypted at rest


async def test_a_health_check_without_a_port_probes_the_first_one(client: httpx.AsyncClient) -> None:
    endpoint_id = await create(client, ports=[7000, 8000], health_check={"path": "/ready"})
    assert (await get(client, endpoint_id))["health_check"] == {"path": "/ready", "port": 7000}


async def test_defaults(client: httpx.AsyncClient) -> None:
    endpoint_id = await create(client, ports=[7000, 8000])
    body = await get(client, endpoint_id)
    assert body["health_check"] == {"path": "/health", "port": 7000}
    assert body["policy"] == {"type": "concurrency", "value": 1}
    assert body["worker_config"] == {
        "min_replicas": 0,
        "max_replicas": 2,
        "idle_timeout": 60,
        "max_concurrent_per_worker": 1,
        "gpu_num": 0,
        "rootfs_size_gb": 20,
        "min_cuda_version": "",
        "request_timeout": 60,
    }
    assert (body["region_id"], body["registry_auth_id"], body["app_name"]) == ("local", "", "")
    assert (body["command"], body["entrypoint"], body["envs"], body["volumes"], body["workers"]) == ("", "", [], [], [])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "batch"}, "type"),
        ({"type": None}, "type"),
        ({"name": ""}, "name"),
        ({"name": "n" * 256}, "name"),
        ({"app_name": "a" * 256}, "app_name"),
        ({"product_id": ""}, "product_id"),
        ({"product_id": "p" * 256}, "product_id"),
        ({"image": ""}, "image"),
        ({"image": "i" * 501}, "image"),
        ({"image": "has space"}, "image"),
        ({"region_id": ""}, "region_id"),
        ({"worker_config": {}}, "worker_config.max_replicas"),
        ({"worker_config": {"max_replicas": -1}}, "worker_config.max_replicas"),
        ({"worker_config": {"max_replicas": 1001}}, "worker_config.max_replicas"),
        ({"worker_config": {"max_replicas": 2, "min_replicas": -1}}, "worker_config.min_replicas"),
        ({"worker_config": {"max_replicas": 2, "idle_timeout": 0}}, "worker_config.idle_timeout"),
        (
            {"worker_config": {"max_replicas": 2, "max_concurrent_per_worker": 0}},
            "worker_config.max_concurrent_per_worker",
        ),
        ({"worker_config": {"max_replicas": 2, "gpu_num": 9}}, "worker_config.gpu_num"),
        ({"worker_config": {"max_replicas": 2, "rootfs_size_gb": 0}}, "worker_config.rootfs_size_gb"),
        ({"worker_config": {"max_replicas": 2, "min_cuda_version": "twelve"}}, "worker_config.min_cuda_version"),
        ({"worker_config": {"max_replicas": 2, "request_timeout": 0}}, "worker_config.request_timeout"),
        ({"worker_config": {"max_replicas": 2, "request_timeout": 3601}}, "worker_config.request_timeout"),
        ({"policy": {"type": "random", "value": 1}}, "policy.type"),
        ({"policy": {"type": "queue", "value": 0}}, "policy.value"),
        ({"volumes": [{"id": "x", "type": "local", "mount_point": "/d"}]}, "volumes[0].type"),
        ({"volumes": [{"id": "x", "mount_point": "relative"}]}, "volumes[0].mount_point"),
        ({"envs": [{"key": "1BAD", "value": "v"}]}, "envs[0].key"),
        ({"ports": [0]}, "ports[0]"),
        ({"ports": [8080, 65536]}, "ports[1]"),
        ({"health_check": {"path": "healthz", "port": 80}}, "health_check.path"),
        ({"health_check": {"path": "/h", "port": 70000}}, "health_check.port"),
        ({"command": "unterminated 'quote"}, "command"),
        ({"entrypoint": "sh -c 'x"}, "entrypoint"),
    ],
)
async def test_request_validation_names_the_field(
    client: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    assert_error(await client.post(URL, json={**MINIMAL, **change}), 422, field)
    assert (await client.get(URL)).json()["data"] == []


async def test_database_validation_names_the_field(harness: Harness, client: httpx.AsyncClient) -> None:
    async with harness.context.db.write() as session:
        session.add(IdcModel(id="eu-1", name="Frankfurt"))
        await session.flush()
        session.add(ProductModel(id="eu.cpu", idc_id="eu-1", category="serverless"))
    other = await harness.new_client("globex")
    try:
        foreign_auth = await new_registry_auth(other)
        foreign_storage = await new_storage(other)
    finally:
        await other.aclose()
    eu_storage = await new_storage(client, "eu-1")
    storage = await new_storage(client)

    async def refused(field: str, **change: Any) -> str:
        message: str = assert_error(await client.post(URL, json={**MINIMAL, **change}), 422, field)["message"]
        return message

    assert "regions" in await refused("region_id", region_id="mars")
    assert "products" in await refused("product_id", product_id="nope")
    assert "region local" in await refused("product_id", product_id="eu.cpu")
    assert "serverless" in await refused("product_id", product_id="cpu.small")
    assert "cannot be ordered" in await refused("product_id", product_id="serverless.h100")
    assert "max_replicas" in await refused(
        "worker_config.min_replicas", worker_config={"min_replicas": 3, "max_replicas": 2}
    )
    assert "0 GPU" in await refused("worker_config.gpu_num", worker_config={"max_replicas": 1, "gpu_num": 1})
    assert "registry-auths" in await refused("registry_auth_id", registry_auth_id=foreign_auth)
    await refused("volumes[0].id", volumes=[{"id": foreign_storage, "mount_point": "/d"}])
    assert "eu-1" in await refused("volumes[0].id", volumes=[{"id": eu_storage, "mount_point": "/d"}])
    twice = [{"id": storage, "mount_point": "/d"}, {"id": storage, "mount_point": "/d/"}]
    await refused("volumes[1].mount_point", volumes=twice)
    await refused("ports", ports=[80, 80])
    await refused("envs", envs=[{"key": "A", "value": "1"}, {"key": "A", "value": "2"}])
    assert (await client.get(URL)).json()["data"] == []
    # The same product and storage in their own region are accepted.
    await create(client, region_id="eu-1", product_id="eu.cpu", volumes=[{"id": eu_storage, "mount_point": "/d"}])


async def test_cursor_pages_without_duplicates_or_gaps(harness: Harness, client: httpx.AsyncClient) -> None:
    # More endpoints than an organization may hold by default (20): the operator lifts its quota.
    (org,) = (await harness.admin.get("/admin/v1/organizations")).json()
    answer = await harness.admin.put(f"/admin/v1/organizations/{org['id']}/quotas", json={"endpoints": 45})
    assert answer.status_code == 200, answer.text
    created = [await create(client, name=f"endpoint-{n}") for n in range(45)]
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        answer = await client.get(URL, params=params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert set(page) == {"data", "next_cursor", "has_more"}
        pages += 1
        seen += [endpoint["id"] for endpoint in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] == ""
            break
        assert len(page["data"]) == 10
        cursor = page["next_cursor"]
        assert cursor
        assert len(cursor) <= 1024
    assert pages == 5
    assert len(seen) == len(set(seen)) == 45
    assert seen == list(reversed(created))  # newest first
    default = (await client.get(URL)).json()
    assert len(default["data"]) == 20
    assert default["has_more"] is True


async def test_list_query_validation(client: httpx.AsyncClient) -> None:
    for bad in ("not-a-cursor!", "bm9wZQ", "W10"):  # junk, base64 of "nope", base64 of "[]"
        assert_error(await client.get(URL, params={"cursor": bad}), 422, "cursor")
    assert_error(await client.get(URL, params={"cursor": "a" * 1025}), 422, "cursor")
    assert_error(await client.get(URL, params={"limit": 0}), 422, "limit")
    assert_error(await client.get(URL, params={"limit": 101}), 422, "limit")


async def test_keyword_and_member_filters(harness: Harness, client: httpx.AsyncClient) -> None:
    chat = await create(client, name="Chat-Large")
    image = await create(client, name="image-gen")
    async with harness.context.db.write() as session:
        await session.execute(update(EndpointModel).where(EndpointModel.id == image).values(member_id="m-2"))
    member = (await get(client, chat))["member_id"]

    async def ids(**params: str) -> list[str]:
        answer = await client.get(URL, params=params)
        assert answer.status_code == 200, answer.text
        return [endpoint["id"] for endpoint in answer.json()["data"]]

    assert await ids(keyword="chat") == [chat]
    assert await ids(keyword="%") == []
    assert await ids(member_ids="m-2") == [image]
    assert await ids(member_ids=f"{member}, ") == [chat]
    assert await ids(member_ids=f"m-2,{member}") == [image, chat]
    assert await ids(member_ids="m-2", keyword="chat") == []


async def test_another_org_sees_nothing(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await create(client)
    other = await harness.new_client("globex")
    try:
        url = f"{URL}/{endpoint_id}"
        assert_error(await other.get(url), 404)
        assert_error(await other.put(url, json={"image": "evil:1"}), 404)
        assert_error(await other.delete(url), 404)
        assert (await other.get(URL)).json()["data"] == []
    finally:
        await other.aclose()
    body = await get(client, endpoint_id)
    assert (body["image"], body["status"]["status"]) == ("localhost/worker:1", "deploying")
    assert_error(await client.get(f"{URL}/missing"), 404)


async def test_idempotent_create(harness: Harness, client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "create-chat-1"}
    first = await client.post(URL, json=MINIMAL, headers=headers)
    assert first.status_code == 200, first.text
    again = await client.post(URL, json=MINIMAL, headers=headers)
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert_error(await client.post(URL, json={**MINIMAL, "name": "other"}, headers=headers), 422, "Idempotency-Key")
    async with harness.context.db.read_session() as session:
        assert list(await session.scalars(select(EndpointModel.id))) == [first.json()["id"]]


async def test_generation_bumps_only_when_the_worker_template_changes(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    endpoint_id = await create(client, envs=[{"key": "TOKEN", "value": SECRET}], ports=[8080])
    url = f"{URL}/{endpoint_id}"

    async def put(body: dict[str, Any]) -> EndpointModel:
        answer = await client.put(url, json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {}
        return await endpoint_row(harness, endpoint_id)

    # Scaling, timeouts, policy, name: recorded, workers untouched.
    row = await put(
        {
            "name": "renamed",
            "worker_config": {"min_replicas": 1, "max_replicas": 5, "idle_timeout": 30, "request_timeout": 10},
            "policy": {"type": "queue", "value": 3},
        }
    )
    assert (row.generation, row.status.value, row.name, row.desired_replicas) == (1, "deploying", "renamed", 1)
    assert (row.worker_config["max_replicas"], row.policy) == (5, {"type": "queue", "value": 3})
    # Sending back what a GET answered (masked env) or the same values again changes no template.
    current = await get(client, endpoint_id)
    row = await put({"envs": current["envs"], "ports": [8080], "image": "localhost/worker:1"})
    assert row.generation == 1
    row = await put({"envs": [{"key": "TOKEN", "value": SECRET}]})
    assert row.generation == 1
    # type and app_name are not updatable: ignored like any unknown field.
    row = await put({"type": "async", "app_name": "changed"})
    assert (row.generation, row.type.value, row.app_name) == (1, "sync", "")

    template_changes: list[dict[str, Any]] = [
        {"image": "localhost/worker:2"},
        {"command": "serve --fast"},
        {"entrypoint": "/entry"},
        {"envs": [{"key": "TOKEN", "value": "rotated-secret-value"}]},
        {"ports": [8080, 9000]},
        {"health_check": {"path": "/ready", "port": 9000}},
        {"worker_config": {"min_replicas": 1, "max_replicas": 5, "rootfs_size_gb": 40}},
        {"worker_config": {"min_replicas": 1, "max_replicas": 5, "rootfs_size_gb": 40, "min_cuda_version": "12.1"}},
        {"volumes": [{"id": await new_storage(client), "mount_point": "/models"}]},
        {"registry_auth_id": await new_registry_auth(client)},
    ]
    for generation, change in enumerate(template_changes, start=2):
        row = await put(change)
        assert (row.generation, row.status.value) == (generation, "updating"), change
    row = await put({"ports": [7000]})
    assert row.spec["health_check"] == {"path": "/ready", "port": 7000}  # 9000 is gone: it follows the ports
    body = await get(client, endpoint_id)
    assert body["status"]["status"] == "updating"
    assert (body["image"], body["command"], body["entrypoint"]) == ("localhost/worker:2", "serve --fast", "/entry")
    assert body["envs"] == [{"key": "TOKEN", "value": mask("rotated-secret-value")}]
    assert body["volumes"][0]["mount_point"] == "/models"
    assert body["worker_config"]["min_cuda_version"] == "12.1"

    # Shrinking max_replicas pulls desired replicas down with it; a sent worker_config is merged onto the current
    # one, so the fields it leaves out keep their values, the template's among them.
    row = await put({"worker_config": {"min_replicas": 0, "max_replicas": 0}})
    assert (row.desired_replicas, row.generation) == (0, len(template_changes) + 2)
    assert (row.worker_config["rootfs_size_gb"], row.worker_config["min_cuda_version"]) == (40, "12.1")
    assert (row.worker_config["idle_timeout"], row.worker_config["request_timeout"]) == (30, 10)


async def test_a_partial_worker_config_keeps_what_it_leaves_out(client: httpx.AsyncClient) -> None:
    config = {"min_replicas": 1, "max_replicas": 3, "idle_timeout": 300, "max_concurrent_per_worker": 10}
    endpoint_id = await create(client, worker_config={**config, "request_timeout": 120, "rootfs_size_gb": 30})
    answer = await client.put(f"{URL}/{endpoint_id}", json={"worker_config": {"max_replicas": 5}})
    assert answer.status_code == 200, answer.text
    kept = (await get(client, endpoint_id))["worker_config"]
    assert kept == {**kept, **config, "max_replicas": 5, "request_timeout": 120, "rootfs_size_gb": 30}
    # The merged whole is checked across its fields, naming the one sent.
    too_few = await client.put(f"{URL}/{endpoint_id}", json={"worker_config": {"max_replicas": 0}})
    assert_error(too_few, 422, "worker_config.min_replicas")


async def test_update_validation(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await create(client)
    url = f"{URL}/{endpoint_id}"
    assert_error(await client.put(url, json={"worker_config": {"min_replicas": 1}}), 422, "worker_config.max_replicas")
    assert_error(
        await client.put(url, json={"worker_config": {"min_replicas": 3, "max_replicas": 1}}),
        422,
        "worker_config.min_replicas",
    )
    assert_error(await client.put(url, json={"name": ""}), 422, "name")
    assert_error(await client.put(url, json={"image": ""}), 422, "image")
    assert_error(await client.put(url, json={"product_id": "cpu.small"}), 422, "product_id")
    assert_error(await client.put(url, json={"region_id": "mars"}), 422, "region_id")
    assert_error(await client.put(url, json={"registry_auth_id": "missing"}), 422, "registry_auth_id")
    assert_error(
        await client.put(url, json={"volumes": [{"id": "missing", "mount_point": "/d"}]}), 422, "volumes[0].id"
    )
    row = await endpoint_row(harness, endpoint_id)
    assert (row.generation, row.name, row.spec["image"]) == (1, "chat", "localhost/worker:1")
    # Moving to another region takes a product and volumes of that region.
    async with harness.context.db.write() as session:
        session.add(IdcModel(id="eu-1", name="Frankfurt"))
        await session.flush()
        session.add(ProductModel(id="eu.cpu", idc_id="eu-1", category="serverless"))
    local = [{"id": await new_storage(client), "mount_point": "/d"}]
    assert (await client.put(url, json={"volumes": local})).status_code == 200
    assert_error(await client.put(url, json={"region_id": "eu-1"}), 422, "product_id")
    body = assert_error(await client.put(url, json={"region_id": "eu-1", "product_id": "eu.cpu"}), 422, "region_id")
    assert "volumes" in body["message"]
    eu = [{"id": await new_storage(client, "eu-1"), "mount_point": "/d"}]
    moved = await client.put(url, json={"region_id": "eu-1", "product_id": "eu.cpu", "volumes": eu})
    assert moved.status_code == 200, moved.text
    row = await endpoint_row(harness, endpoint_id)
    assert (row.idc_id, row.product_id, row.generation) == ("eu-1", "eu.cpu", 3)
    # An empty registry_auth_id clears the credential.
    auth_id = await new_registry_auth(client)
    assert (await client.put(url, json={"registry_auth_id": auth_id})).status_code == 200
    assert (await client.put(url, json={"registry_auth_id": ""})).status_code == 200
    assert (await get(client, endpoint_id))["registry_auth_id"] == ""


async def test_delete_marks_deleting(harness: Harness, client: httpx.AsyncClient) -> None:
    endpoint_id = await create(client)
    url = f"{URL}/{endpoint_id}"
    deleted = await client.delete(url)
    assert (deleted.status_code, deleted.json()) == (200, {})
    body = await get(client, endpoint_id)
    assert body["status"]["status"] == "deleting"
    assert body["status"]["message"]
    row = await endpoint_row(harness, endpoint_id)
    assert row.desired.value == "deleted"
    version = row.version
    assert (await client.delete(url)).status_code == 200
    assert (await endpoint_row(harness, endpoint_id)).version == version
    body = assert_error(await client.put(url, json={"image": "localhost/worker:2"}), 409)
    assert "being deleted" in body["message"]


async def test_writes_wake_the_endpoints_loop(harness: Harness, client: httpx.AsyncClient) -> None:
    woken: list[str] = []
    harness.context.waker = woken.append
    endpoint_id = await create(client)
    assert (await client.put(f"{URL}/{endpoint_id}", json={"image": "localhost/worker:2"})).status_code == 200
    assert (await client.delete(f"{URL}/{endpoint_id}")).status_code == 200
    assert woken == ["endpoints"] * 3
    await client.get(f"{URL}/{endpoint_id}")
    assert len(woken) == 3


async def test_unsafe_paths_images_variables_and_names_are_refused(harness: Harness, client: httpx.AsyncClient) -> None:
    """Create and update alike: mount points and the health-check path are strict paths, the image a registry
    reference, no variable Dockyard reserves, names one printable line, no NUL in a command."""
    endpoint_id = await create(client)
    url = f"{URL}/{endpoint_id}"
    storage = await new_storage(client)
    cases: list[tuple[dict[str, Any], str, str]] = [
        *(({"volumes": [{"id": storage, "mount_point": p}]}, "volumes[0].mount_point", s) for p, s in BAD_MOUNT_PATHS),
        *(({"health_check": {"path": p, "port": 80}}, "health_check.path", s) for p, s in BAD_URL_PATHS),
        *(({"image": image}, "image", says) for image, says in BAD_IMAGES),
        *(({"envs": [{"key": name, "value": "x"}]}, "envs[0].key", f"{name} is reserved") for name in RESERVED_ENVS),
        ({"envs": [{"key": "A", "value": "\x00"}]}, "envs[0].value", "NUL"),
        ({"entrypoint": "/bin/sh\x00"}, "entrypoint", "NUL"),
        ({"command": "serve\x00"}, "command", "NUL"),
        ({"name": "chat\r\nforged"}, "name", "control characters"),
    ]
    for change, field, says in cases:
        for answer in (await client.post(URL, json={**MINIMAL, **change}), await client.put(url, json=change)):
            body = assert_error(answer, 422, field)
            assert says in body["details"][0]["message"], body
    body = assert_error(await client.post(URL, json={**MINIMAL, "app_name": "app\x00"}), 422, "app_name")
    assert "control characters" in body["message"]
    assert [endpoint["id"] for endpoint in (await client.get(URL)).json()["data"]] == [endpoint_id]
    row = await endpoint_row(harness, endpoint_id)
    assert (row.generation, row.spec["volumes"], row.spec["image"]) == (1, [], "localhost/worker:1")

    switches = [{"key": "RUNPOD_SKIP_GPU_CHECK", "value": "false"}, {"key": "RUNPOD_DEBUG_LEVEL", "value": "DEBUG"}]
    volumes = [{"id": storage, "mount_point": path} for path in GOOD_MOUNT_PATHS]
    changed = {"envs": switches, "volumes": volumes, "health_check": {"path": "/ready?full=1", "port": 80}}
    assert (await client.put(url, json=changed)).status_code == 200
    got = await get(client, endpoint_id)
    assert [env["key"] for env in got["envs"]] == ["RUNPOD_SKIP_GPU_CHECK", "RUNPOD_DEBUG_LEVEL"]
    assert [volume["mount_point"] for volume in got["volumes"]] == [p.rstrip("/") for p in GOOD_MOUNT_PATHS]
    assert got["health_check"]["path"] == "/ready?full=1"
