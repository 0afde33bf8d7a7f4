"""`/metrics` is the operator's: it names every organization's endpoints, so it answers only the metrics token, the
admin token and admin keys; an anonymous scrape or a tenant's key learns nothing from it. `/healthz` needs no key
(an unreachable runtime's `degraded`: tests/api/test_idcs.py)."""

from __future__ import annotations

import httpx

from dockyard.db.session import Database
from dockyard.reconcilers.endpoints import EndpointReconciler
from tests.api.test_admin import assert_error
from tests.conftest import ADMIN_TOKEN, Harness
from tests.reconcilers.test_endpoints import make_endpoint

METRICS_TOKEN = "test-metrics-token"


async def test_metrics_answer_only_the_operators_credentials(harness: Harness) -> None:
    harness.context.settings.metrics_token = METRICS_TOKEN
    endpoint_id = await make_endpoint(harness.client)
    reconciler = EndpointReconciler(harness.context, harness.routes)
    try:
        await reconciler.reconcile_once()  # the gateway's table now holds the endpoint, as a serving server's does
    finally:
        await reconciler.close()
    org_key = harness.client.headers["Authorization"]
    transport = httpx.ASGITransport(app=harness.app)

    async with httpx.AsyncClient(transport=transport, base_url="http://dockyard.test") as anonymous:
        refused = await anonymous.get("/metrics")
        body = assert_error(refused, 401)
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert "DOCKYARD_METRICS_TOKEN" in body["message"]
        assert endpoint_id not in refused.text
        for credential, code in ((org_key, 403), ("Bearer wrong-token", 401), (f"Basic {METRICS_TOKEN}", 401)):
            answer = await anonymous.get("/metrics", headers={"Authorization": credential})
            assert_error(answer, code)
            assert endpoint_id not in answer.text

        org = (await harness.admin.post("/admin/v1/organizations", json={"name": "ops"})).json()
        admin_key = await harness.admin.post(f"/admin/v1/organizations/{org['id']}/keys", json={"is_admin": True})
        for token in (METRICS_TOKEN, ADMIN_TOKEN, admin_key.json()["key"]):
            answer = await anonymous.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            assert f'dockyard_gateway_ready_workers{{endpoint="{endpoint_id}"}}' in answer.text


async def test_healthz_needs_no_key_and_is_503_without_a_database(harness: Harness) -> None:
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dockyard.test") as anonymous:
        answer = await anonymous.get("/healthz")
        assert answer.status_code == 200
        assert (answer.json()["status"], answer.json()["reasons"]) == ("ok", [])

        context = harness.context
        working, context.db = context.db, Database("postgresql+asyncpg://dockyard:secret@127.0.0.1:1/nowhere")
        try:
            answer = await anonymous.get("/healthz")
        finally:
            await context.db.dispose()
            context.db = working
    assert answer.status_code == 503
    assert (answer.json()["status"], answer.json()["reasons"]) == ("unavailable", ["the database cannot be reached"])
