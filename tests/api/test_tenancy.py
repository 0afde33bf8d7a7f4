"""Tenancy as a matrix: a second organization tries every route of the API against every object the first one
owns, and references the first one's objects from its own writes. Zero access is the only acceptable answer.

The routes come from the OpenAPI document itself, so a route added later is tried too: a path parameter this
file cannot fill fails the test instead of being skipped. Alice's objects carry a marker in every name and env
value; no answer Mallory gets may contain it, nor any of Alice's ids she did not send herself.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from dockyard.config import new_token
from dockyard.core.status import JobStatus, WorkerStatus
from dockyard.db.models import EndpointModel, JobModel, WorkerModel
from dockyard.secrets import hash_api_key
from tests.api.test_containers import ED25519, add_storage, field_of
from tests.api.test_endpoint_workers import started_worker
from tests.conftest import Harness
from tests.fakes import FakeRuntime

MARK = "alice-private"
# A body good enough to pass each write route's validation, so that Mallory's request reaches the ownership
# check rather than stopping at a 422; `{}` for the rest.
BODIES: dict[tuple[str, str], Any] = {
    ("PUT", "/api/v1/containers/{container_id}"): {"name": "box", "templateId": "{own_template}"},
    ("PUT", "/api/v1/templates/{template_id}"): {"name": "t", "path": "localhost/x:1"},
    ("PUT", "/gpus/v2/network-storages/{storage_id}"): {"size_gb": 20},
    ("PUT", "/gpus/v2/endpoints/{endpoint_id}"): {"name": "x"},
    ("POST", "/v1/{endpoint_id}/run"): {"input": {}},
    ("POST", "/v2/{endpoint_id}/run"): {"input": {}},
    ("POST", "/v1/{endpoint_id}/runsync"): {"input": {}},
    ("POST", "/v2/{endpoint_id}/runsync"): {"input": {}},
    ("POST", "/gpus/v2/workers/{endpoint_id}/job-done/{worker_id}/{job_id}"): {"output": 1},
    ("POST", "/gpus/v2/workers/{endpoint_id}/job-stream/{worker_id}/{job_id}"): {"output": 1},
}
# Where an answer other than 404 is right for a user's key: the operator's API refuses it outright, and the
# worker webhooks take only a worker's own key, so a user key is unknown there.
EXPECTED_PREFIX = {"/admin/v1/": (401, 403), "/gpus/v2/workers/": (401,)}
# Routes without an object of Alice's in their path: tried as lists, and checked for what they reveal.
UNOWNED = {"/healthz", "/metrics"}
# A sync endpoint's body; each organization's own copy names itself.
AN_ENDPOINT = {
    "type": "sync",
    "name": "m",
    "product_id": "serverless.cpu",
    "image": "localhost/worker:1",
    "worker_config": {"max_replicas": 1},
}


@dataclass
class Alice:
    """Alice's objects by the path parameter that names them."""

    ids: dict[str, str] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)
    # Routes whose parameter names an object other than the one `ids` holds under that name.
    special: dict[str, str] = field(default_factory=dict)

    def fill(self, path: str) -> str:
        if path in self.special:
            return _fill(path, dict.fromkeys(re.findall(r"\{(\w+)\}", path), self.special[path]))
        return _fill(path, {**self.shared, **self.ids})


def _fill(template: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in values, f"{template}: no object for {{{name}}}; add one to the fixture"
        return values[name]

    return re.sub(r"\{(\w+)\}", one, template)


def _operations(harness: Harness) -> Iterator[tuple[str, str]]:
    for path, operations in harness.app.openapi()["paths"].items():
        for method in operations:
            yield method.upper(), path


async def _ok(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    body: Any = answer.json()
    return body[0] if isinstance(body, list) else body


@pytest.fixture
async def alice(harness: Harness, client: httpx.AsyncClient, fake_runtime: FakeRuntime) -> Alice:
    """One of every object an organization owns, with the marker in its names and secrets."""
    ids: dict[str, str] = {}
    envs = [{"name": "TOKEN", "value": f"{MARK}-env"}]
    template = {"name": f"{MARK}-t", "path": "localhost/x:1", "envs": envs, "ports": [{"containerPort": 80}]}
    ids["template_id"] = (await _ok(await client.post("/api/v1/templates", json=template)))["id"]
    key = {"name": f"{MARK}-key", "publicKey": ED25519}
    ids["key_id"] = (await _ok(await client.post("/api/v1/ssh-keys", json=key)))["id"]
    ids["storage_id"] = await add_storage(harness, "acme")
    auth = {"name": f"{MARK}-auth", "username": "u", "password": f"{MARK}-password"}
    ids["auth_id"] = (await _ok(await client.post("/gpus/v2/registry-auths", json=auth)))["id"]
    container = {
        "count": 1,
        "idc": "local",
        "product": "cpu.small",
        "name": f"{MARK}-box",
        "templateId": ids["template_id"],
        "storages": [{"containerPath": "/data", "id": ids["storage_id"]}],
    }
    ids["container_id"] = (await _ok(await client.post("/api/v1/containers", json=container)))["id"]
    endpoint = {
        "type": "async",
        "name": f"{MARK}-endpoint",
        "product_id": "serverless.cpu",
        "image": "localhost/worker:1",
        "worker_config": {"max_replicas": 1},
        "envs": [{"key": "TOKEN", "value": f"{MARK}-env"}],
        "registry_auth_id": ids["auth_id"],
    }
    ids["endpoint_id"] = (await _ok(await client.post("/gpus/v2/endpoints", json=endpoint)))["id"]
    ids["worker_id"] = await started_worker(harness, ids["endpoint_id"], fake_runtime)
    run = await client.post(f"/v2/{ids['endpoint_id']}/run", json={"input": {"secret": f"{MARK}-input"}})
    ids["job_id"] = (await _ok(run))["id"]
    async with harness.context.db.write() as session:
        job = await session.get(JobModel, ids["job_id"])
        assert job is not None
        job.status = JobStatus.COMPLETED
        job.output = f'"{MARK}-output"'
    # The operator's objects are named too, so the admin routes are tried with real ids.
    orgs = (await harness.admin.get("/admin/v1/organizations")).json()
    ids["org_id"] = next(org["id"] for org in orgs if org["name"] == "acme")
    api_keys = (await harness.admin.get(f"/admin/v1/organizations/{ids['org_id']}/keys")).json()
    # The installation's own objects, which every organization sees: not Alice's, but named in admin routes.
    shared = {
        "idc_id": "local",
        "product_id": "cpu.small",
        "node_id": (await harness.admin.get("/admin/v1/nodes")).json()[0]["id"],
        "path": "echo",  # the gateway's route: the path after the endpoint's id, passed to a worker as it is
    }
    return Alice(ids, shared, {"/admin/v1/keys/{key_id}": api_keys[0]["id"]})


def _leaks(answer: httpx.Response, alice: Alice, sent: str) -> list[str]:
    """What of Alice's the answer shows that Mallory did not send herself."""
    text = answer.text
    found = [MARK] if MARK in text else []
    found += [value for value in alice.ids.values() if len(value) > 8 and value in text and value not in sent]
    return found


async def test_every_route_refuses_another_organization(harness: Harness, alice: Alice) -> None:
    mallory = await harness.new_client("mallory")
    try:
        own_template = (await _ok(await mallory.post("/api/v1/templates", json={"name": "t", "path": "x/y:1"})))["id"]
        tried: list[str] = []
        failures: list[str] = []
        for method, template in _operations(harness):
            if "{" not in template and template not in UNOWNED and method != "GET":
                continue  # Mallory's own creations are checked by reference, below
            path = alice.fill(template)
            body = BODIES.get((method, template))
            if isinstance(body, dict):
                body = {k: own_template if v == "{own_template}" else v for k, v in body.items()}
            answer = await mallory.request(method, path, json=body if method in ("POST", "PUT", "PATCH") else None)
            tried.append(f"{method} {path}")
            expected = next((codes for prefix, codes in EXPECTED_PREFIX.items() if template.startswith(prefix)), (404,))
            if "{" not in template:
                expected = (200, 401, 403)  # lists, /healthz, /metrics: what they show is checked below
            if answer.status_code not in expected:
                failures.append(f"{method} {template}: {answer.status_code} (expected {expected}): {answer.text[:200]}")
            if leaked := _leaks(answer, alice, path):
                failures.append(f"{method} {template} shows Alice's {leaked}")
        assert not failures, "\n".join(failures)
        parametrised = {(m, t) for m, t in _operations(harness) if "{" in t}
        assert len(tried) >= len(parametrised), f"tried {len(tried)} of {len(parametrised)} routes"
        # Alice's objects are as unchanged as Alice sees them.
        client = harness.client
        assert (await client.get(f"/api/v1/containers/{alice.ids['container_id']}")).status_code == 200
        endpoint = await _ok(await client.get(f"/gpus/v2/endpoints/{alice.ids['endpoint_id']}"))
        assert endpoint["name"] == f"{MARK}-endpoint"
        assert (await client.get(f"/v2/{alice.ids['endpoint_id']}/status/{alice.ids['job_id']}")).json()[
            "status"
        ] == "COMPLETED"
    finally:
        await mallory.aclose()


async def test_references_to_another_organizations_objects_are_unknown(harness: Harness, alice: Alice) -> None:
    """Naming Alice's template, SSH key, storage or registry credentials in Mallory's own writes is refused as an
    unknown id, field by field."""
    mallory = await harness.new_client("mallory")
    try:
        own = (await _ok(await mallory.post("/api/v1/templates", json={"name": "t", "path": "x/y:1"})))["id"]
        base = {"count": 1, "idc": "local", "product": "cpu.small", "name": "m"}
        ids = alice.ids
        cases = [
            ({**base, "templateId": ids["template_id"]}, "templateId"),
            ({**base, "templateId": own, "sshKeyIdList": [ids["key_id"]]}, "sshKeyIdList[0]"),
            ({**base, "templateId": own, "storages": [{"containerPath": "/d", "id": ids["storage_id"]}]}, None),
        ]
        for body, expected in cases:
            got = field_of(await mallory.post("/api/v1/containers", json=body))
            assert got == (expected or "storages[0].id"), body
        endpoint = AN_ENDPOINT
        assert field_of(await mallory.post("/gpus/v2/endpoints", json={**endpoint, "registry_auth_id": ids["auth_id"]}))
        volume = {"id": ids["storage_id"], "mount_point": "/data"}
        assert field_of(await mallory.post("/gpus/v2/endpoints", json={**endpoint, "volumes": [volume]}))
    finally:
        await mallory.aclose()


async def test_the_gateway_answers_another_organizations_endpoint_as_an_unknown_one(
    harness: Harness, alice: Alice
) -> None:
    """A sync endpoint of Alice's, called with Mallory's key, is answered exactly as an id nobody has."""
    sync = {**AN_ENDPOINT, "name": f"{MARK}-sync"}
    endpoint_id = (await _ok(await harness.client.post("/gpus/v2/endpoints", json=sync)))["id"]
    mallory = await harness.new_client("mallory")
    try:
        theirs = await mallory.get(f"/{endpoint_id}/v1/chat")
        unknown = await mallory.get("/00000000-0000-4000-8000-000000000000/v1/chat")
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["reason"] == unknown.json()["reason"]
        assert theirs.text.replace(endpoint_id, "ID") == unknown.text.replace(
            "00000000-0000-4000-8000-000000000000", "ID"
        )
        assert sorted(theirs.headers.keys()) == sorted(unknown.headers.keys())
    finally:
        await mallory.aclose()


async def test_worker_rows_of_another_organization_stay_hidden(harness: Harness, alice: Alice) -> None:
    """Mallory's own endpoint lists only its own workers and events, never Alice's."""
    mallory = await harness.new_client("mallory")
    try:
        endpoint = AN_ENDPOINT
        own = (await _ok(await mallory.post("/gpus/v2/endpoints", json=endpoint)))["id"]
        workers = await mallory.get(f"/gpus/v2/endpoints/{own}/workers")
        assert workers.status_code == 200
        assert alice.ids["worker_id"] not in workers.text
        logs = await mallory.get(f"/gpus/v2/endpoints/{own}/workers/{alice.ids['worker_id']}/logs")
        assert logs.status_code == 404
        assert WorkerStatus.READY.value not in logs.text
    finally:
        await mallory.aclose()


async def _mallory_worker(harness: Harness, endpoint_id: str) -> tuple[str, str]:
    """A worker of Mallory's endpoint with a webhook key of its own: (worker id, key)."""
    key = new_token()
    async with harness.context.db.write() as session:
        endpoint = await session.get(EndpointModel, endpoint_id)
        assert endpoint is not None
        worker = WorkerModel(
            endpoint_id=endpoint_id,
            org_id=endpoint.org_id,
            generation=1,
            status=WorkerStatus.READY,
            key_hash=hash_api_key(key),
        )
        session.add(worker)
        await session.flush()
        return worker.id, key


async def test_mixed_ids_never_reach_another_organizations_objects(harness: Harness, alice: Alice) -> None:
    """Every route with two or more ids, filled with Mallory's own ids and at least one of Alice's (her job under
    Mallory's endpoint, Alice's endpoint with Mallory's worker key, ...): each combination is a 404."""
    mallory = await harness.new_client("mallory")
    try:
        endpoint = {**AN_ENDPOINT, "type": "async"}
        own = {"endpoint_id": (await _ok(await mallory.post("/gpus/v2/endpoints", json=endpoint)))["id"]}
        own["worker_id"], worker_key = await _mallory_worker(harness, own["endpoint_id"])
        own["job_id"] = (await _ok(await mallory.post(f"/v2/{own['endpoint_id']}/run", json={"input": {}})))["id"]
        tried = 0
        failures: list[str] = []
        for method, template in _operations(harness):
            names = [name for name in re.findall(r"\{(\w+)\}", template) if name not in alice.shared]
            if len(names) < 2 or template.startswith("/admin/"):
                continue
            for mask in itertools.product((False, True), repeat=len(names)):
                if not any(mask):
                    continue  # all Mallory's own: her business
                values = {
                    name: alice.ids[name] if theirs else own[name] for name, theirs in zip(names, mask, strict=True)
                }
                path = _fill(template, {**alice.shared, **values})
                headers = {"Authorization": worker_key} if template.startswith("/gpus/v2/workers/") else None
                body = BODIES.get((method, template))
                answer = await mallory.request(method, path, json=body if method == "POST" else None, headers=headers)
                tried += 1
                if answer.status_code != 404:
                    failures.append(f"{method} {template} {dict(zip(names, mask, strict=True))}: {answer.status_code}")
                if leaked := _leaks(answer, alice, path):
                    failures.append(f"{method} {template} shows Alice's {leaked}")
        assert not failures, "\n".join(failures)
        assert tried >= 20, f"only {tried} combinations: the routes with several ids are gone?"
        job = await harness.client.get(f"/v2/{alice.ids['endpoint_id']}/status/{alice.ids['job_id']}")
        assert job.json()["output"] == f"{MARK}-output"
    finally:
        await mallory.aclose()
