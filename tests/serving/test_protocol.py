"""The servers' HTTP protocol (serving/protocol.py): a response's head leaves in the same write as its body when
the body follows within the turn of the event loop, and on its own at the end of that turn otherwise; over real
sockets, answers whole, streamed, HEAD, pipelined and closing all arrive intact."""

from __future__ import annotations

import asyncio
import resource
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from dockyard.config import Settings
from dockyard.serving.protocol import (
    MIN_CONNECTIONS,
    RESERVED_FDS,
    UNLIMITED_FDS,
    HeadHoldingTransport,
    connection_cap,
    protocol_for,
)
from tests.live import serving


class Recording(asyncio.Transport):
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0


async def turn() -> None:
    """Let the event loop go round once, so that what was scheduled with `call_soon` has run."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_a_head_and_its_body_in_one_turn_are_one_write() -> None:
    inner = Recording()
    transport = HeadHoldingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HEAD1")
    assert inner.writes == []
    assert transport.get_write_buffer_size() == 5  # the held head counts as buffered
    transport.write(b"body1")
    assert inner.writes == [b"HEAD1body1"]
    await turn()
    assert inner.writes == [b"HEAD1body1"]  # the end of the turn finds nothing held

    transport.write(b"more")  # later writes of the same response pass straight through
    assert inner.writes[-1] == b"more"
    transport.expect_head()
    transport.write(b"HEAD2")
    transport.write(b"body2")
    assert inner.writes[-1] == b"HEAD2body2"


async def test_a_head_whose_body_is_late_leaves_at_the_end_of_the_turn() -> None:
    inner = Recording()
    transport = HeadHoldingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HEAD")
    await turn()
    assert inner.writes == [b"HEAD"]
    transport.write(b"chunk")
    assert inner.writes == [b"HEAD", b"chunk"]


async def test_closing_writes_a_held_head_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    inner = Recording()
    transport = HeadHoldingTransport(inner, loop)
    transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    transport.close()
    assert inner.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]
    assert inner.closed

    dropped = Recording()
    transport = HeadHoldingTransport(dropped, loop)
    transport.write(b"HEAD")
    transport.abort()
    await turn()
    assert dropped.writes == []
    assert dropped.aborted

    lost = Recording()
    transport = HeadHoldingTransport(lost, loop)
    transport.write(b"HEAD")
    lost.closed = True  # the connection went away in the turn its head was written
    await turn()
    assert lost.writes == []  # nothing is written to a closing transport, which would raise


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """`/stream` sends its head, then its body only once the test says it has seen the head; anything else is
    answered whole, naming its path."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await asyncio.get_running_loop().run_in_executor(None, head_seen.wait, 30)
        await send({"type": "http.response.body", "body": b"first,", "more_body": True})
        await send({"type": "http.response.body", "body": b"last", "more_body": False})
        return
    body = scope["path"].encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


head_seen = threading.Event()


@pytest.fixture
def url() -> Iterator[str]:
    head_seen.clear()
    with serving(app) as base:
        try:
            yield base
        finally:
            head_seen.set()  # a stream still waiting ends, so the server stops at once


def test_whole_head_and_keep_alive_answers_arrive_intact(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        for n in range(20):
            answer = client.get(f"/n{n}")
            assert answer.status_code == 200
            assert answer.text == f"/n{n}"
        head = client.head("/x")
        assert head.status_code == 200
        assert head.headers["content-length"] == "2"
        assert head.content == b""


def test_a_streamed_head_arrives_before_its_body_is_sent(url: str) -> None:
    # The app holds its body back for up to 30 s, until the head is seen: a head held waiting for the body would
    # time the client out first.
    with httpx.Client(base_url=url, timeout=5) as client, client.stream("GET", "/stream") as answer:
        assert answer.status_code == 200
        head_seen.set()
        assert answer.read() == b"first,last"


def test_pipelined_requests_are_answered_in_order(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"".join(f"GET /p{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in range(3)))
        raw.sendall(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 4
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in received.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"/p0", b"/p1", b"/p2", b"/last"]


def test_the_connection_cap_is_half_the_descriptors_left_and_caps_a_setting() -> None:
    assert connection_cap(0, 1024) == (1024 - RESERVED_FDS) // 2
    assert connection_cap(100, 1024) == 100
    assert connection_cap(100_000, 1024) == (1024 - RESERVED_FDS) // 2  # a setting cannot outgrow the limit
    assert connection_cap(0, 64) == MIN_CONNECTIONS
    assert connection_cap(0, resource.RLIM_INFINITY) == (UNLIMITED_FDS - RESERVED_FDS) // 2


async def slow_reader(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads its request body only after a second, then answers its length."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(1.0)
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


def test_a_body_the_server_holds_back_is_not_timed_out(tmp_path: Path) -> None:
    """The body timeout is the client's silence: a client waiting for `100 Continue`, or one the server stopped
    reading from (a body past its buffer), is not cut off while the app takes its time."""
    quick = Settings(data_dir=tmp_path, body_timeout_seconds=0.3, header_timeout_seconds=0.3)
    with serving(slow_reader, settings=quick) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            assert raw.recv(65536).startswith(b"HTTP/1.1 100 Continue")
            raw.sendall(b"hello")
            assert raw.recv(65536).endswith(b"\r\n\r\n5")
        large = 1024 * 1024
        answer = httpx.post(f"{url}/x", content=b"x" * large, timeout=10)
        assert answer.status_code == 200
        assert answer.text == str(large)


def test_heads_and_bodies_are_written_apart_when_switched_off() -> None:
    settings = Settings(head_with_body=False)
    assert protocol_for(settings, MIN_CONNECTIONS).keywords["head_with_body"] is False  # type: ignore[attr-defined]
    head_seen.clear()
    with serving(app, settings=settings) as base, httpx.Client(base_url=base, timeout=10) as client:
        try:
            for n in range(3):
                assert client.get(f"/n{n}").text == f"/n{n}"
            with client.stream("GET", "/stream") as answer:
                assert answer.status_code == 200
                head_seen.set()
                assert answer.read() == b"first,last"
        finally:
            head_seen.set()
