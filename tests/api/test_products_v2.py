"""`GET /gpus/v2/products`: PPIO's product list, filtered by category and regions, judged like GMI's."""

from __future__ import annotations

import httpx
import pytest

from dockyard.config import Settings
from dockyard.db.models import IdcModel, ProductModel
from tests.api.test_admin import assert_error
from tests.conftest import Harness

URL = "/gpus/v2/products"


async def products(client: httpx.AsyncClient, **params: str) -> dict[str, dict[str, object]]:
    answer = await client.get(URL, params=params)
    assert answer.status_code == 200, answer.text
    return {p["id"]: p for p in answer.json()["data"]}


async def test_lists_every_product_with_its_spec(client: httpx.AsyncClient) -> None:
    listed = await products(client)
    assert listed["serverless.h100"] == {
        "id": "serverless.h100",
        "name": "serverless.h100",
        "category": "serverless",
        "region_id": "local",
        "gpu_model": "H100",
        "gpu_num": 1,
        "gpu_memory_gb": 80,
        "cpu_num": 16.0,
        "memory_gb": 128.0,
        "disk_gb": 20,
        "price_per_hour": 2.99,
        "available": False,  # no H100 on this machine: creating one would be refused
        "spec": "1 \N{MULTIPLICATION SIGN} H100 80GB, 16 vCPU, 128 GiB RAM",
    }
    assert listed["cpu.small"]["available"] is True
    assert listed["cpu.small"]["gpu_num"] == 0
    assert listed["cpu.small"]["memory_gb"] == 1.0
    gmi = {p["name"]: p for p in (await client.get("/api/v1/containers/products")).json()}
    assert {pid: p["available"] for pid, p in listed.items()} == {name: p["valid"] for name, p in gmi.items()}
    assert {pid: p["spec"] for pid, p in listed.items()} == {name: p["spec"] for name, p in gmi.items()}


async def test_category_filter(client: httpx.AsyncClient) -> None:
    assert set(await products(client, category="serverless")) == {"serverless.cpu", "serverless.h100"}
    instance = await products(client, category="instance")
    assert "cpu.small" in instance
    assert {p["category"] for p in instance.values()} == {"instance"}
    assert_error(await client.get(URL, params={"category": "spot"}), 422, "category")


async def test_region_filter(harness: Harness, client: httpx.AsyncClient) -> None:
    async with harness.context.db.write() as session:
        session.add(IdcModel(id="eu-1", name="Frankfurt"))
        await session.flush()
        session.add(ProductModel(id="eu.cpu", idc_id="eu-1", category="serverless", cpu=0.5, memory_mb=512))
    assert set(await products(client, region_ids="eu-1")) == {"eu.cpu"}
    assert (await products(client, region_ids=" eu-1 ,"))["eu.cpu"]["memory_gb"] == 0.5
    both = await products(client, region_ids="local,eu-1", category="serverless")
    assert set(both) == {"eu.cpu", "serverless.cpu", "serverless.h100"}
    assert both["eu.cpu"]["region_id"] == "eu-1"
    assert both["eu.cpu"]["cpu_num"] == 0.5
    assert set(await products(client, region_ids="local")) == set(await products(client)) - {"eu.cpu"}

    body = assert_error(await client.get(URL, params={"region_ids": "local,mars,venus"}), 422, "region_ids")
    assert body["details"][0]["message"].startswith("no region mars, venus;")  # the known one is not blamed
    assert_error(await client.get(URL, params={"region_ids": "x" * 1025}), 422, "region_ids")


async def test_needs_a_key(harness: Harness) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=harness.app), base_url="http://t") as anonymous:
        assert_error(await anonymous.get(URL), 401)


class TestSimulated:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"simulated_gpus": "NVIDIA H100 80GB HBM3:2"})

    async def test_available_when_one_node_has_enough_gpus(self, client: httpx.AsyncClient) -> None:
        listed = await products(client)
        assert listed["serverless.h100"]["available"] is True
        assert listed["gpu.h100.8x"]["available"] is False  # 2 simulated GPUs cannot hold an 8-GPU product
        assert "(simulated)" in str(listed["serverless.h100"]["spec"])
