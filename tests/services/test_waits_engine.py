"""Every blocking reason caused for real on Podman, as the API (a queued job's status, the endpoint's GET, `health`)
and the CLI (`dockyard jobs status`, `dockyard endpoints get`) show it, with the seconds it took to appear (printed):
a missing image and a worker that exits (workers failing, then the endpoint failed, whose sync calls are answered
at once), an async worker that never calls in, max replicas 1 under load, a GPU product with no free GPU (a
simulated inventory) and the organization's worker quota reached.

The server is the in-process one of tests/servers.py with fast loops, one for the module but for max replicas (whose
worker must reach it); the crash-loop backoff is shortened so that an endpoint fails within seconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dockyard.cli import app as cli_app
from dockyard.reconcilers import endpoints, endpoints_workers
from tests.conftest import ADMIN_TOKEN
from tests.servers import EngineServer, engine_server, wait_for

pytestmark = pytest.mark.engine

DEADLINE = 40.0  # seconds any reason may take to appear; each appears in a few

# An async worker that takes one job and holds it (never posts a result, never pings): the one worker an endpoint
# with max_replicas 1 may have, busy.
HOLDER = (
    "import os, time, urllib.request as u; "
    "ask = u.Request(os.environ['RUNPOD_WEBHOOK_GET_JOB'].replace('$ID', os.environ['RUNPOD_POD_ID']), "
    "headers={'Authorization': os.environ['RUNPOD_AI_API_KEY']}); "
    "any(u.urlopen(ask, timeout=60).read().strip() for _ in iter(int, 1)); "
    "time.sleep(3600)"
)


def create(server: EngineServer, image: str, *, kind: str = "async", **fields: Any) -> str:
    config = {"min_replicas": 0, "max_replicas": 1, "idle_timeout": 60, "request_timeout": 30}
    body: dict[str, Any] = {
        "type": kind,
        "name": "waits",
        "product_id": "serverless.cpu",
        "image": image,
        "worker_config": {**config, **fields.pop("worker_config", {})},
        **fields,
    }
    if kind == "sync":
        body.setdefault("ports", [8080])
    with server.api() as api:
        answer = api.post("/gpus/v2/endpoints", json=body)
    assert answer.status_code == 200, answer.text
    endpoint_id: str = answer.json()["id"]
    return endpoint_id


def submit(server: EngineServer, endpoint_id: str) -> str:
    with server.api() as api:
        answer = api.post(f"/v2/{endpoint_id}/run", json={"input": {}})
    assert answer.status_code == 200, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def cli(server: EngineServer, tmp_path: Path, *args: str) -> str:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "DOCKYARD_URL": server.url, "DOCKYARD_API_KEY": server.key}
    result = CliRunner().invoke(cli_app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def appears(what: str, check: Callable[[], Any]) -> Any:
    """`wait_for` that prints how long the reason took to appear."""
    began = time.monotonic()
    found = wait_for(what, check, DEADLINE)
    print(f"{what}: appeared in {time.monotonic() - began:.1f} s")
    return found


def job_reason(server: EngineServer, endpoint_id: str, job_id: str, code: str) -> dict[str, Any] | None:
    with server.api() as api:
        view: dict[str, Any] = api.get(f"/v2/{endpoint_id}/status/{job_id}").json()
    reason = view.get("reason")
    return view if isinstance(reason, dict) and reason["code"] == code else None


def endpoint_blocking(server: EngineServer, endpoint_id: str, code: str) -> dict[str, Any] | None:
    with server.api() as api:
        found: dict[str, Any] | None = api.get(f"/gpus/v2/endpoints/{endpoint_id}").json().get("blocking")
    return found if found is not None and found["code"] == code else None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, engine_url: str) -> Iterator[EngineServer]:
    """One server for the module, on loopback (so async workers cannot call in), with a short call-in bound, one
    simulated H100 on a node large enough for its product, and a short crash loop (a backoff of 0.3 s, doubling,
    and failed at the second failure in a row)."""
    data = tmp_path_factory.mktemp("waits")
    gpus: dict[str, Any] = {
        "simulated_gpus": "NVIDIA H100 80GB HBM3:1",
        "node_cpus": 64.0,
        "node_memory_mb": 512 * 1024,
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(endpoints_workers, "BACKOFF_FIRST", 0.3)
        # Failed at the second failure in a row, not the third: a pull of a missing image takes the engine seconds.
        patch.setattr(endpoints, "CRASH_LOOP_FAILURES", 2)
        with engine_server(data, engine_url, worker_call_in_timeout=4, **gpus) as running:
            yield running


def test_a_missing_image_and_a_worker_that_exits_fail_the_endpoint_which_answers_at_once(
    server: EngineServer, busybox_image: str, tmp_path: Path
) -> None:
    missing = create(server, "localhost/dockyard-no-such-image:1")
    exits = create(server, busybox_image, command="sh -c 'exit 3'")
    sync_missing = create(
        server, "localhost/dockyard-no-such-image:1", kind="sync", worker_config={"min_replicas": 1, "max_replicas": 1}
    )
    jobs = {endpoint_id: submit(server, endpoint_id) for endpoint_id in (missing, exits)}
    # Each job's reason as it changes, polled until both endpoints are failed: workers fail first, then the endpoint.
    seen: dict[str, list[str]] = {endpoint_id: [] for endpoint_id in jobs}
    views: dict[str, dict[str, Any]] = {}

    def both_failed() -> bool:
        for endpoint_id, job_id in jobs.items():
            with server.api() as api:
                views[endpoint_id] = api.get(f"/v2/{endpoint_id}/status/{job_id}").json()
            code = (views[endpoint_id].get("reason") or {}).get("code", "")
            if not seen[endpoint_id] or seen[endpoint_id][-1] != code:
                seen[endpoint_id].append(code)
        return all(codes[-1] == "ENDPOINT_FAILED" for codes in seen.values())

    appears("both endpoints failed", both_failed)
    for endpoint_id, error in ((missing, "image"), (exits, "code 3")):
        print(f"endpoint {endpoint_id}: its job's reasons in turn {seen[endpoint_id]}")
        assert "WORKERS_FAILING" in seen[endpoint_id]
        view = views[endpoint_id]
        assert error in view["reason"]["message"]
        assert view["position"] == 1
        shown = cli(server, tmp_path, "jobs", "status", endpoint_id, jobs[endpoint_id])
        assert "ENDPOINT_FAILED" in shown
        assert "position" in shown
        assert "ENDPOINT_FAILED" in cli(server, tmp_path, "endpoints", "get", endpoint_id)
        with server.api() as api:
            assert api.get(f"/v1/{endpoint_id}/health").json()["reason"]["code"] == "ENDPOINT_FAILED"
            began = time.monotonic()
            answer = api.post(f"/v2/{endpoint_id}/runsync?wait=60000", json={"input": {}})
            print(f"runsync on failed endpoint {endpoint_id}: answered in {time.monotonic() - began:.3f} s")
        assert answer.json()["status"] == "IN_QUEUE"
        assert answer.json()["reason"]["code"] == "ENDPOINT_FAILED"

    appears("sync endpoint failed", lambda: endpoint_blocking(server, sync_missing, "ENDPOINT_FAILED"))
    # The gateway hears of it with the endpoint's next pass: a sync call is answered at once, with the reason.
    with httpx.Client(timeout=30, headers=server.headers) as gateway:
        answer = appears("503 at the gateway", lambda: _refused(gateway, f"{server.url}/{sync_missing}/x"))
        began = time.monotonic()
        answer = gateway.post(f"{server.url}/{sync_missing}/x", json={})
        took = time.monotonic() - began
    print(f"a sync call to the failed endpoint: {answer.status_code} in {took:.3f} s")
    assert answer.status_code == 503
    assert took < 1.0
    assert answer.headers["retry-after"]
    assert answer.json()["reason"] == "ENDPOINT_FAILED"
    assert "failed before becoming ready" in answer.json()["message"]


def _refused(gateway: httpx.Client, url: str) -> httpx.Response | None:
    answer = gateway.post(url, json={})
    return answer if answer.status_code == 503 else None


def test_an_async_worker_that_never_calls_in_names_its_webhook_url(
    server: EngineServer, busybox_image: str, tmp_path: Path
) -> None:
    # The server listens on loopback only (engine_server's default): the URL the worker is given never answers.
    endpoint_id = create(server, busybox_image, command="sleep 3600")
    job_id = submit(server, endpoint_id)
    view = appears("WORKERS_NOT_CALLING_IN", lambda: job_reason(server, endpoint_id, job_id, "WORKERS_NOT_CALLING_IN"))
    assert server.settings.worker_webhook_url in view["reason"]["message"]
    assert view["estimatedStartAt"] is None
    assert "WORKERS_NOT_CALLING_IN" in cli(server, tmp_path, "jobs", "status", endpoint_id, job_id)
    assert "WORKERS_NOT_CALLING_IN" in cli(server, tmp_path, "endpoints", "health", endpoint_id)


def test_max_replicas_1_under_load(tmp_path: Path, engine_url: str, python_image: str) -> None:
    with engine_server(tmp_path / "data", engine_url, host="0.0.0.0") as server:
        endpoint_id = create(server, python_image, entrypoint="python3", command=f"-c {_quoted(HOLDER)}")
        jobs = [submit(server, endpoint_id) for _ in range(3)]
        view = appears("MAX_REPLICAS", lambda: job_reason(server, endpoint_id, jobs[2], "MAX_REPLICAS"))
        assert view["position"] == 2  # the first is held by the one worker
        assert "--max-replicas" in view["reason"]["message"]
        shown = cli(server, tmp_path, "jobs", "status", endpoint_id, jobs[2])
        assert "MAX_REPLICAS" in shown
        assert "MAX_REPLICAS" in cli(server, tmp_path, "endpoints", "get", endpoint_id)


def test_a_gpu_product_with_no_free_gpu(server: EngineServer, busybox_image: str, tmp_path: Path) -> None:
    # An endpoint that wants two workers of the one H100: the first holds it, the second finds no node with one free.
    endpoint_id = create(
        server,
        busybox_image,
        product_id="serverless.h100",
        command="sleep 3600",
        worker_config={"min_replicas": 2, "max_replicas": 2},
    )
    job_id = submit(server, endpoint_id)
    view = appears("NO_FREE_GPU", lambda: job_reason(server, endpoint_id, job_id, "NO_FREE_GPU"))
    assert "free GPU(s) of its product" in view["reason"]["message"]
    assert "NO_FREE_GPU" in cli(server, tmp_path, "jobs", "status", endpoint_id, job_id)
    assert "NO_FREE_GPU" in cli(server, tmp_path, "endpoints", "get", endpoint_id)


def test_the_organizations_worker_quota_reached(server: EngineServer, busybox_image: str, tmp_path: Path) -> None:
    held = replace(server, key=_key_with_quota(server.url, "no-workers", {"workers": 0}))
    endpoint_id = create(held, busybox_image, command="sleep 3600")
    job_id = submit(held, endpoint_id)
    view = appears("QUOTA_REACHED", lambda: job_reason(held, endpoint_id, job_id, "QUOTA_REACHED"))
    assert "quota" in view["reason"]["message"]
    assert "QUOTA_REACHED" in cli(held, tmp_path, "jobs", "status", endpoint_id, job_id)
    assert "QUOTA_REACHED" in cli(held, tmp_path, "endpoints", "health", endpoint_id)


def _key_with_quota(url: str, org: str, limits: dict[str, int]) -> str:
    """A key of a new organization given `limits`, through the operator's API."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        org_id = admin.post("/admin/v1/organizations", json={"name": org}).json()["id"]
        assert admin.put(f"/admin/v1/organizations/{org_id}/quotas", json=limits).status_code == 200
        key: str = admin.post(f"/admin/v1/organizations/{org_id}/keys", json={}).json()["key"]
        return key


def _quoted(script: str) -> str:
    """`script` as one shell-quoted argument of the endpoint's command string."""
    return "'" + script.replace("'", "'\\''") + "'"
