"""An example endpoint worker: a small HTTP server on the standard library only (its image has python3 and
nothing else). The quickstart serves it as the demo endpoint and the tests run it as their worker.

Routes (any method unless said):
- GET /health: 200 "ok", or 503 once POST /admin/unhealthy was called.
- /echo: JSON {worker, version, method, path, body} (the body read in full).
- /sleep?s=SECONDS: answers after SECONDS.
- /stream?n=N&delay=SECONDS: N chunks "chunk i\n", one every SECONDS, chunked.
- /load: JSON {worker, current, peak}: requests in progress now and at most so far (this one included).
- POST /v1/chat/completions: an OpenAI-compatible chat route; with "stream": true it answers server-sent events.
- POST /admin/unhealthy: the health check fails from now on. POST /admin/exit: the process exits at once (code 3).

Environment: PORT (default 8080), WORKER_VERSION (default "1"), WORKER_STARTUP_DELAY (seconds to wait before
listening, default 0).
"""

import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORKER = socket.gethostname()
VERSION = os.environ.get("WORKER_VERSION", "1")
state = {"healthy": True, "current": 0, "peak": 0}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.command} {self.path}", flush=True)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: object, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self, content_type: str, parts: "list[bytes]", delay: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, part in enumerate(parts):
            if i:
                time.sleep(delay)
            self._chunk(part)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _handle(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        body = self._body()
        if url.path == "/health":
            return self._send(
                200 if state["healthy"] else 503, b"ok" if state["healthy"] else b"unhealthy", "text/plain"
            )
        if url.path == "/admin/unhealthy":
            state["healthy"] = False
            return self._json({"healthy": False})
        if url.path == "/admin/exit":
            os._exit(3)
        if url.path == "/echo":
            return self._json(
                {"worker": WORKER, "version": VERSION, "method": self.command, "path": self.path, "body": body.decode()}
            )
        if url.path == "/sleep":
            time.sleep(float(query.get("s", "1")))
            return self._json({"worker": WORKER, "version": VERSION, "slept": float(query.get("s", "1"))})
        if url.path == "/stream":
            n, delay = int(query.get("n", "3")), float(query.get("delay", "0.5"))
            return self._stream("text/plain", [f"chunk {i}\n".encode() for i in range(n)], delay)
        if url.path == "/load":
            time.sleep(float(query.get("s", "0")))
            return self._json({"worker": WORKER, "peak": state["peak"]})
        if url.path == "/v1/chat/completions":
            return self._chat(json.loads(body or b"{}"))
        return self._json({"error": f"no route {url.path}"}, 404)

    def _chat(self, request: dict) -> None:
        words = ["Hello", " from", " worker", " " + VERSION, "."]
        created = int(time.time())
        base = {"id": "chatcmpl-1", "created": created, "model": request.get("model", "dockyard-test")}
        if not request.get("stream"):
            message = {"role": "assistant", "content": "".join(words)}
            return self._json(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                }
            )
        events = []
        for i, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            events.append(f"data: {json.dumps(chunk)}\n\n".encode())
        last = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        events.append(f"data: {json.dumps(last)}\n\n".encode())
        events.append(b"data: [DONE]\n\n")
        self._stream("text/event-stream", events, 0.05)

    def _counted(self) -> None:
        with lock:
            state["current"] += 1
            state["peak"] = max(state["peak"], state["current"])
        try:
            self._handle()
        finally:
            with lock:
                state["current"] -= 1

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _counted  # noqa: N815 - the names http.server calls


if __name__ == "__main__":
    # As PID 1 the process gets no default SIGTERM handling: without this, every stop would wait out the
    # engine's grace period and end in SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(float(os.environ.get("WORKER_STARTUP_DELAY", "0")))
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler)
    server.daemon_threads = True
    print(f"worker {WORKER} version {VERSION} listening", flush=True)
    server.serve_forever()
