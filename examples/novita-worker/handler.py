"""An async-endpoint worker written with Novita's official worker SDK (`novita-gpus`, from PyPI), unchanged: run in an
async endpoint, it takes jobs over the webhook protocol whose URLs Dockyard injects (`NOVITA_WEBHOOK_*`).

One image serves two handlers; the environment variable HANDLER picks one:
- `echo` (the default): answers `{"sdk", "worker", "input"}`, after waiting `sleep` seconds without blocking the
  SDK's event loop; `{"fail": "message"}` raises that message.
- `sync`: a plain synchronous handler (`def handler(job)`), which blocks the SDK's event loop while it runs: for
  each value of the input's `progress` list it reports that value with the SDK's `progress_update` and waits
  `step` seconds (default 0.5), then waits `sleep` seconds (a blocking `time.sleep`), and answers like `echo`.

Build with the SDK and its dependencies in a build context named `sdk`:

    pip install --target sdk novita-gpus==0.0.1
    podman build --build-context sdk=sdk -t localhost/dockyard-novita-worker examples/novita-worker
"""

import asyncio
import os
import sys
import time
from typing import Any

import novita_gpus
from novita_gpus.modules.worker_state import WORKER_ID


async def echo(job: dict[str, Any]) -> dict[str, Any]:
    request = job["input"]
    await asyncio.sleep(float(request.get("sleep", 0)))
    if "fail" in request:
        raise RuntimeError(str(request["fail"]))
    return {"sdk": "novita", "worker": WORKER_ID, "input": request}


def sync(job: dict[str, Any]) -> dict[str, Any]:
    request = job["input"]
    for value in request.get("progress", []):
        novita_gpus.progress_update(job, value)
        time.sleep(float(request.get("step", 0.5)))
    time.sleep(float(request.get("sleep", 0)))
    return {"sdk": "novita", "worker": WORKER_ID, "input": request}


HANDLERS = {"echo": echo, "sync": sync}

if __name__ == "__main__":
    name = os.environ.get("HANDLER", "echo")
    if name not in HANDLERS:
        sys.exit(f"HANDLER={name!r} is unknown; use one of {', '.join(HANDLERS)}")
    novita_gpus.start({"handler": HANDLERS[name]})
