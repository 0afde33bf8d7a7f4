"""`GET /api/v1/containers/products`: names, prices, specs in words, simulated GPUs marked."""

from __future__ import annotations

import httpx
import pytest

from dockyard.config import Settings


async def test_lists_products_of_an_idc(client: httpx.AsyncClient) -> None:
    answer = await client.get("/api/v1/containers/products", params={"idc": "local"})
    assert answer.status_code == 200, answer.text
    products = {p["name"]: p for p in answer.json()}
    assert products["gpu.h100.1x"] == {
        "name": "gpu.h100.1x",
        "idc": "local",
        "type": "instance",
        "price": 2.49,
        "valid": False,  # no H100 on this machine: creating one would be refused
        "spec": "1 \N{MULTIPLICATION SIGN} H100 80GB, 16 vCPU, 128 GiB RAM",
        "gpuModel": "H100",
        "productLine": "h100",
    }
    assert products["cpu.small"]["spec"] == "1 vCPU, 1 GiB RAM"
    assert products["cpu.small"]["valid"] is True
    assert products["serverless.cpu"]["type"] == "serverless"
    assert (await client.get("/api/v1/containers/products")).json() == answer.json()  # one IDC only here


async def test_unknown_idc_is_named(client: httpx.AsyncClient) -> None:
    for idc in ("nowhere", "bad idc"):
        answer = await client.get("/api/v1/containers/products", params={"idc": idc})
        assert answer.status_code == 422
        assert answer.json()["details"][0]["field"] == "idc"


class TestSimulated:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"simulated_gpus": "NVIDIA H100 80GB HBM3:2"})

    async def test_simulated_gpus_are_marked(self, client: httpx.AsyncClient) -> None:
        products = {p["name"]: p["spec"] for p in (await client.get("/api/v1/containers/products")).json()}
        assert products["gpu.h100.8x"] == "8 \N{MULTIPLICATION SIGN} H100 80GB (simulated), 128 vCPU, 1024 GiB RAM"
        assert products["cpu.large"] == "2 vCPU, 4 GiB RAM"

    async def test_valid_when_one_node_has_enough_gpus(self, client: httpx.AsyncClient) -> None:
        valid = {p["name"]: p["valid"] for p in (await client.get("/api/v1/containers/products")).json()}
        assert valid["gpu.h100.1x"] is True
        assert valid["gpu.h100.8x"] is False  # 2 simulated GPUs cannot hold an 8-GPU product
