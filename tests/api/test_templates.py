"""`/api/v1/templates` over a real database: create, read, masked secrets, update, tenancy, validation."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.orm.exc import StaleDataError

from tests.api.test_admin import assert_error
from tests.conftest import Harness
from tests.core.test_inputs import BAD_IMAGES, GOOD_IMAGES, RESERVED_ENVS

TEMPLATE = {
    "name": "web",
    "path": "localhost/busybox:latest",
    "credential": {"username": "robot", "secret": "s3cret-registry-password"},
    "command": "httpd -f -p 8080",
    "args": ["-v"],
    "envs": [{"name": "API_TOKEN", "value": "tok-0123456789abcdef"}, {"name": "SHORT", "value": "abc"}],
    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
}


async def test_create_then_get_masks_secrets(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/v1/templates", json=TEMPLATE)
    assert created.status_code == 200, created.text
    template_id = created.json()["id"]

    got = (await client.get(f"/api/v1/templates/{template_id}")).json()
    assert got["path"] == "localhost/busybox:latest"
    assert got["command"] == "httpd -f -p 8080"
    assert got["credential"] == {"username": "robot", "secret": "s3******"}
    assert got["envs"] == [{"name": "API_TOKEN", "value": "to******"}, {"name": "SHORT", "value": "******"}]
    assert got["ports"] == [{"containerPort": 8080, "port": None, "protocol": "TCP"}]
    assert "s3cret-registry-password" not in created.text + str(got)


async def test_round_trip_of_masked_values_keeps_secrets(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = (await client.post("/api/v1/templates", json=TEMPLATE)).json()["id"]
    got = (await client.get(f"/api/v1/templates/{template_id}")).json()
    got["name"] = "web-2"
    updated = await client.put(f"/api/v1/templates/{template_id}", json=got)
    assert updated.status_code == 200, updated.text
    assert updated.json()["name"] == "web-2"

    from dockyard.core.workload import WorkloadSpec
    from dockyard.db.models import TemplateModel

    async with harness.context.db.read_session() as session:
        row = await session.get(TemplateModel, template_id)
        assert row is not None
        spec = WorkloadSpec.model_validate(row.spec)
    box = harness.context.box
    assert {e.name: box.decrypt(e.value) for e in spec.envs}["API_TOKEN"] == "tok-0123456789abcdef"
    assert spec.credential is not None
    assert box.decrypt(spec.credential.secret) == "s3cret-registry-password"
    assert spec.envs[0].value.startswith("enc:v1:")


async def test_other_org_gets_404(harness: Harness, client: httpx.AsyncClient) -> None:
    template_id = (await client.post("/api/v1/templates", json=TEMPLATE)).json()["id"]
    other = await harness.new_client("globex")
    try:
        answer = await other.get(f"/api/v1/templates/{template_id}")
        assert answer.status_code == 404
        assert answer.json()["reason"] == "NOT_FOUND"
        assert (await other.delete(f"/api/v1/templates/{template_id}")).status_code == 404
        assert (await other.get("/api/v1/templates")).json()["total"] == 0
    finally:
        await other.aclose()


async def test_validation_names_the_field(client: httpx.AsyncClient) -> None:
    bad = {**TEMPLATE, "ports": [{"containerPort": 70000}]}
    answer = await client.post("/api/v1/templates", json=bad)
    assert answer.status_code == 422
    body = answer.json()
    assert body["code"] == 422
    assert body["reason"] == "INVALID_ARGUMENT"
    assert body["details"][0]["field"] == "ports[0].containerPort"
    assert "ports[0].containerPort" in body["message"]

    dup = {**TEMPLATE, "envs": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}
    answer = await client.post("/api/v1/templates", json=dup)
    assert answer.status_code == 422
    assert answer.json()["details"][0]["field"] == "envs"


async def test_missing_or_wrong_key_is_401(harness: Harness) -> None:
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dockyard.test") as anonymous:
        assert (await anonymous.get("/api/v1/templates")).status_code == 401
        wrong = await anonymous.get("/api/v1/templates", headers={"Authorization": "Bearer dy_nope"})
        assert wrong.status_code == 401
        assert wrong.json()["reason"] == "UNAUTHENTICATED"


async def test_stale_update_is_409(harness: Harness, client: httpx.AsyncClient) -> None:
    from sqlalchemy import update

    from dockyard.db.models import TemplateModel

    template_id = (await client.post("/api/v1/templates", json=TEMPLATE)).json()["id"]
    db = harness.context.db
    async with db.write_session() as first:
        row = await first.get(TemplateModel, template_id)
        assert row is not None
        await first.commit()  # the read is over; the row object stays at the version it read
        async with db.write() as second:  # a concurrent writer commits in between
            await second.execute(
                update(TemplateModel).where(TemplateModel.id == template_id).values(version=TemplateModel.version + 1)
            )
        row.name = "lost-update"
        with pytest.raises(StaleDataError):
            await first.commit()


def refused(answer: httpx.Response, field: str, says: str) -> None:
    body = assert_error(answer, 422, field)
    assert says in body["details"][0]["message"], body


async def test_unsafe_images_names_variables_and_commands_are_refused(client: httpx.AsyncClient) -> None:
    """Create and update alike: an image must be a registry reference, a name one printable line, no variable
    Dockyard reserves, no NUL in a command."""
    template_id = (await client.post("/api/v1/templates", json=TEMPLATE)).json()["id"]
    url = f"/api/v1/templates/{template_id}"
    cases: list[tuple[dict[str, object], str, str]] = [
        *(({"path": image}, "path", says) for image, says in BAD_IMAGES),
        *(
            ({"envs": [{"name": name, "value": "all"}]}, "envs[0].name", f"{name} is reserved")
            for name in RESERVED_ENVS
        ),
        ({"name": "web\n[ERROR] forged log line"}, "name", "control characters"),
        ({"name": "\x1b[31mred"}, "name", "control characters"),
        ({"command": "sh\x00"}, "command", "NUL"),
        ({"args": ["\x00"]}, "args[0]", "NUL"),
        ({"envs": [{"name": "A", "value": "\x00"}]}, "envs[0].value", "NUL"),
    ]
    for change, field, says in cases:
        refused(await client.post("/api/v1/templates", json={**TEMPLATE, **change}), field, says)
        refused(await client.put(url, json={**TEMPLATE, **change}), field, says)
    assert (await client.get("/api/v1/templates")).json()["total"] == 1
    for image in GOOD_IMAGES:
        assert (await client.put(url, json={**TEMPLATE, "path": image})).status_code == 200, image
    assert (await client.get(url)).json()["path"] == GOOD_IMAGES[-1]
