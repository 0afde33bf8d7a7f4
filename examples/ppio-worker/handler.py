"""An async-endpoint worker written with PPIO's official worker SDK (`ppio-gpus`, from PyPI), unchanged: run in an
async endpoint, it takes jobs over the webhook protocol whose URLs Dockyard injects (`PPIO_WEBHOOK_*`).

One image serves three handlers; the environment variable HANDLER picks one (and CONCURRENCY how many jobs a
worker runs at once, default 1):
- `echo` (the default): answers `{"sdk", "worker", "input"}`. The input may ask it to wait first
  (`{"sleep": SECONDS}`) or to fail (`{"fail": "message"}` raises that message).
- `generator`: yields `{"part": i, "worker"}` for i in 0..`parts`-1 (default 3), `delay` seconds (default 0.1)
  before each; `{"fail": "message"}` raises after the parts. Parts are streamed and aggregated (the
  `return_aggregate_stream` setting), so the job's output is the list of parts.
- `sync`: a plain synchronous handler (`def handler(job)`, the SDK's hello-world shape), which blocks the SDK's
  event loop while it runs: for each value of the input's `progress` list it reports that value with the
  SDK's `progress_update` and waits `step` seconds (default 0.5), then waits `sleep` seconds (a blocking
  `time.sleep`), fails on `fail`, and answers like `echo`.

`ppio-gpus` has no local test mode of its own (with no `PPIO_WEBHOOK_GET_JOB` it only stops pinging), so
`--test_input '{"input": {...}}'`, named as in the `runpod` SDK, runs one job through the SDK's own job runner
(`run_job`, or `run_job_generator` aggregated as the worker loop does), prints the result as one JSON line and
exits, 1 when the job failed. Build with the SDK and its dependencies in a build context named `sdk`:

    pip install --target sdk ppio-gpus==0.0.2
    podman build --build-context sdk=sdk -t localhost/dockyard-ppio-worker examples/ppio-worker
"""

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import ppio_gpus
from ppio_gpus.modules.job import run_job, run_job_generator
from ppio_gpus.modules.worker_state import WORKER_ID


async def echo(job: dict[str, Any]) -> dict[str, Any]:
    request = job["input"]
    # Async so that a long sleep leaves the SDK's event loop free to keep polling and reporting.
    await asyncio.sleep(float(request.get("sleep", 0)))
    if "fail" in request:
        raise RuntimeError(str(request["fail"]))
    return {"sdk": "ppio", "worker": WORKER_ID, "input": request}


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
        ppio_gpus.progress_update(job, value)
        time.sleep(float(request.get("step", 0.5)))
    time.sleep(float(request.get("sleep", 0)))
    if "fail" in request:
        raise RuntimeError(str(request["fail"]))
    return {"sdk": "ppio", "worker": WORKER_ID, "input": request}


HANDLERS = {"echo": echo, "generator": generator, "sync": sync}


async def run_test_job(handler: Any, job: dict[str, Any]) -> dict[str, Any]:
    """One job through the SDK's runner; a generator's parts aggregated as the worker loop aggregates them."""
    if handler is not generator:
        result: dict[str, Any] = await run_job(handler, job)
        return result
    parts = []
    async for partial in run_job_generator(handler, job):
        if partial.get("error"):
            return {"error": partial["error"]}
        parts.append(partial["output"])
    return {"output": parts}


def main() -> None:
    name = os.environ.get("HANDLER", "echo")
    if name not in HANDLERS:
        sys.exit(f"HANDLER={name!r} is unknown; use one of {', '.join(HANDLERS)}")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--test_input")
    args, rest = parser.parse_known_args()
    if args.test_input is None:
        sys.argv = [sys.argv[0], *rest]
        # CONCURRENCY: jobs one worker runs at once (the SDK's `concurrency_modifier`). With the SDK's default of 1
        # it takes a job, then waits a second before asking for the next: about one job a second.
        concurrency = int(os.environ.get("CONCURRENCY", "1"))
        ppio_gpus.start(
            {
                "handler": HANDLERS[name],
                "return_aggregate_stream": True,
                "concurrency_modifier": lambda _current: concurrency,
            }
        )
        return
    job = {"id": "local_test", **json.loads(args.test_input)}
    result = asyncio.run(run_test_job(HANDLERS[name], job))
    print(json.dumps(result), flush=True)
    sys.exit(1 if result.get("error") else 0)


if __name__ == "__main__":
    main()
