"""The Ray Serve side, run as its own process (`python -m bench.ray_app PORT`) so Ray's cluster lives and dies
with it: a local Ray with one Serve replica answering every request with the no-op worker's `BODY`, its HTTP
proxy on `127.0.0.1:PORT`. Prints `ready` once requests are served; shuts Ray down on SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from bench.noop_worker import BODY
from bench.target import MAX_CONCURRENT_PER_WORKER


class Noop:
    """The no-op handler: 200 with `BODY`, whatever the request. Ray's default of 5 ongoing requests per
    replica is raised to what Dockyard's endpoint allows its worker, so both queue the same way."""

    async def __call__(self, request: Request) -> Response:
        return Response(BODY, media_type="text/plain")


# Applied as a call rather than as a decorator: mypy then sees the Deployment it returns (and its `bind`).
NOOP = serve.deployment(num_replicas=1, max_ongoing_requests=MAX_CONCURRENT_PER_WORKER)(Noop)


def main(port: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # The dashboard is not measured and would take CPU from what is; the object store is unused here.
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(NOOP.bind(), route_prefix="/")
        print("ready", flush=True)
        stop.wait()
    finally:
        # The cluster is this process's own: shutting Ray down ends Serve's proxy and replica with it.
        ray.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]))
