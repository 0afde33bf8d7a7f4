"""`GET /gpus/v2/regions`: the IDCs under PPIO's name, with GMI's computed status."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from dockyard.config import Settings
from dockyard.db.models import ContainerModel, GpuModel, IdcModel
from tests.api.test_admin import assert_error
from tests.api.test_containers import create_one, make_template
from tests.conftest import Harness


async def test_lists_regions(harness: Harness, client: httpx.AsyncClient) -> None:
    async with harness.context.db.write() as session:
        session.add(IdcModel(id="eu-1", name="Frankfurt", country="DE", country_subdivision="HE", status="maintenance"))
    answer = await client.get("/gpus/v2/regions")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "data": [
            {"id": "eu-1", "name": "Frankfurt", "country": "DE", "status": "maintenance"},
            {"id": "local", "name": "Local container engine", "country": "", "status": "available"},
        ]
    }


async def test_needs_a_key(harness: Harness) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=harness.app), base_url="http://t") as anonymous:
        assert_error(await anonymous.get("/gpus/v2/regions"), 401)


class TestWithGpus:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"simulated_gpus": "NVIDIA H100 80GB HBM3:1"})

    async def test_full_when_every_gpu_is_held(self, harness: Harness, client: httpx.AsyncClient) -> None:
        template_id = await make_template(client)
        holder = await create_one(client, template_id, product="gpu.h100.1x")
        assert (await client.get("/gpus/v2/regions")).json()["data"][0]["status"] == "available"
        async with harness.context.db.write() as session:
            row = await session.get(ContainerModel, holder)
            assert row is not None
            row.gpu_uuids = list(await session.scalars(select(GpuModel.uuid)))
        assert (await client.get("/gpus/v2/regions")).json()["data"] == [
            {"id": "local", "name": "Local container engine", "country": "", "status": "full"}
        ]
