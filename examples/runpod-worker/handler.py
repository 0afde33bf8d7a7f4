"""An async-endpoint worker written with Runpod's official worker SDK (`runpod`, from PyPI), unchanged: run in an
async endpoint, it takes jobs over the webhook protocol whose URLs Dockyard injects (`RUNPOD_WEBHOOK_*`).

One image serves three handlers; the environment variable HANDLER picks one (and CONCURRENCY how many jobs a
worker runs at once, default 1):
- `echo` (the default): answers `{"sdk", "worker", "input"}`. The input may ask it to wait first
  (`{"sleep": SECONDS}`) or to fail (`{"fail": "message"}` raises that message).
- `generator`: yields `{"part": i, "worker"}` for i in 0..`parts`-1 (default 3), `delay` seconds (default 0.1)
  before each; `{"fail": "message"}` raises after the parts. Parts are streamed and aggregated
  (`return_aggregate_stream`), so the job's output is the list of parts.
- `sync`: a plain synchronous handler (`def handler(job)`, the SDK's hello-world shape), which blocks the SDK's
  event loop while it runs: for each value of the input's `progress` list it reports that value with the
  SDK's `progress_update` and waits `step` seconds (default 0.5), then waits `sleep` seconds (a blocking
  `time.sleep`), fails on `fail`, and answers like `echo`.

The SDK's local testing works as documented: `python3 handler.py --test_input '{"input": {...}}'` runs one job
of the echo handler and exits (1 when it failed); `--rp_serve_api --rp_api_host 0.0.0.0` serves its local job
API (`POST /runsync` aggregates a generator's parts). Build with the SDK and its dependencies in a build
context named `sdk`:

    pip install --target sdk runpod==1.12.0
    podman build --build-context sdk=sdk -t localhost/dockyard-runpod-worker examples/runpod-worker
"""

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import runpod
from runpod.serverless.modules.worker_state import WORKER_ID


async def echo(job: dict[str, Any]) -> dict[str, Any]:
    request = job["input"]
    # Async so that a long sleep leaves the SDK's event loop free to keep polling and reporting.
    await asyncio.sleep(float(request.get("sleep", 0)))
    if "fail" in request:
        raise RuntimeError(str(request["fail"]))
    return {"sdk": "runpod", "worker": WORKER_ID, "input": request}


async def generator(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    request = job["input"]
    for index in range(int(request.get("parts", 3))):
        await asyncio.sleep(float(request.get("delay", 0.1)))
        yield {"part": index, "worker": WORKER_ID}
    if "fail" in request:
        raise RuntimeError(str(request["fail"]))


def sync(job: dict[str, Any]) -> dict[str, Any]:
    request = job["input"]
    for value in request.get("progress", []):
        runpod.serverless.progress_update(job, value)
        time.sleep(float(request.get("step", 0.5)))
    time.sleep(float(request.get("sleep", 0)))
    if "fail" in request:
        raise RuntimeError(str(request["fail"]))
    return {"sdk": "runpod", "worker": WORKER_ID, "input": request}


HANDLERS = {"echo": echo, "generator": generator, "sync": sync}

if __name__ == "__main__":
    name = os.environ.get("HANDLER", "echo")
    if name not in HANDLERS:
        sys.exit(f"HANDLER={name!r} is unknown; use one of {', '.join(HANDLERS)}")
    # CONCURRENCY: jobs one worker runs at once (the SDK's `concurrency_modifier`). With the SDK's default of 1 it
    # takes a job, then waits a second before asking for the next, so a busy worker runs about one job a second.
    concurrency = int(os.environ.get("CONCURRENCY", "1"))
    runpod.serverless.start(
        {
            "handler": HANDLERS[name],
            "return_aggregate_stream": True,
            "concurrency_modifier": lambda _current: concurrency,
        }
    )
