"""A scale-to-zero endpoint of the no-op worker on a bench server (bench/dockyard_server.py), as the cold-start
and autoscaling groups drive it: its creation request, what its `/metrics` say about it, and waiting for its
live worker count.

Both groups start their server through `server()`, with `autoscale_interval` `AUTOSCALE_INTERVAL_S` (the default,
set so that it stays what the sections state): the autoscaler's tick decides how soon an idle worker goes."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.dockyard_server import Server, delete_endpoint, dockyard_server
from dockyard.client import Client, DockyardError

WORKER_PORT = 8080
AUTOSCALE_INTERVAL_S = 0.5
# Statuses of a worker that counts towards the endpoint's size: wanted and not on its way out.
LIVE = ("pending", "starting", "ready")


def server(workdir: Path, engine_url: str) -> AbstractContextManager[Server]:
    """A bench server (see `dockyard_server`) whose autoscaler ticks every `AUTOSCALE_INTERVAL_S`."""
    return dockyard_server(workdir, engine_url, autoscale_interval=f"{AUTOSCALE_INTERVAL_S:g}")


def endpoint_request(
    name: str, image: str, *, max_replicas: int, max_concurrent: int, idle_timeout_s: int, per_worker: int
) -> dict[str, Any]:
    """A sync endpoint of `image` at zero workers when idle, scaled by the concurrency policy (`per_worker`
    requests in flight or queued per worker)."""
    return {
        "type": "sync",
        "name": name,
        "product_id": "serverless.cpu",
        "image": image,
        "ports": [WORKER_PORT],
        "health_check": {"path": "/health", "port": WORKER_PORT},
        "worker_config": {
            "min_replicas": 0,
            "max_replicas": max_replicas,
            "max_concurrent_per_worker": max_concurrent,
            "idle_timeout": idle_timeout_s,
            "request_timeout": 60,
        },
        "policy": {"type": "concurrency", "value": per_worker},
    }


@contextmanager
def endpoint(server: Server, request: dict[str, Any]) -> Iterator[tuple[Client, str, str]]:
    """Create the endpoint; yield an API client, its id and the URL requests go to (the no-op worker answers
    any path). On exit it is deleted through the API and waited for, so Dockyard removes its workers itself
    (the server's exit sweeps whatever is left by label)."""
    with Client(server.url, server.key) as client:
        endpoint_id = str(client.create_endpoint(request)["id"])
        try:
            url = f"{str(client.get_endpoint(endpoint_id)['url']).rstrip('/')}/noop"
            yield client, endpoint_id, url
        finally:
            try:
                delete_endpoint(client, endpoint_id)
            except DockyardError as exc:
                # The server's exit still removes the workers by label; the error that brought us here matters more.
                print(
                    f"bench: deleting endpoint {endpoint_id} failed ({exc}); its workers go by label", file=sys.stderr
                )


def live_workers(endpoint: dict[str, Any]) -> int:
    """Workers of an endpoint's GET that count towards its size (see `LIVE`)."""
    return sum(1 for worker in endpoint.get("workers") or [] if worker["status"]["status"] in LIVE)


def wait_for_no_workers(client: Client, endpoint_id: str, timeout_s: float) -> None:
    """Return once the endpoint lists no worker at all, none draining or stopping either: a cold start measured
    then finds the reconciler with nothing left to do. `TimeoutError` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while client.get_endpoint(endpoint_id).get("workers"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"endpoint {endpoint_id} still had workers after {timeout_s:g} s")
        time.sleep(0.2)


def parse_metrics(text: str, endpoint_id: str) -> dict[str, float]:
    """The samples of a `/metrics` page whose only label is this endpoint, by sample name (`_sum` and `_count`
    suffixes included): the gateway's gauges and the per-endpoint histograms' totals."""
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels == {"endpoint": endpoint_id}:
                figures[sample.name] = sample.value
    return figures


def metrics(http: httpx.Client, server: Server, endpoint_id: str) -> dict[str, float]:
    """This endpoint's samples on the server's `/metrics` now (see `parse_metrics`)."""
    response = http.get(f"{server.url}/metrics", headers=server.metrics_headers)
    response.raise_for_status()
    return parse_metrics(response.text, endpoint_id)
