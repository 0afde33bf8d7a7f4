"""What a probe of the log canary works with: `Canary` (the server's clients, the objects made up front, `plant`
for secrets of the probe's own, raw connections), `probe` to register one, and the webhook `Receiver` the
operator allows. Every answer a probe gets through `Canary` is kept for the final check."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.engine import Registry

RECEIVER_HOST = "127.0.0.2"  # a loopback address of its own, which the canary's server allows webhooks to reach
HANG_SECONDS = 3.0  # how long the hanging receiver takes: past the server's webhook timeout


@dataclass
class Canary:
    """The server under test and what the probes share. `eventually` defers a wait to after every probe has run,
    so slow outcomes (webhook retries, pulls, containers failing) overlap instead of adding up."""

    url: str
    secrets: dict[str, str]
    env: dict[str, str]  # the server's environment, for a probe that starts a server of its own
    log_path: Path
    engine_url: str
    registry: Registry
    receiver: Receiver
    busybox: str
    tmp: Path
    user: httpx.Client = field(init=False)
    other: httpx.Client = field(init=False)
    admin: httpx.Client = field(init=False)
    org_ids: dict[str, str] = field(default_factory=dict)  # "user", "other": their organizations' ids
    container_id: str = ""
    template_id: str = ""
    endpoint_id: str = ""
    jobs_endpoint_id: str = ""
    answers: list[httpx.Response] = field(default_factory=list)
    raw_answers: list[bytes] = field(default_factory=list)
    pending: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)  # more logs to search: those of servers a probe started
    cleanups: list[Callable[[], Any]] = field(default_factory=list)  # run once the server has stopped

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def plant(self, name: str, value: str) -> str:
        """A secret of the probe's own, checked like the others."""
        self.secrets[name] = value
        return value

    def fresh(self, name: str) -> str:
        """A new random secret planted as `name`."""
        return self.plant(name, f"canary-{secrets.token_hex(12)}")

    def client(self, **options: Any) -> httpx.Client:
        """A client of the server whose answers are checked too."""
        return httpx.Client(base_url=self.url, timeout=30, event_hooks={"response": [self._keep]}, **options)

    def _keep(self, answer: httpx.Response) -> None:
        answer.read()
        self.answers.append(answer)

    def eventually(self, what: str, check: Callable[[], Any]) -> None:
        """Wait for `check()` once every probe has run (before the server stops)."""
        self.pending.append((what, check))

    def log(self) -> str:
        """The server's log so far."""
        return self.log_path.read_text(errors="replace")

    def raw(self, *parts: bytes, pause: float = 0.0, read_for: float = 10.0) -> bytes:
        """Send `parts` on a connection of its own, `pause` s apart (until the server closes it), then read until
        the server closes it, at most `read_for` s; what the server answered, kept for the final check."""
        answer = bytearray()
        with socket.create_connection(("127.0.0.1", self.port), timeout=read_for) as connection:
            for part in parts:
                try:
                    connection.sendall(part)
                except OSError:  # closed on us: what it answered is read below
                    break
                time.sleep(pause)
            end = time.monotonic() + read_for
            while True:
                connection.settimeout(max(0.01, end - time.monotonic()))
                try:
                    chunk = connection.recv(65536)
                except ConnectionResetError:
                    break
                except TimeoutError:
                    raise AssertionError(f"the server kept the connection open past {read_for} s") from None
                if not chunk:
                    break
                answer += chunk
        self.raw_answers.append(bytes(answer))
        return bytes(answer)


PROBES: list[Callable[[Canary], None]] = []


def probe(function: Callable[[Canary], None]) -> Callable[[Canary], None]:
    """Register a probe: each runs once with the shared `Canary`, in the order its module (imported by
    tests/test_log_canary.py) defines them."""
    PROBES.append(function)
    return function


class Receiver:
    """Webhook receivers the canary's server may reach (its allow-list names `RECEIVER_HOST`): `/fail` answers
    500 quoting the request it got, credentials included, as a careless receiver does; `/hang` answers only after
    `HANG_SECONDS`. `hits` counts the requests per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                path = self.path.partition("?")[0]
                receiver.hits[path] += 1
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if path == "/hang":
                    time.sleep(HANG_SECONDS)
                    status, body = 200, b"late"
                else:
                    status, body = 500, f"cannot take {self.requestline} from {self.headers.get('Authorization')}"
                with contextlib.suppress(OSError):  # the server gave up on a hanging answer
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body if isinstance(body, bytes) else body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((RECEIVER_HOST, 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.port = self.server.server_address[1]

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
