"""The canary's probes of the API's error paths: wrong keys, bad and deep bodies, logs since the epoch, another
organization's objects and endpoints (the gateway included), an unhandled error, mount-option injection, reserved
variables, quotas, a container no node can place, a storage an endpoint mounts, and `/metrics`; and the ordinary
reads of everything made, once the probes have run."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from dockyard.json_depth import MAX_JSON_DEPTH
from dockyard.services.worker_runspec import WEBHOOK_PREFIX
from tests.canary.harness import Canary, probe


def container_body(name: str, template_id: str, **fields: Any) -> dict[str, Any]:
    return {"count": 1, "idc": "local", "product": "cpu.small", "name": name, "templateId": template_id, **fields}


def endpoint_body(name: str, image: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "sync",
        "name": name,
        "product_id": "serverless.cpu",
        "image": image,
        "ports": [8080],
        "worker_config": {"min_replicas": 0, "max_replicas": 1},
        **fields,
    }


@probe
def wrong_keys(canary: Canary) -> None:
    with canary.client() as anonymous:
        for authorization in (f"Bearer dy_{secrets.token_urlsafe(24)}", "Bearer nonsense", "Basic dXNlcjpwYXNz", ""):
            assert anonymous.get("/api/v1/containers", headers={"Authorization": authorization}).status_code == 401
        hook = f"{WEBHOOK_PREFIX}/{canary.endpoint_id}/job-take/worker"
        assert anonymous.get(hook, headers={"Authorization": f"dyw_{secrets.token_urlsafe(24)}"}).status_code == 401
    assert canary.user.get("/admin/v1/organizations").status_code in (401, 403)
    assert canary.admin.get("/api/v1/containers").status_code in (401, 403)


@probe
def bad_bodies(canary: Canary) -> None:
    json_type = {"Content-Type": "application/json"}
    assert canary.user.post("/api/v1/templates", content=b'{"name": ', headers=json_type).status_code == 422
    assert canary.user.post("/api/v1/templates", json={"name": 7, "path": ["x"]}).status_code == 422
    assert (
        canary.user.post("/api/v1/templates", content=b"x" * (11 * 1024 * 1024), headers=json_type).status_code == 413
    )
    deep = '{"k":' * 1000 + "1" + "}" * 1000
    assert canary.user.post("/api/v1/templates", content=deep, headers=json_type).status_code == 400
    run = canary.user.post(f"/v2/{canary.endpoint_id}/run", content=f'{{"input": {deep}}}', headers=json_type)
    assert run.status_code == 400
    assert f"deeper than {MAX_JSON_DEPTH}" in run.json()["message"]


@probe
def logs_since_the_epoch(canary: Canary) -> None:
    logs = f"/api/v1/containers/{canary.container_id}/logs"
    for since in ("0", "-1", "1970-01-01T00:00:00Z"):
        answer = canary.user.get(logs, params={"since": since})
        assert answer.status_code == 200, answer.text
        assert "line3" in answer.text
    assert canary.user.get(logs, params={"since": "nan"}).status_code == 422


@probe
def another_organizations_objects(canary: Canary) -> None:
    for path in (
        f"/api/v1/containers/{canary.container_id}",
        f"/api/v1/containers/{canary.container_id}/logs?since=0",
        f"/api/v1/templates/{canary.template_id}",
        f"/gpus/v2/endpoints/{canary.endpoint_id}",
        f"/v2/{canary.endpoint_id}/health",
    ):
        assert canary.other.get(path).status_code == 404, path
    assert canary.other.delete(f"/api/v1/containers/{canary.container_id}").status_code == 404


@probe
def another_organizations_endpoint_through_the_gateway(canary: Canary) -> None:
    """Another organization's endpoint and an unknown id answer alike: 401 without a key, 404 with one."""
    unknown = str(uuid.uuid4())
    for endpoint in (canary.endpoint_id, unknown):
        assert canary.other.post(f"/{endpoint}/v1/chat", json={"prompt": "hi"}).status_code == 404
        with canary.client() as anonymous:
            assert anonymous.get(f"/{endpoint}/v1/chat").status_code == 401


@probe
def an_unhandled_error(canary: Canary) -> None:
    for client in (canary.user, canary.admin):
        answer = client.get("/planted/failure")
        assert answer.status_code == 500
        assert answer.json()["message"] == "internal error; the server log has the details"


@probe
def mount_option_injection(canary: Canary) -> None:
    """The mount paths that once mounted another organization's storage and the host's /etc, each in a body that
    carries an env secret too: refused with 422 naming the field, the secret not echoed."""
    storage = canary.other.post(
        "/gpus/v2/network-storages", json={"name": "theirs", "region_id": "local", "size_gb": 1}
    )
    assert storage.status_code == 200, storage.text
    theirs = f"dockyard-ns-{storage.json()['id']}"
    env = [{"name": "API_TOKEN", "value": canary.fresh("injection env value")}]
    for path in (
        f"/x,source={theirs}",
        f"/x,volume-opt=device=/etc,volume-opt=o=bind,volume-opt=type=none,source={theirs}",
        "/x/../../etc",
        "/proc/self",
        "/x\n,source=y",
    ):
        storages = [{"containerPath": path, "id": storage.json()["id"]}]
        answer = canary.user.post(
            "/api/v1/containers", json=container_body("inject", canary.template_id, envs=env, storages=storages)
        )
        assert answer.status_code == 422, answer.text
        assert "containerPath" in answer.json()["message"]
        volumes = [{"id": storage.json()["id"], "mount_point": path}]
        endpoint_envs = [{"key": "API_TOKEN", "value": env[0]["value"]}]
        answer = canary.user.post(
            "/gpus/v2/endpoints", json=endpoint_body("inject", canary.busybox, volumes=volumes, envs=endpoint_envs)
        )
        assert answer.status_code == 422, answer.text
        assert "mount_point" in answer.json()["message"]


@probe
def reserved_variables(canary: Canary) -> None:
    """A GPU or SDK variable Dockyard owns, with a secret value, in a template, a container and an endpoint."""
    value = canary.fresh("reserved variable value")
    for name in (
        "NVIDIA_VISIBLE_DEVICES",
        "CUDA_VISIBLE_DEVICES",
        "RUNPOD_AI_API_KEY",
        "PPIO_WEBHOOK_GET_JOB",
        "dockyard_x",
    ):
        template = {"name": "reserved", "path": canary.busybox, "envs": [{"name": name, "value": value}]}
        answers = [
            canary.user.post("/api/v1/templates", json=template),
            canary.user.put(f"/api/v1/templates/{canary.template_id}", json=template),
            canary.user.post(
                "/api/v1/containers",
                json=container_body("reserved", canary.template_id, envs=[{"name": name, "value": value}]),
            ),
            canary.user.post(
                "/gpus/v2/endpoints",
                json=endpoint_body("reserved", canary.busybox, envs=[{"key": name, "value": value}]),
            ),
        ]
        for answer in answers:
            assert answer.status_code == 422, answer.text
            assert "reserved" in answer.json()["message"], answer.text


@probe
def quota_refusals(canary: Canary) -> None:
    """The operator sets small quotas on the other organization; its asks past them are 429 naming the quota."""
    limits = {"containers": 0, "endpoints": 0, "storage_gb": 1, "vcpus": 0}
    quotas = f"/admin/v1/organizations/{canary.org_ids['other']}/quotas"
    assert canary.admin.put(quotas, json=limits).status_code == 200
    template = canary.other.post(
        "/api/v1/templates",
        json={
            "name": "over",
            "path": canary.busybox,
            "envs": [{"name": "API_TOKEN", "value": canary.fresh("quota env")}],
        },
    )
    assert template.status_code == 200, template.text
    envs = [{"name": "OTHER_TOKEN", "value": canary.fresh("quota container env")}]
    refused = [
        canary.other.post("/api/v1/containers", json=container_body("over", template.json()["id"], envs=envs)),
        canary.other.post(
            "/gpus/v2/endpoints",
            json=endpoint_body(
                "over", canary.busybox, envs=[{"key": "HF_TOKEN", "value": canary.fresh("quota endpoint env")}]
            ),
        ),
        canary.other.post("/gpus/v2/network-storages", json={"name": "big", "region_id": "local", "size_gb": 500}),
    ]
    for answer in refused:
        assert answer.status_code == 429, answer.text
        assert answer.json()["reason"] == "RESOURCE_EXHAUSTED"
    # The user's queued jobs, briefly limited to none.
    user_quotas = f"/admin/v1/organizations/{canary.org_ids['user']}/quotas"
    assert canary.admin.put(user_quotas, json={"queued_jobs": 0}).status_code == 200
    try:
        run = canary.user.post(f"/v2/{canary.endpoint_id}/run", json={"input": {"token": canary.fresh("quota input")}})
        assert run.status_code == 429, run.text
    finally:
        assert canary.admin.put(user_quotas, json={"queued_jobs": None}).status_code == 200


@probe
def a_container_that_fits_on_no_node(canary: Canary) -> None:
    """Within the quotas but bigger than any node: the container is refused by placement, saying why."""
    product = {"id": "cpu.huge", "idc_id": "local", "cpu": 100, "memory_mb": 1024}
    assert canary.admin.post("/admin/v1/products", json=product).status_code == 200
    envs = [{"name": "API_TOKEN", "value": canary.fresh("unplaceable container env value")}]
    created = canary.user.post(
        "/api/v1/containers", json={**container_body("huge", canary.template_id, envs=envs), "product": "cpu.huge"}
    )
    assert created.status_code == 200, created.text
    path = f"/api/v1/containers/{created.json()[0]['id']}"
    canary.eventually("the unplaceable container refused", lambda: "vCPUs" in canary.user.get(path).json()["reason"])


@probe
def a_storage_mounted_by_an_endpoint(canary: Canary) -> None:
    storage = canary.user.post("/gpus/v2/network-storages", json={"name": "data", "region_id": "local", "size_gb": 1})
    assert storage.status_code == 200, storage.text
    storage_id = storage.json()["id"]
    volumes = [{"id": storage_id, "mount_point": "/data"}]
    envs = [{"key": "HF_TOKEN", "value": canary.fresh("storage endpoint env value")}]
    endpoint = canary.user.post(
        "/gpus/v2/endpoints", json=endpoint_body("mounts", canary.busybox, volumes=volumes, envs=envs)
    )
    assert endpoint.status_code == 200, endpoint.text
    assert canary.user.delete(f"/gpus/v2/network-storages/{storage_id}").status_code == 409


@probe
def metrics_without_and_with_a_wrong_token(canary: Canary) -> None:
    with canary.client() as scraper:
        assert scraper.get("/metrics").status_code == 401
        wrong = canary.fresh("wrong metrics token")
        assert scraper.get("/metrics", headers={"Authorization": f"Bearer {wrong}"}).status_code in (401, 403)
        assert scraper.get("/metrics", headers={"Authorization": canary.secrets["metrics token"]}).status_code == 401
        right = scraper.get("/metrics", headers={"Authorization": f"Bearer {canary.secrets['metrics token']}"})
        assert right.status_code == 200
        assert canary.endpoint_id in right.text  # the operator's view names endpoints
    assert canary.user.get("/metrics").status_code == 403
    assert canary.admin.get("/metrics").status_code == 200


def ordinary_reads(canary: Canary) -> None:
    """Every list and object the probes made, read back as the user and the operator would (run after the probes,
    so that each answer shows whatever the failures recorded: reasons, events, runtime errors)."""
    user, admin = canary.user, canary.admin
    paths = ["/api/v1/templates", "/api/v1/idcs", "/gpus/v2/registry-auths", "/gpus/v2/network-storages"]
    paths += ["/gpus/v2/quotas", "/healthz"]
    paths += [f"/api/v1/templates/{template['id']}" for template in user.get("/api/v1/templates").json()["items"]]
    containers = user.get("/api/v1/containers", params={"pageSize": 100}).json()["items"]
    paths += [f"/api/v1/containers/{container['id']}" for container in containers]
    paths += [f"/api/v1/containers/{container['id']}/logs" for container in containers]
    for endpoint in user.get("/gpus/v2/endpoints").json()["data"]:
        base = f"/gpus/v2/endpoints/{endpoint['id']}"
        paths += [base, f"{base}/workers", f"{base}/events", f"{base}/jobs"]
        workers = user.get(f"{base}/workers").json()["data"]
        paths += [f"{base}/workers/{worker['id']}/logs" for worker in workers]
    for path in paths:
        assert user.get(path).status_code in (200, 409), path  # 409: the logs of a container never created
    org = f"/admin/v1/organizations/{canary.org_ids['user']}"
    for path in ("/admin/v1/organizations", "/admin/v1/idcs", "/admin/v1/nodes", "/admin/v1/products", f"{org}/keys"):
        assert admin.get(path).status_code == 200, path
    assert admin.get(f"{org}/quotas").status_code == 200
