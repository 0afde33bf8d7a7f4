"""The OpenAPI document and the pages that browse it: every operation described, each family's credentials
declared, the gateway's route present, and `/docs` and `/redoc` loading nothing from outside the server."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.openapi import ASSETS_URL, GATEWAY_METHODS, GATEWAY_PATH, SECURITY_SCHEMES

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def _offline_app() -> Any:
    # Building the app and its document touches no database; only the lifespan would.
    return create_app(
        Settings(
            database_url="sqlite+aiosqlite:///:memory:",
            secret_key=Fernet.generate_key().decode(),
            engine_url="unix:///nonexistent.sock",
        )
    )


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    spec: dict[str, Any] = _offline_app().openapi()
    return spec


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_every_operation_has_a_summary_and_a_description(document: dict[str, Any]) -> None:
    operations = _operations(document)
    assert len(operations) > 80
    bare = [
        f"{method.upper()} {path}"
        for method, path, operation in operations
        if not operation.get("summary", "").strip() or not operation.get("description", "").strip()
    ]
    assert bare == [], "give each route a summary and a docstring (FastAPI makes it the description)"


def test_every_operation_declares_the_credentials_it_takes(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"] == SECURITY_SCHEMES
    assert all(scheme == {**scheme, "type": "http", "scheme": "bearer"} for scheme in SECURITY_SCHEMES.values())
    security = {(method, path): operation.get("security") for method, path, operation in _operations(document)}
    assert all(value is not None for value in security.values())
    assert security[("get", "/healthz")] == []
    assert security[("get", "/metrics")] == [{"metricsToken": []}, {"adminToken": []}]
    assert security[("post", "/admin/v1/organizations")] == [{"adminToken": []}]
    assert security[("get", "/gpus/v2/workers/{endpoint_id}/ping/{worker_id}")] == [{"workerKey": []}]
    for key in [("post", "/api/v1/containers"), ("post", "/v2/{endpoint_id}/run"), ("get", "/gpus/v2/endpoints")]:
        assert security[key] == [{"apiKey": []}]


def test_the_gateway_route_and_the_lean_job_routes_are_documented(document: dict[str, Any]) -> None:
    gateway = document["paths"][GATEWAY_PATH]
    assert sorted(gateway) == sorted(GATEWAY_METHODS)
    assert gateway["post"]["security"] == [{"apiKey": []}]
    assert {parameter["name"] for parameter in gateway["get"]["parameters"]} == {"endpoint_id", "path"}
    assert gateway["get"]["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert "ErrorBody" in document["components"]["schemas"]
    # `run` and `status` are served in front of FastAPI (api/jobs_lean.py) but documented by its routes.
    for prefix in ("/v1", "/v2"):
        assert "post" in document["paths"][f"{prefix}/{{endpoint_id}}/run"]
        assert "get" in document["paths"][f"{prefix}/{{endpoint_id}}/status/{{job_id}}"]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_offline_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://dockyard") as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_every_asset_from_the_server(client: httpx.AsyncClient, page: str) -> None:
    html = await client.get(page)
    assert html.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
    assert urls, html.text
    assert [url for url in urls if not url.startswith(ASSETS_URL)] == []
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    assert "cdn" not in html.text.lower()
    assert "googleapis" not in html.text


async def test_the_swagger_page_keeps_the_authorization_it_is_given(client: httpx.AsyncClient) -> None:
    html = (await client.get("/docs")).text
    assert '"persistAuthorization": true' in html
