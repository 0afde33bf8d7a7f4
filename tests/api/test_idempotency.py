"""`Idempotency-Key` on POST /api/v1/containers: replays, a different body, concurrent duplicates, expiry."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from dockyard.db.base import utcnow
from dockyard.db.models import ContainerModel, IdempotencyKeyModel
from tests.api.test_containers import container_body, make_template
from tests.conftest import Harness


async def count_containers(harness: Harness) -> int:
    async with harness.context.db.read_session() as session:
        return await session.scalar(select(func.count()).select_from(ContainerModel)) or 0


async def test_replay_answers_the_stored_answer(harness: Harness, client: httpx.AsyncClient) -> None:
    body = container_body(await make_template(client), count=2)
    headers = {"Idempotency-Key": "create-42"}
    first = await client.post("/api/v1/containers", json=body, headers=headers)
    assert first.status_code == 200, first.text
    again = await client.post("/api/v1/containers", json=body, headers=headers)
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await count_containers(harness) == 2
    # Without a key, or with another one, the same body creates again.
    assert (await client.post("/api/v1/containers", json=body)).status_code == 200
    assert (await client.post("/api/v1/containers", json=body, headers={"Idempotency-Key": "other"})).status_code == 200
    assert await count_containers(harness) == 6


async def test_same_key_different_body_is_422(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    headers = {"Idempotency-Key": "k1"}
    assert (
        await client.post("/api/v1/containers", json=container_body(template_id), headers=headers)
    ).status_code == 200
    changed = await client.post("/api/v1/containers", json=container_body(template_id, name="other"), headers=headers)
    assert changed.status_code == 422
    assert changed.json()["details"][0]["field"] == "Idempotency-Key"
    assert "new key" in changed.json()["message"]
    assert await count_containers(harness) == 1


async def test_key_is_per_organization(harness: Harness, client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "shared"}
    mine = await client.post("/api/v1/containers", json=container_body(await make_template(client)), headers=headers)
    other = await harness.new_client("globex")
    try:
        theirs = await other.post(
            "/api/v1/containers", json=container_body(await make_template(other)), headers=headers
        )
        assert theirs.status_code == 200, theirs.text
        assert theirs.json() != mine.json()
    finally:
        await other.aclose()
    assert await count_containers(harness) == 2


async def test_failed_request_does_not_consume_the_key(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = await make_template(client)
    headers = {"Idempotency-Key": "retry-me"}
    bad = await client.post("/api/v1/containers", json=container_body(template_id, idc="nowhere"), headers=headers)
    assert bad.status_code == 422
    fixed = await client.post("/api/v1/containers", json=container_body(template_id), headers=headers)
    assert fixed.status_code == 200, fixed.text
    assert await count_containers(harness) == 1


async def test_concurrent_duplicates_create_once(harness: Harness, client: httpx.AsyncClient) -> None:
    body = container_body(await make_template(client))
    headers = {"Idempotency-Key": "burst"}
    answers = await asyncio.gather(*(client.post("/api/v1/containers", json=body, headers=headers) for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    assert len({a.text for a in answers}) == 1
    assert await count_containers(harness) == 1


async def test_keys_expire_after_a_day(harness: Harness, client: httpx.AsyncClient) -> None:
    body = container_body(await make_template(client))
    headers = {"Idempotency-Key": "old"}
    first = await client.post("/api/v1/containers", json=body, headers=headers)
    async with harness.context.db.write() as session:
        await session.execute(update(IdempotencyKeyModel).values(created_at=utcnow() - timedelta(hours=25)))
    again = await client.post("/api/v1/containers", json=body, headers=headers)
    assert again.status_code == 200
    assert again.json() != first.json()
    assert "Idempotent-Replayed" not in again.headers
    assert await count_containers(harness) == 2
    async with harness.context.db.read_session() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyKeyModel)) == 1


async def test_key_length_is_checked(client: httpx.AsyncClient) -> None:
    body = container_body(await make_template(client))
    answer = await client.post("/api/v1/containers", json=body, headers={"Idempotency-Key": "k" * 256})
    assert answer.status_code == 422
    assert answer.json()["details"][0]["field"] == "Idempotency-Key"


PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGjSFBWWv9dI/i9RRd0VKh4rpe6tU5rOhw5h1o2b4uMh laptop"


@pytest.mark.parametrize(
    ("path", "body", "items_key"),
    [
        ("/api/v1/templates", {"name": "t", "path": "localhost/busybox:latest"}, "items"),
        ("/api/v1/ssh-keys", {"name": "k", "publicKey": PUBLIC_KEY}, None),  # a bare list
        ("/gpus/v2/network-storages", {"name": "s", "region_id": "local", "size_gb": 1}, "data"),
    ],
)
async def test_every_create_honours_the_key(
    client: httpx.AsyncClient, path: str, body: dict[str, object], items_key: str | None
) -> None:
    headers = {"Idempotency-Key": "create-once"}
    concurrent = await asyncio.gather(*(client.post(path, json=body, headers=headers) for _ in range(5)))
    assert {answer.status_code for answer in concurrent} == {200}
    assert len({answer.json()["id"] for answer in concurrent}) == 1
    assert sum(answer.headers.get("Idempotent-Replayed") == "true" for answer in concurrent) == 4

    listed = (await client.get(path)).json()
    assert len(listed[items_key] if items_key else listed) == 1

    changed = await client.post(path, json={**body, "name": "other"}, headers=headers)
    assert changed.status_code == 422
    assert changed.json()["details"][0]["field"] == "Idempotency-Key"
