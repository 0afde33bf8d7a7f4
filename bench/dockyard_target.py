"""Dockyard's gateway as the benchmarks run it: a real `dockyard server` (SQLite in a fresh data dir, the local
Podman through the run's own API service), a real API key, and a sync endpoint of the no-op worker image created
through the API with one worker. Requests go to the endpoint's `url` (`{server}/{endpoint_id}`) with the key."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench import podman, processes
from bench.target import MAX_CONCURRENT_PER_WORKER, Target
from dockyard.client import ApiError, Client, DockyardError

WORKER_PORT = 8080
ENDPOINT_NAME = "bench-noop"
START_TIMEOUT_S = 120.0
DELETE_TIMEOUT_S = 60.0


def _endpoint_request(image: str) -> dict[str, Any]:
    return {
        "type": "sync",
        "name": ENDPOINT_NAME,
        "product_id": "serverless.cpu",
        "image": image,
        "ports": [WORKER_PORT],
        "health_check": {"path": "/health", "port": WORKER_PORT},
        "worker_config": {
            "min_replicas": 1,
            "max_replicas": 1,
            "max_concurrent_per_worker": MAX_CONCURRENT_PER_WORKER,
            "request_timeout": 60,
        },
    }


def create_key(env: dict[str, str], workdir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", "admin", "create-key", "--org", "bench"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise processes.StartFailed(f"dockyard admin create-key failed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def installation_id(data_dir: Path) -> str | None:
    """The id that labels every runtime object of this run's Dockyard, from its own database."""
    try:
        with sqlite3.connect(data_dir / "dockyard.db") as db:
            row = db.execute("SELECT value FROM settings WHERE key = 'installation_id'").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def delete_endpoint(client: Client, endpoint_id: str) -> None:
    """Delete through the API and wait until the endpoint is gone, so Dockyard itself removes its worker."""
    client.delete_endpoint(endpoint_id)
    deadline = time.monotonic() + DELETE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            client.get_endpoint(endpoint_id)
        except ApiError as exc:
            if exc.code == 404:
                return
            raise
        time.sleep(0.5)


@contextmanager
def dockyard_gateway(workdir: Path, engine_url: str, image: str) -> Iterator[tuple[Target, int]]:
    """Run the server and the endpoint; yield the endpoint as a `Target` and the host port its one worker's
    container publishes (on every interface, so loopback reaches it). On exit, whatever happened: the endpoint is
    deleted through the API, the server stopped, and any container still labelled with this installation removed."""
    data_dir = workdir / "dockyard-data"
    data_dir.mkdir()
    port = processes.free_port()
    server_url = f"http://127.0.0.1:{port}"
    env = {
        "DOCKYARD_DATA_DIR": str(data_dir),
        "DOCKYARD_ENGINE_URL": engine_url,
        "DOCKYARD_HOST": "127.0.0.1",
        "DOCKYARD_PORT": str(port),
        "DOCKYARD_PUBLIC_URL": server_url,
    }
    log = workdir / "dockyard-server.log"
    server = None
    try:
        key = create_key({**os.environ, **env}, workdir)
        server = processes.start([sys.executable, "-m", "dockyard", "server"], log, env)
        processes.wait_http(f"{server_url}/healthz", server, log, START_TIMEOUT_S)
        with Client(server_url, key) as client:
            endpoint_id = str(client.create_endpoint(_endpoint_request(image))["id"])
            try:
                endpoint = client.wait_for_endpoint(endpoint_id, timeout=START_TIMEOUT_S)
                worker_id = next(w["id"] for w in endpoint["workers"] if w["status"]["status"] == "ready")
                gateway = Target(f"{str(endpoint['url']).rstrip('/')}/noop", {"Authorization": f"Bearer {key}"})
                yield gateway, podman.published_port(engine_url, worker_id, WORKER_PORT)
            finally:
                try:
                    delete_endpoint(client, endpoint_id)
                except DockyardError as exc:
                    # The label sweep below still removes the worker; the error that brought us here matters more.
                    print(
                        f"bench: deleting endpoint {endpoint_id} failed ({exc}); removing its worker by label",
                        file=sys.stderr,
                    )
    finally:
        if server is not None:
            processes.stop(server)
        if installation := installation_id(data_dir):
            podman.remove_installation_containers(engine_url, installation)


@contextmanager
def standalone_gateways(workdir: Path, served: Target, workers: int) -> Iterator[Target]:
    """`dockyard gateway --workers N` beside the running server of `dockyard_gateway` (same data dir, so the
    same database); yields `served`, the endpoint, as reached through it. Stopped on exit."""
    port = processes.free_port()
    env = {"DOCKYARD_DATA_DIR": str(workdir / "dockyard-data"), "DOCKYARD_LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "dockyard", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / "dockyard-gateway.log"
    gateway = processes.start([*command, "--workers", str(workers)], log, env)
    try:
        processes.wait_http(f"http://127.0.0.1:{port}/healthz", gateway, log, START_TIMEOUT_S)
        parts = urlsplit(served.url)
        target = Target(urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}")), served.headers)
        # The gateways learn the endpoint's worker from the database within a sync interval; wait for it.
        deadline = time.monotonic() + START_TIMEOUT_S
        while httpx.get(target.url, headers=target.headers, timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise processes.StartFailed(f"{target.url} did not answer 200:\n{processes.log_tail(log)}")
            time.sleep(0.2)
        yield target
    finally:
        processes.stop(gateway)
