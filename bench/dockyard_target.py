"""Dockyard's gateway as the benchmarks run it: a real `dockyard server` (SQLite in a fresh data dir, the local
Podman through the run's own API service), a real API key, and a sync endpoint of the no-op worker image created
through the API with one worker. Requests go to the endpoint's `url` (`{server}/{endpoint_id}`) with the key."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench import podman, processes
from bench.dockyard_server import START_TIMEOUT_S, delete_endpoint, dockyard_server
from bench.target import MAX_CONCURRENT_PER_WORKER, Target
from dockyard.client import Client, DockyardError

WORKER_PORT = 8080
ENDPOINT_NAME = "bench-noop"


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


@contextmanager
def dockyard_gateway(workdir: Path, engine_url: str, image: str) -> Iterator[tuple[Target, int, Callable[[int], None]]]:
    """Run the server and the endpoint; yield the endpoint as a `Target`, the host port its one worker's container
    publishes (on loopback), and what sets the endpoint's `max_concurrent_per_worker` through the API (the gateway
    applies it once the update has committed; the worker stays). On exit, whatever happened: the endpoint is
    deleted through the API, then the server stopped and its containers removed (bench/dockyard_server.py)."""
    with dockyard_server(workdir, engine_url) as server, Client(server.url, server.key) as client:
        endpoint_id = str(client.create_endpoint(_endpoint_request(image))["id"])
        try:
            endpoint = client.wait_for_endpoint(endpoint_id, timeout=START_TIMEOUT_S)
            worker_id = next(w["id"] for w in endpoint["workers"] if w["status"]["status"] == "ready")
            gateway = Target(f"{str(endpoint['url']).rstrip('/')}/noop", server.headers, server.pid)

            def limit(per_worker: int) -> None:
                config = {"max_replicas": 1, "max_concurrent_per_worker": per_worker}
                client.update_endpoint(endpoint_id, {"worker_config": config})

            yield gateway, podman.published_port(engine_url, worker_id, WORKER_PORT), limit
        finally:
            try:
                delete_endpoint(client, endpoint_id)
            except DockyardError as exc:
                # The label sweep on the server's exit still removes the worker; the error that brought us here
                # matters more.
                print(
                    f"bench: deleting endpoint {endpoint_id} failed ({exc}); removing its worker by label",
                    file=sys.stderr,
                )


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
        target = Target(urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}")), served.headers, gateway.pid)
        # The gateways learn the endpoint's worker from the database within a sync interval; wait for it.
        deadline = time.monotonic() + START_TIMEOUT_S
        while httpx.get(target.url, headers=target.headers, timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise processes.StartFailed(f"{target.url} did not answer 200:\n{processes.log_tail(log)}")
            time.sleep(0.2)
        yield target
    finally:
        processes.stop(gateway)
