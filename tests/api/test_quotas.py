"""Quotas over a real database (SQLite and PostgreSQL): what the attack found refused (1,000 `cpu.large`,
`min_replicas: 1000`, 1,280 TiB of storage), 50 parallel asks against a limit of 10 making exactly 10 for each kind
of resource, the refusal naming the limit, the use and the ask, and the operator's and the organization's views."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from dockyard.core.status import JobStatus
from dockyard.db.models import ContainerModel, EndpointModel, JobModel, NetworkStorageModel
from tests.api.test_admin import assert_error
from tests.api.test_endpoints import MINIMAL
from tests.api.test_jobs import make_endpoint
from tests.conftest import Harness

PARALLEL = 50
LIMIT = 10
STORAGE_URL = "/gpus/v2/network-storages"
# Every quota, in the order the answers list them.
QUOTA_NAMES = ["containers", "endpoints", "workers", "gpus", "vcpus", "memory_mb", "storage_gb", "queued_jobs"]


async def org_id_of(harness: Harness, name: str = "acme") -> str:
    answer = await harness.admin.get("/admin/v1/organizations")
    assert answer.status_code == 200, answer.text
    (org,) = [org for org in answer.json() if org["name"] == name]
    org_id: str = org["id"]
    return org_id


async def set_quotas(harness: Harness, **limits: int | None) -> dict[str, Any]:
    org_id = await org_id_of(harness)
    answer = await harness.admin.put(f"/admin/v1/organizations/{org_id}/quotas", json=limits)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def make_template(client: httpx.AsyncClient) -> str:
    answer = await client.post("/api/v1/templates", json={"name": "web", "path": "localhost/busybox:latest"})
    assert answer.status_code == 200, answer.text
    template_id: str = answer.json()["id"]
    return template_id


def container_body(template_id: str, product: str = "cpu.small", count: int = 1) -> dict[str, Any]:
    return {"count": count, "idc": "local", "product": product, "name": "box", "templateId": template_id}


async def count_rows(harness: Harness, model: Any, *where: Any) -> int:
    async with harness.context.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def refused_by(answer: httpx.Response, quota: str) -> dict[str, Any]:
    """The body of a refusal by the quota `quota`, which its details name."""
    body = assert_error(answer, 429)
    assert body["reason"] == "RESOURCE_EXHAUSTED"
    assert [detail["field"] for detail in body["details"]] == [quota], body
    return body


def split(answers: list[httpx.Response]) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """The answers that were accepted, and those refused by a quota; anything else fails the test."""
    accepted = [answer for answer in answers if answer.status_code == 200]
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(accepted) + len(refused) == len(answers), [a.text for a in answers if a.status_code not in (200, 429)]
    for answer in refused:
        assert answer.json()["reason"] == "RESOURCE_EXHAUSTED"
    return accepted, refused


async def test_the_attack_as_found_is_refused_by_the_default_quotas(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    """1,000 `cpu.large` (2,000 vCPU), an endpoint with `min_replicas: 1000`, 1,280 TiB of storage: each was
    accepted at once; the defaults a fresh install applies now refuse them, saying which quota and how far."""
    template_id = await make_template(client)
    answers = [
        await client.post("/api/v1/containers", json=container_body(template_id, "cpu.large", 100)) for _ in range(10)
    ]
    _, refused = split(answers)
    assert len(refused) == 10
    body = refused_by(refused[0], "vcpus")
    assert body["message"].startswith("quota: vCPUs 0 used + 200 asked > 128 allowed for organization acme;")
    assert await count_rows(harness, ContainerModel) == 0

    endpoint = {**MINIMAL, "worker_config": {"min_replicas": 1000, "max_replicas": 1000}}
    body = refused_by(await client.post("/gpus/v2/endpoints", json=endpoint), "workers")
    assert "endpoint workers 0 used + 1000 asked > 100 allowed" in body["message"]
    assert await count_rows(harness, EndpointModel) == 0

    huge = {"region_id": "local", "size_gb": 65536}
    storages = [await client.post(STORAGE_URL, json={**huge, "name": f"s{n}"}) for n in range(20)]
    _, refused = split(storages)
    assert len(refused) == 20
    body = refused_by(refused[0], "storage_gb")
    assert "network storage 0 GB used + 65536 GB asked > 10240 GB allowed" in body["message"]
    assert await count_rows(harness, NetworkStorageModel) == 0


async def test_the_refusal_names_the_limit_the_use_and_the_ask(harness: Harness, client: httpx.AsyncClient) -> None:
    quotas = await set_quotas(harness, vcpus=4)
    org_id = quotas["org_id"]
    template_id = await make_template(client)
    assert (await client.post("/api/v1/containers", json=container_body(template_id, "cpu.large"))).status_code == 200

    answer = await client.post("/api/v1/containers", json=container_body(template_id, "cpu.large", 2))
    body = refused_by(answer, "vcpus")
    assert body["reason"] == "RESOURCE_EXHAUSTED"
    assert body["message"] == (
        "quota: vCPUs 2 used + 4 asked > 4 allowed for organization acme; delete what you no longer need or ask the "
        f"operator to raise it (PUT /admin/v1/organizations/{org_id}/quotas)"
    )
    assert body["details"][0] | {"message": ""} == {"field": "vcpus", "message": "", "limit": 4, "used": 2, "asked": 4}
    # What fits still fits, and a container being deleted no longer counts.
    (one,) = (await client.post("/api/v1/containers", json=container_body(template_id, "cpu.large"))).json()
    refused_by(await client.post("/api/v1/containers", json=container_body(template_id)), "vcpus")
    assert (await client.delete(f"/api/v1/containers/{one['id']}")).status_code == 200
    assert (await client.post("/api/v1/containers", json=container_body(template_id))).status_code == 200


async def test_fifty_parallel_container_creates_against_a_limit_of_ten_make_ten(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    await set_quotas(harness, containers=LIMIT)
    template_id = await make_template(client)
    answers = await asyncio.gather(
        *(client.post("/api/v1/containers", json=container_body(template_id)) for _ in range(PARALLEL))
    )
    accepted, refused = split(list(answers))
    assert (len(accepted), len(refused)) == (LIMIT, PARALLEL - LIMIT)
    assert await count_rows(harness, ContainerModel) == LIMIT
    assert "containers 10 used + 1 asked > 10 allowed" in refused[0].json()["message"]


async def test_fifty_parallel_endpoint_creates_against_a_limit_of_ten_make_ten(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    await set_quotas(harness, endpoints=LIMIT)
    answers = await asyncio.gather(*(client.post("/gpus/v2/endpoints", json=MINIMAL) for _ in range(PARALLEL)))
    accepted, refused = split(list(answers))
    assert (len(accepted), len(refused)) == (LIMIT, PARALLEL - LIMIT)
    assert await count_rows(harness, EndpointModel) == LIMIT
    refused_by(refused[0], "endpoints")


async def test_fifty_parallel_storage_creates_against_room_for_ten_make_ten(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    await set_quotas(harness, storage_gb=LIMIT * 100)
    body = {"name": "data", "region_id": "local", "size_gb": 100}
    answers = await asyncio.gather(*(client.post(STORAGE_URL, json=body) for _ in range(PARALLEL)))
    accepted, _ = split(list(answers))
    assert len(accepted) == LIMIT
    assert await count_rows(harness, NetworkStorageModel) == LIMIT
    # Growing one is an ask too; shrinking is refused anyway.
    storage_id = accepted[0].json()["id"]
    refused_by(await client.put(f"{STORAGE_URL}/{storage_id}", json={"size_gb": 101}), "storage_gb")


@pytest.mark.parametrize("idempotent", [False, True], ids=["lean-batched", "idempotency-key"])
async def test_fifty_parallel_runs_against_a_queue_of_ten_queue_ten(
    harness: Harness, client: httpx.AsyncClient, idempotent: bool
) -> None:
    """`run` without a key takes the lean route's group commit (job_queue/inserts.py), with one the FastAPI
    route's own transaction: both admit exactly as many as the quota leaves."""
    endpoint_id = await make_endpoint(client)
    await set_quotas(harness, queued_jobs=LIMIT)

    async def run(number: int) -> httpx.Response:
        headers = {"Idempotency-Key": f"job-{number}"} if idempotent else {}
        return await client.post(f"/v2/{endpoint_id}/run", json={"input": {"n": number}}, headers=headers)

    accepted, refused = split(list(await asyncio.gather(*(run(number) for number in range(PARALLEL)))))
    assert (len(accepted), len(refused)) == (LIMIT, PARALLEL - LIMIT)
    assert await count_rows(harness, JobModel, JobModel.status == JobStatus.IN_QUEUE) == LIMIT
    body = refused_by(refused[0], "queued_jobs")
    assert "queued jobs 10 used + 1 asked > 10 allowed for organization acme" in body["message"]


async def test_min_replicas_is_admitted_at_create_and_put(harness: Harness, client: httpx.AsyncClient) -> None:
    await set_quotas(harness, workers=4)
    first = {**MINIMAL, "worker_config": {"min_replicas": 3, "max_replicas": 8}}
    assert (await client.post("/gpus/v2/endpoints", json=first)).status_code == 200
    second = {**MINIMAL, "worker_config": {"min_replicas": 2, "max_replicas": 2}}
    body = refused_by(await client.post("/gpus/v2/endpoints", json=second), "workers")
    assert "endpoint workers 3 used + 2 asked > 4 allowed" in body["message"]
    second["worker_config"] = {"min_replicas": 1, "max_replicas": 2}
    answer = await client.post("/gpus/v2/endpoints", json=second)
    assert answer.status_code == 200, answer.text
    endpoint_id = answer.json()["id"]
    # A PUT that asks for more than is left is refused and changes nothing; one that asks no more passes.
    raised = {"worker_config": {"min_replicas": 2, "max_replicas": 2}}
    refused_by(await client.put(f"/gpus/v2/endpoints/{endpoint_id}", json=raised), "workers")
    same = {"worker_config": {"min_replicas": 1, "max_replicas": 5}}
    assert (await client.put(f"/gpus/v2/endpoints/{endpoint_id}", json=same)).status_code == 200


async def test_the_operator_reads_and_sets_quotas(harness: Harness, client: httpx.AsyncClient) -> None:
    org_id = await org_id_of(harness)
    url = f"/admin/v1/organizations/{org_id}/quotas"
    template_id = await make_template(client)
    assert (await client.post("/api/v1/containers", json=container_body(template_id, "cpu.large"))).status_code == 200

    shown = (await harness.admin.get(url)).json()
    by_name = {quota["name"]: quota for quota in shown["quotas"]}
    assert shown["org_id"] == org_id
    assert list(by_name) == QUOTA_NAMES
    assert by_name["vcpus"] == {"name": "vcpus", "limit": 128, "used": 2.0, "default": True}
    assert by_name["memory_mb"]["used"] == 4096

    changed = (await harness.admin.put(url, json={"vcpus": 3, "containers": 0})).json()
    limits = {quota["name"]: (quota["limit"], quota["default"]) for quota in changed["quotas"]}
    assert limits["vcpus"] == (3, False)
    assert limits["containers"] == (0, False)
    assert limits["gpus"] == (8, True)
    # Left out keeps the limit; null returns to the default.
    changed = (await harness.admin.put(url, json={"containers": None})).json()
    limits = {quota["name"]: (quota["limit"], quota["default"]) for quota in changed["quotas"]}
    assert (limits["vcpus"], limits["containers"]) == ((3, False), (100, True))

    # The organization reads its own, with what it holds.
    own = (await client.get("/gpus/v2/quotas")).json()
    assert own == (await harness.admin.get(url)).json()

    assert_error(await harness.admin.put(url, json={"vcpus": -1}), 422, "vcpus")
    assert_error(await harness.admin.get("/admin/v1/organizations/nope/quotas"), 404)
    assert_error(await client.get(url), 403)
    assert_error(await client.put(url, json={"vcpus": 1000}), 403)
