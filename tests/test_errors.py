"""Every 4xx/5xx answer has the one error body `{"code", "reason", "message", "details"}`, names the field on
a validation error, and never leaks a traceback; unknown request fields are ignored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.errors import Conflict, InvalidField, validation_details
from tests.conftest import Harness


def error_of(answer: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    assert answer.status_code == code, answer.text
    assert answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = answer.json()
    assert set(body) == {"code", "reason", "message", "details"}
    assert (body["code"], body["reason"]) == (code, reason)
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["details"], list)
    return body


async def test_401_says_how_to_authenticate(harness: Harness) -> None:
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dockyard.test") as anonymous:
        missing = error_of(await anonymous.get("/gpus/v2/network-storages"), 401, "UNAUTHENTICATED")
        assert "Authorization: Bearer" in missing["message"]
        wrong = await anonymous.get("/gpus/v2/network-storages", headers={"Authorization": "Bearer dy_wrong"})
        assert "create-key" in error_of(wrong, 401, "UNAUTHENTICATED")["message"]


async def test_404_for_unknown_route_and_unknown_object(client: httpx.AsyncClient) -> None:
    route = error_of(await client.get("/no/such/route"), 404, "NOT_FOUND")
    assert route["message"] == "no route GET /no/such/route; the API reference is at /docs"
    unknown = error_of(await client.get("/gpus/v2/network-storages/0000"), 404, "NOT_FOUND")
    assert "0000" in unknown["message"]


async def test_405_for_a_method_the_route_lacks(client: httpx.AsyncClient) -> None:
    answer = await client.delete("/gpus/v2/network-storages")
    body = error_of(answer, 405, "METHOD_NOT_ALLOWED")
    assert body["message"] == "DELETE is not allowed on /gpus/v2/network-storages; the API reference is at /docs"
    assert "allow" in answer.headers


async def test_422_names_the_field(client: httpx.AsyncClient) -> None:
    answer = await client.post("/gpus/v2/network-storages", json={"name": "x", "region_id": "local", "size_gb": "big"})
    body = error_of(answer, 422, "INVALID_ARGUMENT")
    assert [d["field"] for d in body["details"]] == ["size_gb"]
    assert body["message"].startswith("size_gb: ")

    not_json = await client.post(
        "/gpus/v2/network-storages", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    body = error_of(not_json, 422, "INVALID_ARGUMENT")
    assert [d["field"] for d in body["details"]] == ["body"]
    assert body["message"] == (
        "body: not valid JSON (Expecting property name enclosed in double quotes at character 1); send a JSON object"
    )


async def test_400_for_a_body_that_cannot_be_decoded(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/gpus/v2/network-storages", content=b'{"name": "\x80"}', headers={"Content-Type": "application/json"}
    )
    body = error_of(answer, 400, "BAD_REQUEST")
    assert body["message"] == "the request body could not be read; send a JSON object encoded as UTF-8"

    query = error_of(await client.get("/api/v1/templates?pageSize=0"), 422, "INVALID_ARGUMENT")
    assert query["details"][0]["field"] == "pageSize"


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient) -> None:
    body = {"name": "x", "region_id": "local", "size_gb": 1, "color": "blue", "labels": {"a": 1}}
    created = await client.post("/gpus/v2/network-storages", json=body)
    assert created.status_code == 200, created.text
    got = (await client.get(f"/gpus/v2/network-storages/{created.json()['id']}")).json()
    assert "color" not in got
    assert got["size_gb"] == 1


async def test_500_hides_the_traceback_and_logs_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'dockyard.db'}",
        run_reconcilers=False,
        engine_url="unix:///nonexistent.sock",
    )
    app = create_app(settings)

    @app.get("/test-only/boom")
    async def boom() -> None:
        raise RuntimeError("secret-detail-from-the-inside")

    # The server error middleware re-raises after answering, so that servers can log it; keep the answer.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    with caplog.at_level(logging.ERROR):
        async with httpx.AsyncClient(transport=transport, base_url="http://dockyard.test") as client:
            answer = await client.get("/test-only/boom")
    body = error_of(answer, 500, "INTERNAL")
    assert "server log" in body["message"]
    assert "secret-detail" not in answer.text
    assert "Traceback" not in answer.text
    assert "secret-detail-from-the-inside" in caplog.text


def test_service_errors_carry_their_field() -> None:
    error = InvalidField("size_gb", "storages only grow")
    assert (error.status_code, error.reason) == (422, "INVALID_ARGUMENT")
    assert error.message == "size_gb: storages only grow"
    assert error.details == [{"field": "size_gb", "message": "storages only grow"}]
    assert Conflict("x").status_code == 409


def test_validation_locations_become_dotted_field_names() -> None:
    errors = [
        {"loc": ("body", "ports", 0, "containerPort"), "msg": "Value error, too big"},
        {"loc": ("query", "pageSize"), "msg": "too small"},
        {"loc": ("body",), "msg": "Field required"},
    ]
    assert validation_details(errors) == [
        {"field": "ports[0].containerPort", "message": "too big"},
        {"field": "pageSize", "message": "too small"},
        {"field": "body", "message": "Field required"},
    ]
