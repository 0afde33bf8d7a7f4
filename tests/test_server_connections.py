"""What a `dockyard server` process lets a connection hold, over real sockets: an idle keep-alive connection is
closed after its timeout, and kept for 75 s by default (a worker SDK reuses its connection after a synchronous
handler's pause); a client that trickles its request head or body is answered 408 and closed; idle connections
past the cap make room for new clients, so `/healthz` answers; and at start the open-files limit is raised to
its hard limit, from which the cap is derived."""

from __future__ import annotations

import os
import re
import resource
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dockyard.serving.protocol import RESERVED_FDS
from tests.conftest import ADMIN_TOKEN
from tests.servers import ServerProcess

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: dockyard\r\n\r\n"
CAP = 20


def server_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKYARD_")}
    env.update(
        DOCKYARD_DATA_DIR=str(tmp_path / "data"),
        DOCKYARD_ADMIN_TOKEN=ADMIN_TOKEN,
        DOCKYARD_PUBLIC_ADDRESS="127.0.0.1",
        DOCKYARD_ENGINE_URL="unix:///nonexistent.sock",
        DOCKYARD_RUN_RECONCILERS="false",
        **{f"DOCKYARD_{name.upper()}": value for name, value in settings.items()},
    )
    return env


def running(server: ServerProcess) -> Iterator[ServerProcess]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with one-second timeouts."""
    data = tmp_path_factory.mktemp("strict")
    env = server_env(data, keep_alive_timeout_seconds="1", header_timeout_seconds="1", body_timeout_seconds="1")
    yield from running(ServerProcess(env, data / "server.log"))


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that holds at most `CAP` connections."""
    data = tmp_path_factory.mktemp("capped")
    yield from running(ServerProcess(server_env(data, max_connections=str(CAP)), data / "server.log"))


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("default")
    yield from running(ServerProcess(server_env(data), data / "server.log"))


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_response(conn: socket.socket) -> bytes:
    """One whole response with a Content-Length."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(65536)
        assert chunk, f"closed before a response: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def closed_within(conn: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closes `conn` within `seconds`, and what it sent before."""
    conn.settimeout(seconds)
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(strict: ServerProcess) -> None:
    with connect(strict) as conn:
        conn.sendall(HEALTHZ)
        assert read_response(conn).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        closed, _ = closed_within(conn, 5)
        assert closed
        assert 0.8 < time.monotonic() - started < 3


def test_the_default_keep_alive_outlasts_a_handlers_pause(default: ServerProcess) -> None:
    """As found with the runpod SDK: a plain synchronous handler that ran 8 s blocked the SDK's loop, and the
    connection it then reused for job-done had been closed by uvicorn's 5 s keep-alive."""
    with connect(default) as conn:
        conn.sendall(HEALTHZ)
        assert read_response(conn).startswith(b"HTTP/1.1 200")
        time.sleep(6.5)
        conn.sendall(HEALTHZ)
        assert read_response(conn).startswith(b"HTTP/1.1 200")
    assert "connections per process" in default.log()


def test_a_client_trickling_its_request_head_gets_408_and_is_closed(strict: ServerProcess) -> None:
    with connect(strict) as conn:
        started = time.monotonic()
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: dockyard\r\n")
        received = b""
        conn.settimeout(0.3)
        for n in range(30):  # a header line every 0.3 s: bytes keep coming, the head never ends
            try:
                conn.sendall(f"X-Slow-{n}: yes\r\n".encode())
                received += conn.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if received and received.endswith(b"}"):
                break
        assert received.startswith(b"HTTP/1.1 408"), received
        assert b"did not arrive in time" in received
        assert time.monotonic() - started < 4
        assert closed_within(conn, 3)[0]


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(strict: ServerProcess) -> None:
    with connect(strict) as conn:
        closed, received = closed_within(conn, 5)
    assert closed
    assert received == b""


def test_a_stalled_request_body_gets_408_and_is_closed(strict: ServerProcess) -> None:
    with connect(strict) as conn:
        head = "POST /api/v1/templates HTTP/1.1\r\nHost: dockyard\r\nContent-Type: application/json\r\n"
        conn.sendall(f"{head}Content-Length: 100\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode())
        conn.sendall(b'{"name": "')
        closed, received = closed_within(conn, 5)
    assert closed
    assert received.startswith(b"HTTP/1.1 408"), received


def test_idle_connections_past_the_cap_make_room_and_healthz_answers(capped: ServerProcess) -> None:
    idle = [connect(capped) for _ in range(3 * CAP)]
    try:
        answer = httpx.get(f"{capped.url}/healthz", timeout=5)
        assert answer.status_code == 200
        time.sleep(0.5)
        readable, _, _ = select.select(idle, [], [], 0)
        closed = [conn in readable and conn.recv(1) == b"" for conn in idle]
        # The oldest were closed for the newer ones; the newest still stand.
        assert closed[: 2 * CAP] == [True] * 2 * CAP
        assert closed[-CAP // 2 :] == [False] * (CAP // 2)
    finally:
        for conn in idle:
            conn.close()


def test_with_none_idle_a_new_connection_past_the_cap_gets_503(capped: ServerProcess) -> None:
    busy = [connect(capped) for _ in range(CAP)]
    try:
        for conn in busy:
            conn.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head begun: not idle
        time.sleep(0.5)
        with connect(capped) as late:
            closed, received = closed_within(late, 3)
        assert closed
        assert received.startswith(b"HTTP/1.1 503"), received
        assert b"connection limit" in received
    finally:
        for conn in busy:
            conn.close()


def test_at_a_1024_descriptor_limit_1100_idle_sockets_leave_healthz_answering(tmp_path: Path) -> None:
    """As found: at a 1,024 open-files limit, 1,100 idle sockets made `/healthz` fail (the process could accept no
    more). The cap derived from the limit keeps the process below it, closing the oldest idle connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"the test opens 1,100 sockets itself and its hard open-files limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 4096, hard))
    server = ServerProcess(server_env(tmp_path), tmp_path / "server.log", nofile=(256, 1024))
    idle: list[socket.socket] = []
    try:
        server.start()
        for _ in range(1100):
            idle.append(connect(server))
        answer = httpx.get(f"{server.url}/healthz", timeout=10)
        assert answer.status_code == 200
        cap = (1024 - RESERVED_FDS) // 2
        assert f"open files limit 1024 (raised from 256); at most {cap} connections per process" in server.log()
    finally:
        for conn in idle:
            conn.close()
        server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
