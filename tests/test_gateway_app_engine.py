"""`dockyard gateway` on its own, beside a real server on real Podman: it learns endpoints and workers from the
database, serves an endpoint scaled to zero (its load report makes the server's autoscaler start a worker,
and its own prober sees the worker ready), counts in the server's figures while requests are in flight, and
keeps a drained worker until its requests there are answered; with `--workers`, several such processes share
its port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.gateway_app import create_gateway_app
from tests.conftest import ADMIN_TOKEN
from tests.engine import remove_networks
from tests.live import free_port, serving
from tests.servers import new_key, wait_for

pytestmark = pytest.mark.engine

OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # what reads `/metrics`


@pytest.fixture
def settings(tmp_path: Path, engine_url: str, worker_images: dict[str, str]) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'dockyard.db'}",
        admin_token=ADMIN_TOKEN,
        public_address="127.0.0.1",
        engine_url=engine_url,
        reconcile_interval=0.5,
        autoscale_interval=0.2,
        health_check_interval=0.5,
        gateway_sync_interval=0.2,
        gateway_report_interval=0.2,
        stop_timeout_seconds=2,
    )


@pytest.fixture
def cleanup(engine_url: str) -> Iterator[list[str]]:
    installations: list[str] = []
    yield installations
    engine = docker.DockerClient(base_url=engine_url)
    for installation in installations:
        for container in engine.containers.list(all=True, filters={"label": f"dockyard.installation={installation}"}):
            container.remove(force=True)
        remove_networks(installation)
    engine.close()


def sync_endpoint(server_url: str, **worker_config: int) -> tuple[httpx.Client, str]:
    """A sync endpoint of the test worker (at most one worker) in a new organization: a client of the server's
    API with that organization's key, and the endpoint's id."""
    body = {
        "type": "sync",
        "name": "via-gateway",
        "product_id": "serverless.cpu",
        "image": "localhost/dockyard-worker:1",
        "ports": [8080],
        "worker_config": {"max_replicas": 1, "request_timeout": 60, **worker_config},
    }
    auth = {"Authorization": f"Bearer {new_key(server_url, 'gw')}"}
    api = httpx.Client(base_url=server_url, headers=auth, timeout=30)
    answer = api.post("/gpus/v2/endpoints", json=body)
    assert answer.status_code == 200, answer.text
    endpoint_id: str = answer.json()["id"]
    return api, endpoint_id


def test_a_standalone_gateway_serves_an_endpoint_from_zero(settings: Settings, cleanup: list[str]) -> None:
    server_app = create_app(settings)
    with serving(server_app) as server_url:
        cleanup.append(server_app.state.context.installation_id)
        api, endpoint_id = sync_endpoint(server_url, min_replicas=0, idle_timeout=60)
        auth = {"Authorization": api.headers["Authorization"]}

        with serving(create_gateway_app(settings)) as gateway_url:
            health = httpx.get(f"{gateway_url}/healthz").json()
            assert health["status"] == "ok"
            unknown = httpx.get(f"{gateway_url}/not-an-endpoint/x", headers=auth)
            assert unknown.status_code == 404
            assert "GET /gpus/v2/endpoints" in unknown.json()["message"]

            async def slow_then_fast() -> tuple[httpx.Response, httpx.Response]:
                async with (
                    httpx.AsyncClient(base_url=gateway_url, headers=auth, timeout=60) as client,
                    httpx.AsyncClient(base_url=server_url, headers=auth, timeout=30) as server_api,
                ):
                    slow = asyncio.create_task(client.get(f"/{endpoint_id}/sleep?s=2"))
                    # The request is held here while the server, told by this gateway's report, starts a worker.
                    deadline = time.monotonic() + 30
                    while True:
                        workers = (await server_api.get(f"/gpus/v2/endpoints/{endpoint_id}")).json()["workers"]
                        if any(w["status"]["status"] == "ready" for w in workers):
                            break
                        assert time.monotonic() < deadline, "no worker became ready for a request held by the gateway"
                        await asyncio.sleep(0.1)
                    fast = await client.post(f"/{endpoint_id}/echo", content=b"through the gateway")
                    return await slow, fast

            slow, fast = asyncio.run(slow_then_fast())
            assert slow.status_code == 200, slow.text
            assert fast.status_code == 200, fast.text
            assert fast.json()["body"] == "through the gateway"
            assert fast.headers["x-dockyard-worker"] == slow.headers["x-dockyard-worker"]
            assert httpx.get(f"{gateway_url}/metrics").status_code == 401  # the operator's, as the server's
            metrics = httpx.get(f"{gateway_url}/metrics", headers=OPERATOR).text
            assert f'dockyard_gateway_requests_total{{code="200",endpoint="{endpoint_id}"}} 2.0' in metrics

        events = api.get(f"/gpus/v2/endpoints/{endpoint_id}/events").json()["data"]
        scaled = [e["message"] for e in events if e["type"] == "ScaledUp"]
        assert scaled, events
        # The server's own gateway saw no request: the queued one it counted is the stand-alone gateway's report.
        assert "1 queued" in scaled[-1]
        api.close()


def test_a_worker_drained_while_a_standalone_gateway_holds_its_request_answers_it_first(
    settings: Settings, cleanup: list[str]
) -> None:
    """Scaled to zero while the only worker runs a request that came through `dockyard gateway`: the server's own
    table holds nothing, but the worker is removed only once that gateway's report no longer lists it."""
    server_app = create_app(settings)
    with serving(server_app) as server_url:
        cleanup.append(server_app.state.context.installation_id)
        api, endpoint_id = sync_endpoint(server_url, min_replicas=1)
        auth = {"Authorization": api.headers["Authorization"]}

        def workers() -> list[dict[str, Any]]:
            listed: list[dict[str, Any]] = api.get(f"/gpus/v2/endpoints/{endpoint_id}").json()["workers"]
            return listed

        wait_for("a ready worker", lambda: [w["status"]["status"] for w in workers()] == ["ready"], deadline=60)

        with serving(create_gateway_app(settings)) as gateway_url:
            gateway = httpx.Client(base_url=gateway_url, headers=auth, timeout=30)
            wait_for("the gateway routing", lambda: gateway.post(f"/{endpoint_id}/echo").status_code == 200)
            in_flight = f'dockyard_gateway_in_flight{{endpoint="{endpoint_id}"}} 1.0'

            def held() -> bool:
                return in_flight in gateway.get("/metrics", headers=OPERATOR).text

            with ThreadPoolExecutor(1) as pool:
                slow = pool.submit(gateway.get, f"/{endpoint_id}/sleep?s=3")
                wait_for("the request at the worker", held)
                time.sleep(3 * settings.gateway_report_interval)  # reported: the server's reads see it held
                scaled = api.put(
                    f"/gpus/v2/endpoints/{endpoint_id}", json={"worker_config": {"min_replicas": 0, "max_replicas": 0}}
                )
                assert scaled.status_code == 200, scaled.text
                wait_for("the worker draining", lambda: [w["status"]["status"] for w in workers()] == ["draining"], 30)
                answer = slow.result(timeout=30)
            assert answer.status_code == 200, answer.text
            wait_for("the drained worker removed", lambda: workers() == [], deadline=30)
            gateway.close()
        api.close()


def test_gateway_workers_share_one_port(settings: Settings, tmp_path: Path) -> None:
    """`dockyard gateway --workers 2`: two processes, each a whole gateway (its own id), answer on one port."""
    with serving(create_app(settings)):  # migrates the database the gateways read
        port = free_port()
        env = {
            **os.environ,
            "DOCKYARD_DATA_DIR": str(settings.data_dir),
            "DOCKYARD_DATABASE_URL": settings.database_url or "",
            "DOCKYARD_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        command = [sys.executable, "-m", "dockyard", "gateway", "--host", "127.0.0.1", "--port", str(port)]
        log = (tmp_path / "gateway.log").open("wb")
        gateway = subprocess.Popen([*command, "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            seen: set[str] = set()

            def both_answered() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    # A new connection each time: the kernel hands each to one of the processes.
                    seen.add(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["gateway"])
                return len(seen) == 2

            wait_for("both gateway processes answering /healthz", both_answered, deadline=60)
            assert len({gateway_id.split(":")[1] for gateway_id in seen}) == 2, seen  # two process ids
        finally:
            gateway.terminate()
            assert gateway.wait(timeout=30) == 0, (tmp_path / "gateway.log").read_text()[-3000:]
            log.close()
