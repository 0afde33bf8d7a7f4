"""`/gpus/v2/registry-auths` over a real database: create, read, password never answered, tenancy, delete,
and `resolve` for the image pull."""

from __future__ import annotations

import json
import time

import httpx

from dockyard.db.models import RegistryAuthModel
from dockyard.runtimes.base import RegistryAuth
from dockyard.services import registry_auths
from tests.api.test_admin import assert_error
from tests.conftest import Harness

PASSWORD = "hunter2-very-secret-token"
AUTH = {"name": "docker-hub", "username": "robot", "password": PASSWORD}
URL = "/gpus/v2/registry-auths"


async def test_create_get_list_never_answer_the_password(harness: Harness, client: httpx.AsyncClient) -> None:
    before = int(time.time())
    created = await client.post(URL, json={**AUTH, "unknown": "ignored"})
    assert created.status_code == 200, created.text
    auth_id = created.json()["id"]
    assert created.json() == {"id": auth_id}

    got = await client.get(f"{URL}/{auth_id}")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body == {"id": auth_id, "name": "docker-hub", "username": "robot", "created_at": body["created_at"]}
    assert isinstance(body["created_at"], int)
    assert before - 1 <= body["created_at"] <= int(time.time()) + 1

    second = (await client.post(URL, json={**AUTH, "name": "ghcr"})).json()["id"]
    listed = await client.get(URL)
    assert listed.status_code == 200
    assert sorted(a["id"] for a in listed.json()["data"]) == sorted([auth_id, second])
    for answer in (got, listed):
        # not even a masked hint of it
        assert "password" not in answer.text
        assert PASSWORD[:2] + "*" not in answer.text
        assert "hunter" not in answer.text

    async with harness.context.db.read() as session:
        row = await session.get(RegistryAuthModel, auth_id)
        assert row is not None
        assert PASSWORD not in row.password  # encrypted at rest
        assert harness.context.box.decrypt(row.password) == PASSWORD


async def test_validation_names_the_field(client: httpx.AsyncClient) -> None:
    for field, bad in (("name", ""), ("name", "n" * 256), ("username", ""), ("username", "u" * 256)):
        assert_error(await client.post(URL, json={**AUTH, field: bad}), 422, field)
    body = assert_error(await client.post(URL, json={**AUTH, "name": "hub\r\nforged"}), 422, "name")
    assert "control characters" in body["message"]
    assert_error(await client.post(URL, json={**AUTH, "password": ""}), 422, "password")
    assert_error(await client.post(URL, json={**AUTH, "password": "p" * 4097}), 422, "password")
    assert (await client.post(URL, json={**AUTH, "password": "p" * 4096})).status_code == 200
    for field in AUTH:
        missing = {k: v for k, v in AUTH.items() if k != field}
        assert_error(await client.post(URL, json=missing), 422, field)
    assert (await client.get(URL)).json()["data"][0]["name"] == "docker-hub"


async def test_a_rejected_password_is_not_echoed(client: httpx.AsyncClient) -> None:
    answer = await client.post(URL, json={**AUTH, "password": "s3cr3t" * 700})
    body = assert_error(answer, 422, "password")
    assert "s3cr3t" not in json.dumps(body)


async def test_idempotent_create(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "auth-1"}
    first = (await client.post(URL, json=AUTH, headers=headers)).json()["id"]
    again = await client.post(URL, json=AUTH, headers=headers)
    assert again.json() == {"id": first}
    assert_error(await client.post(URL, json={**AUTH, "password": "another"}, headers=headers), 422, "Idempotency-Key")
    assert [a["id"] for a in (await client.get(URL)).json()["data"]] == [first]


async def test_needs_a_key(harness: Harness) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=harness.app), base_url="http://t") as anonymous:
        assert_error(await anonymous.get(URL), 401)
        assert_error(await anonymous.post(URL, json=AUTH), 401)


async def test_other_org_gets_404(harness: Harness, client: httpx.AsyncClient) -> None:
    auth_id = (await client.post(URL, json=AUTH)).json()["id"]
    other = await harness.new_client("globex")
    try:
        assert_error(await other.get(f"{URL}/{auth_id}"), 404)
        assert_error(await other.delete(f"{URL}/{auth_id}"), 404)
        assert (await other.get(URL)).json() == {"data": []}
    finally:
        await other.aclose()
    assert (await client.get(f"{URL}/{auth_id}")).status_code == 200


async def test_delete(client: httpx.AsyncClient) -> None:
    auth_id = (await client.post(URL, json=AUTH)).json()["id"]
    kept = (await client.post(URL, json={**AUTH, "name": "kept"})).json()["id"]
    deleted = await client.delete(f"{URL}/{auth_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {}
    assert_error(await client.get(f"{URL}/{auth_id}"), 404)
    assert_error(await client.delete(f"{URL}/{auth_id}"), 404)
    assert [a["id"] for a in (await client.get(URL)).json()["data"]] == [kept]


async def test_resolve_decrypts_for_the_owner_only(harness: Harness, client: httpx.AsyncClient) -> None:
    auth_id = (await client.post(URL, json=AUTH)).json()["id"]
    async with harness.context.db.read() as session:
        row = await session.get(RegistryAuthModel, auth_id)
        assert row is not None
        org_id = row.org_id
        box = harness.context.box
        assert await registry_auths.resolve(session, org_id, auth_id, box=box) == RegistryAuth("robot", PASSWORD)
        assert await registry_auths.resolve(session, "another-org", auth_id, box=box) is None
        assert await registry_auths.resolve(session, org_id, "no-such-id", box=box) is None
