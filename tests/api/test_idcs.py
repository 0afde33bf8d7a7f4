"""`GET /api/v1/idcs`: the status is computed from maintenance and GPU capacity."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from dockyard.config import Settings
from dockyard.db.models import ContainerModel, GpuModel, IdcModel
from tests.api.test_containers import create_one, make_template
from tests.conftest import Harness


async def test_lists_idcs_for_any_key(harness: Harness, client: httpx.AsyncClient) -> None:
    async with harness.context.db.write() as session:
        session.add(IdcModel(id="eu-1", name="Frankfurt", country="DE", country_subdivision="HE", status="maintenance"))
    answer = await client.get("/api/v1/idcs")
    assert answer.status_code == 200
    assert answer.json() == [
        {"idcId": "eu-1", "name": "Frankfurt", "country": "DE", "countrySubdivision": "HE", "status": "maintenance"},
        {
            "idcId": "local",
            "name": "Local container engine",
            "country": "",
            "countrySubdivision": "",
            "status": "available",  # no GPUs: never full
        },
    ]


async def test_needs_a_key(harness: Harness) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=harness.app), base_url="http://t") as anonymous:
        assert (await anonymous.get("/api/v1/idcs")).status_code == 401


class TestWithGpus:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"simulated_gpus": "NVIDIA H100 80GB HBM3:2"})

    async def test_full_when_every_gpu_is_held(self, harness: Harness, client: httpx.AsyncClient) -> None:
        template_id = await make_template(client)
        holders = [await create_one(client, template_id, product="gpu.h100.1x") for _ in range(2)]

        async def status() -> str:
            [local] = (await client.get("/api/v1/idcs")).json()
            value: str = local["status"]
            return value

        assert await status() == "available"
        async with harness.context.db.write() as session:
            uuids = list(await session.scalars(select(GpuModel.uuid).order_by(GpuModel.index)))
            row = await session.get(ContainerModel, holders[0])
            assert row is not None
            row.gpu_uuids = [uuids[0]]  # one of the two held
        assert await status() == "available"
        async with harness.context.db.write() as session:
            row = await session.get(ContainerModel, holders[1])
            assert row is not None
            row.gpu_uuids = [uuids[1]]
        assert await status() == "full"
