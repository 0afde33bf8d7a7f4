"""An endpoint worker's run spec: an async worker gets every worker SDK's environment, with URL templates the SDKs
expand into paths the webhook router serves; a sync worker gets none of it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi.routing import APIRoute
from starlette.routing import Match

from dockyard.api.worker_webhooks import router
from dockyard.config import Settings
from dockyard.core.status import EndpointType
from dockyard.core.workload import EnvVar, HealthCheck, PortSpec, WorkloadSpec
from dockyard.db.models import EndpointModel, ProductModel, WorkerModel
from dockyard.runtimes.base import RunSpec
from dockyard.secrets import SecretBox
from dockyard.services.worker_runspec import (
    WebhookAccess,
    build_worker_run_spec,
    health_check,
    webhook_base_url,
)

BASE = "http://10.1.2.3:8080"
KEY = "worker-key-0123456789"
SDKS = ("PPIO", "RUNPOD", "NOVITA")  # novita-gpus 0.0.1 reads the NOVITA_ twins of ppio-gpus' variables


def rows(kind: EndpointType, envs: list[EnvVar] | None = None) -> tuple[EndpointModel, WorkerModel, ProductModel]:
    spec = WorkloadSpec(
        image="localhost/worker:1",
        envs=envs or [],
        ports=[PortSpec(container_port=9000)],
        health_check=HealthCheck(path="/ping", port=8000),
    )
    endpoint = EndpointModel(
        id="ep-1",
        org_id="org-1",
        type=kind,
        name="e",
        product_id="serverless.cpu",
        idc_id="local",
        spec=spec.model_dump(),
    )
    endpoint.worker_config, endpoint.policy = {}, {}
    worker = WorkerModel(id="w-1", endpoint_id="ep-1", org_id="org-1", generation=1)
    product = ProductModel(id="serverless.cpu", idc_id="local", cpu=1.0, memory_mb=512, pids_limit=256)
    return endpoint, worker, product


def run_spec(kind: EndpointType, envs: list[EnvVar] | None = None) -> RunSpec:
    endpoint, worker, product = rows(kind, envs)
    return build_worker_run_spec(
        endpoint,
        worker,
        product=product,
        box=SecretBox(Fernet.generate_key().decode()),
        gpus=[],
        node_id="",
        registry_auth=None,
        webhook=WebhookAccess(BASE, KEY, 10000) if kind == EndpointType.ASYNC else None,
    )


def build(kind: EndpointType, envs: list[EnvVar] | None = None, gpus: int = 0) -> dict[str, str]:
    return run_spec(kind, envs).env


def served(url: str, method: str) -> bool:
    """Whether the webhook router has a route for the URL's path (a worker container's calls must all land)."""
    path = url.removeprefix(BASE).split("?", 1)[0]
    scope = {"type": "http", "path": path, "method": method}
    return any(
        isinstance(route, APIRoute) and route.matches(scope)[0] == Match.FULL and method in route.methods
        for route in router.routes
    )


@pytest.mark.parametrize("sdk", SDKS)
def test_async_worker_env_is_complete_and_expands_as_the_sdk_does(sdk: str) -> None:
    env = build(EndpointType.ASYNC)
    for name in ("WEBHOOK_GET_JOB", "WEBHOOK_POST_OUTPUT", "WEBHOOK_POST_STREAM", "WEBHOOK_PING"):
        assert env[f"{sdk}_{name}"].startswith(f"{BASE}/gpus/v2/workers/ep-1/")
        assert "?" in env[f"{sdk}_{name}"]  # the SDKs append `&...`: a query string must be there already
    assert env[f"{sdk}_POD_ID"] == "w-1"
    assert env[f"{sdk}_AI_API_KEY"] == KEY
    assert env[f"{sdk}_ENDPOINT_ID"] == "ep-1"
    assert env[f"{sdk}_PING_INTERVAL"] == "10000"
    assert "$ID" in env[f"{sdk}_WEBHOOK_GET_JOB"]
    assert "/job-take/" in env[f"{sdk}_WEBHOOK_GET_JOB"]
    for name in ("WEBHOOK_POST_OUTPUT", "WEBHOOK_POST_STREAM"):
        assert f"${sdk}_POD_ID" in env[f"{sdk}_{name}"]
        assert "$ID" in env[f"{sdk}_{name}"].replace(f"${sdk}_POD_ID", "")
    assert f"${sdk}_POD_ID" in env[f"{sdk}_WEBHOOK_PING"]

    # The SDKs' own expansions (modules/job.py, http.py, ping.py; rp_job.py's job-stop) reach the router.
    take = env[f"{sdk}_WEBHOOK_GET_JOB"].replace("$ID", "w-1")
    urls = {
        take + "&job_in_progress=0": "GET",
        take.replace("/job-take/", "/job-take-batch/") + "&batch_size=4&job_in_progress=1": "GET",
        take.replace("/job-take/", "/job-stop/"): "GET",
        env[f"{sdk}_WEBHOOK_PING"].replace(f"${sdk}_POD_ID", "w-1"): "GET",
    }
    for name in ("WEBHOOK_POST_OUTPUT", "WEBHOOK_POST_STREAM"):
        url = env[f"{sdk}_{name}"].replace(f"${sdk}_POD_ID", "w-1").replace("$ID", "job-9") + "&isStream=false"
        assert "/w-1/job-9?" in url
        urls[url] = "POST"
    for url, method in urls.items():
        assert "$" not in url
        assert served(url, method), url


def test_async_worker_env_turns_off_fitness_checks_it_cannot_pass_but_lets_the_user_choose() -> None:
    env = build(EndpointType.ASYNC)
    assert env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] == "true"
    assert env["RUNPOD_SKIP_GPU_CHECK"] == "true"  # a CPU product
    chosen = build(
        EndpointType.ASYNC,
        envs=[EnvVar(name="RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", value="false"), EnvVar(name="PPIO_AI_API_KEY", value="x")],
    )
    assert chosen["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] == "false"
    assert chosen["PPIO_AI_API_KEY"] == KEY  # the webhook variables are never the user's


def test_sync_worker_has_no_webhook_env_and_async_worker_publishes_no_probe_port() -> None:
    endpoint, worker, product = rows(EndpointType.SYNC)
    box = SecretBox(Fernet.generate_key().decode())
    sync = build_worker_run_spec(endpoint, worker, product=product, box=box, gpus=[], node_id="", registry_auth=None)
    assert not [name for name in sync.env if re.match(r"(PPIO|RUNPOD|NOVITA)_", name)]
    assert sorted(p.container_port for p in sync.ports) == [8000, 9000]
    assert {p.host_ip for p in sync.ports} == {"127.0.0.1"}  # the gateway's host only, never another's
    assert sync.network == f"dockyard-org-{worker.org_id}"
    endpoint.type = EndpointType.ASYNC
    access = WebhookAccess(BASE, KEY, 10000)
    made = build_worker_run_spec(
        endpoint, worker, product=product, box=box, gpus=[], node_id="", registry_auth=None, webhook=access
    )
    assert [(p.container_port, p.host_ip) for p in made.ports] == [(9000, "127.0.0.1")]
    with pytest.raises(ValueError, match="webhook access"):
        build_worker_run_spec(endpoint, worker, product=product, box=box, gpus=[], node_id="", registry_auth=None)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"host": "127.0.0.1", "port": 8080}, "http://host.containers.internal:8080"),
        ({"public_url": "http://localhost:9000/"}, "http://host.containers.internal:9000"),
        ({"host": "0.0.0.0", "public_address": "192.0.2.2", "port": 8080}, "http://192.0.2.2:8080"),
        ({"public_url": "https://dockyard.example.com"}, "https://dockyard.example.com"),
    ],
)
def test_webhook_base_url_is_the_server_as_a_container_sees_it(fields: dict[str, Any], expected: str) -> None:
    assert webhook_base_url(Settings(**fields)) == expected


def test_a_spec_stored_without_a_health_check_is_probed_on_its_first_port() -> None:
    """The default the API fills in, applied as well to a spec stored without one: never port 80 behind the
    user's back while the worker serves elsewhere."""
    ports = [PortSpec(container_port=9000), PortSpec(container_port=9001)]
    assert health_check(WorkloadSpec(image="i", ports=ports)) == HealthCheck(path="/health", port=9000)
    given = HealthCheck(path="/ping", port=9001)
    assert health_check(WorkloadSpec(image="i", ports=ports, health_check=given)) == given
    assert health_check(WorkloadSpec(image="i")) == HealthCheck(path="/health", port=80)


def test_an_async_worker_publishes_no_health_check_port() -> None:
    spec = run_spec(EndpointType.ASYNC)
    assert [port.container_port for port in spec.ports] == [9000]  # its own port only, not the check's 8000
