"""The example GPU worker as a sync endpoint's worker: the model of model.py behind a small HTTP server on the
standard library.

It listens at once and loads the model onto the GPU meanwhile, so its cold start can be read by phase:
- GET /health: 503 `{"status": "loading", "phases"}` until the model is on the GPU, then 200
  `{"status": "ready", "device", "gpu", "gpu_uuid", "visible_gpus", "phases"}` (model.py's `Phases`).
- POST /infer: the model's answer to a JSON request (model.py's docstring); 400 for a request it cannot answer,
  503 while loading.
A model that cannot be loaded (no CUDA in the container, say) ends the process with status 1, the reason on stderr.

Environment: PORT (default 8080), DEVICE (default `cuda`).
"""

import time

PROCESS_START = time.time()

import json  # noqa: E402 - the process's start is taken before anything else is loaded
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from typing import Any  # noqa: E402

import model  # noqa: E402

phases = model.Phases(PROCESS_START)
phases.mark("torch_imported")
loaded: list[model.Worker] = []  # the worker, once its model is on the GPU


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body leave in two writes: with Nagle's algorithm on, the body waits for the client's
    # delayed acknowledgement of the head (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        """Requests are not logged: the benchmark sends thousands."""

    def _json(self, status: int, value: dict[str, Any]) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path != "/health":
            return self._json(404, {"error": f"no route GET {self.path}"})
        if not loaded:
            return self._json(503, {"status": "loading", "phases": phases.as_dict()})
        worker = loaded[0]
        self._json(
            200,
            {
                "status": "ready",
                "device": str(worker.device),
                "gpu": worker.gpu,
                "gpu_uuid": worker.gpu_uuid,
                "visible_gpus": worker.visible_gpus,
                "phases": phases.as_dict(),
            },
        )

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/infer":
            return self._json(404, {"error": f"no route POST {self.path}"})
        if not loaded:
            return self._json(503, {"error": "the model is loading"})
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise model.BadRequest("the body must be a JSON object")
            answer = loaded[0].handle(request)
        except ValueError as exc:  # json's errors and model.BadRequest
            return self._json(400, {"error": str(exc)})
        self._json(200, answer)


def load() -> None:
    try:
        loaded.append(model.Worker(phases, os.environ.get("DEVICE", "cuda")))
    except Exception:  # any failure to load ends the worker, with the reason in its log
        traceback.print_exc()
        print("gpu-worker: the model could not be loaded; exiting", file=sys.stderr, flush=True)
        os._exit(1)
    print(f"gpu-worker: model on {loaded[0].device} ({loaded[0].gpu}); phases {phases.as_dict()}", flush=True)


if __name__ == "__main__":
    # As PID 1 the process gets no default SIGTERM handling: without this every stop waits out the grace period.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # The default backlog of 5 refuses connections when a client opens dozens at once.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler)
    server.daemon_threads = True
    threading.Thread(target=load, daemon=True).start()
    print("gpu-worker: listening; loading the model", flush=True)
    server.serve_forever()
