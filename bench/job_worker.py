"""The async worker of the hand-off benchmark: on the standard library only (its image has python3 and nothing
else), it speaks the webhook protocol whose URLs Dockyard puts in every async worker's environment (the
`RUNPOD_WEBHOOK_*` templates, services/worker_runspec.py), as the runpod SDK does, minus everything that is not
taking and finishing a job.

Contract: one job at a time. It long-polls job-take; the moment a job's answer is read it notes `time.time()`
(the host's clock: a container shares the host kernel's), and posts as the job's output `{"received_at": that
time}`, so the benchmark can tell when the job reached the worker. A 204 (nothing within the server's wait) is
polled again at once; a failed call is retried after a short pause. SIGTERM ends it."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

RETRY_PAUSE_S = 0.2
TIMEOUT_S = 60.0


def _call(url: str, key: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Authorization": key})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
        return int(answer.status), bytes(answer.read())


def main() -> None:
    worker_id = os.environ["RUNPOD_POD_ID"]
    key = os.environ["RUNPOD_AI_API_KEY"]
    take = os.environ["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", worker_id)
    done = os.environ["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", worker_id)
    print(f"job worker {worker_id} taking from {take}", flush=True)
    while True:
        try:
            status, body = _call(take, key)
            received_at = time.time()
            if status != 200:
                continue
            job = json.loads(body)
            result = json.dumps({"output": {"received_at": received_at}}).encode()
            _call(done.replace("$ID", job["id"]), key, result)
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            print(f"job worker: {type(exc).__name__}: {exc}", flush=True)
            time.sleep(RETRY_PAUSE_S)


if __name__ == "__main__":
    # As PID 1 the process gets no default SIGTERM handling: without this, every stop would wait out the
    # engine's grace period and end in SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
