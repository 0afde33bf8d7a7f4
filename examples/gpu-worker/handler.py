"""The example GPU worker as an async endpoint's worker, on PPIO's official worker SDK (`ppio-gpus`) unchanged: the
same model and handler as server.py (model.py), loaded onto the GPU before the SDK starts taking jobs over the
webhook protocol whose URLs Dockyard injects (`PPIO_WEBHOOK_*`).

A job's input is a request as model.py describes it, its output the model's answer, `phases` included (the first
job's answer carries `first_answer`). A job the model cannot answer fails with the reason. A model that cannot be
loaded ends the process with status 1 before any job is taken.

Environment: DEVICE (default `cuda`).
"""

import time

PROCESS_START = time.time()

import os  # noqa: E402 - the process's start is taken before anything else is loaded
import sys  # noqa: E402
from typing import Any  # noqa: E402

import model  # noqa: E402
import ppio_gpus  # noqa: E402

phases = model.Phases(PROCESS_START)
phases.mark("torch_imported")


def main() -> None:
    try:
        worker = model.Worker(phases, os.environ.get("DEVICE", "cuda"))
    except Exception as exc:  # the reason goes to the log the endpoint keeps
        sys.exit(f"gpu-worker: the model could not be loaded: {exc}")
    print(f"gpu-worker: model on {worker.device} ({worker.gpu}); phases {phases.as_dict()}", flush=True)

    def handler(job: dict[str, Any]) -> dict[str, Any]:
        # A plain function: one forward pass is shorter than anything the SDK's event loop waits on.
        return worker.handle(job["input"])

    ppio_gpus.start({"handler": handler})


if __name__ == "__main__":
    main()
