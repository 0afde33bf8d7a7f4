"""`GET /api/v1/idcs`: the status is computed from maintenance, GPU capacity and whether the IDC's runtime can be
reached; an engine that cannot be is reported to the operator (the log, the admin API, `/healthz`), with one
sentence for tenants."""

from __future__ import annotations

import logging

import httpx
import pytest
from sqlalchemy import select, update

from dockyard import __version__
from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.core.status import ContainerStatus
from dockyard.db.models import ContainerModel, GpuModel, IdcModel
from dockyard.reconcilers.containers import ContainerReconciler
from dockyard.runtimes.engine import EngineRuntime
from dockyard.services.bootstrap import LOCAL_IDC
from tests.api.test_containers import create_one, make_template
from tests.conftest import ADMIN_TOKEN, Harness
from tests.fakes import FakeRuntime


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


async def test_an_engine_missing_from_the_start_is_reported_to_the_operator_not_to_tenants(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The real engine runtime, bound to a socket nothing serves (`settings.engine_url`), from the first pass on."""
    socket = settings.engine_url.removeprefix("unix://")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        context: ServerContext = app.state.context
        assert isinstance(context.runtimes[LOCAL_IDC], EngineRuntime)
        transport = httpx.ASGITransport(app=app)
        operator = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://t") as anonymous,
            httpx.AsyncClient(transport=transport, base_url="http://t", headers=operator) as admin,
        ):
            client = await Harness(app=app, client=anonymous, admin=admin).new_client("acme")
            template_id = await make_template(client)
            container_id = await create_one(client, template_id)
            async with context.db.write() as session:  # it ran before the engine went away
                await session.execute(
                    update(ContainerModel)
                    .where(ContainerModel.id == container_id)
                    .values(status=ContainerStatus.RUNNING, runtime_id="abc", observed_generation=1)
                )

            with caplog.at_level(logging.WARNING, logger="dockyard.services.idcs"):
                await ContainerReconciler(context).reconcile_once()

            # The operator: the log, the admin API and /healthz say so, the details where only the operator looks.
            assert any(socket in r.getMessage() and "IDC local" in r.getMessage() for r in caplog.records)
            (local,) = (await admin.get("/admin/v1/idcs")).json()
            assert socket in local["runtime_error"]
            assert local["runtime_error_since"] is not None
            health = await anonymous.get("/healthz")
            assert health.status_code == 200
            assert health.json()["status"] == "degraded"
            (problem,) = health.json()["reasons"]
            assert problem.startswith("the container runtime of IDC local cannot be reached since ")
            assert socket not in health.text

            # Tenants: one sentence, no address, no exception.
            container = (await client.get(f"/api/v1/containers/{container_id}")).json()
            assert (container["status"], container["reason"]) == (
                "unknown",
                "the container runtime of IDC local cannot be reached; the operator has been told",
            )
            assert [idc["status"] for idc in (await client.get("/api/v1/idcs")).json()] == ["maintenance"]
            assert [r["status"] for r in (await client.get("/gpus/v2/regions")).json()["data"]] == ["maintenance"]
            refused = await client.post(
                "/api/v1/containers",
                json={"count": 1, "idc": "local", "product": "cpu.small", "name": "box", "templateId": template_id},
            )
            assert refused.status_code == 422
            assert refused.json()["message"] == (
                "idc: the container runtime of IDC local cannot be reached; the operator has been told; "
                "it takes no new containers now: retry later"
            )
            for answer in (str(container), refused.text):
                assert socket not in answer
                assert "Error" not in answer

            # The engine answers again: so does everything else.
            context.runtimes[LOCAL_IDC] = FakeRuntime(context.installation_id)
            await ContainerReconciler(context).reconcile_once()
            (local,) = (await admin.get("/admin/v1/idcs")).json()
            assert (local["runtime_error"], local["runtime_error_since"]) == ("", None)
            assert (await anonymous.get("/healthz")).json() == {"status": "ok", "version": __version__, "reasons": []}
            assert [idc["status"] for idc in (await client.get("/api/v1/idcs")).json()] == ["available"]
            await client.aclose()
