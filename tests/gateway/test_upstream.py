"""UpstreamPool over real sockets (on both loops: conftest.py), against scripted workers that write exact
bytes: keep-alive reuse and expiry, the framings an answer can have (length, chunked, until close, interim 1xx,
HEAD), streaming both ways, flow control, and each failure named: refused, timed out, broken off, not HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from dockyard.gateway.upstream import ConnectFailed, UpstreamError, UpstreamPool, UpstreamResponse
from tests.gateway.upstream import free_port

pytestmark = pytest.mark.timeout(30)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Scripted:
    """A worker that runs `handler` on each connection; counts connections and keeps what each request sent."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.handler(reader, writer)
        writer.close()

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head


@contextlib.asynccontextmanager
async def worker(
    handler: Callable[[Scripted, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[Scripted, UpstreamPool]]:
    scripted = Scripted(lambda reader, writer: handler(scripted, reader, writer))
    server = await asyncio.start_server(scripted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(f"http://127.0.0.1:{port}", connect_timeout=5.0, keepalive_expiry=4.0)
    try:
        yield scripted, pool
    finally:
        pool.aclose()
        server.close()
        await server.wait_closed()


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def read_all(response: UpstreamResponse) -> bytes:
    body = b""
    while True:
        chunk, last = await response.next_chunk()
        body += chunk
        if last:
            response.release()
            return body


async def answer_each(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await scripted.head(reader)
        writer.write(OK)
        await writer.drain()


async def test_keep_alive_reuses_one_connection_and_sends_the_target_as_given() -> None:
    async with worker(answer_each) as (scripted, pool):
        for _ in range(3):
            response = await pool.request("GET", "/a%2Fb?x=1&y", [(b"x-one", b"1")], None, deadline())
            assert response.status == 200
            assert response.headers == [(b"content-length", b"2")]
            assert await read_all(response) == b"ok"
        assert scripted.connections == 1
        assert scripted.heads[0].startswith(b"GET /a%2Fb?x=1&y HTTP/1.1\r\nhost: 127.0.0.1:")
        assert b"\r\nx-one: 1\r\n" in scripted.heads[0]


async def test_an_idle_connection_past_its_expiry_is_not_used() -> None:
    async with worker(answer_each) as (scripted, pool):
        pool = UpstreamPool(pool.address, connect_timeout=5.0, keepalive_expiry=0.05)
        assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"ok"
        await asyncio.sleep(0.1)
        assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"ok"
        assert scripted.connections == 2
        pool.aclose()


async def test_idle_connections_are_closed_once_expired_without_another_request() -> None:
    closed = 0

    async def count_closes(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed
        with contextlib.suppress(asyncio.IncompleteReadError):
            await answer_each(scripted, reader, writer)
        closed += 1

    async with worker(count_closes) as (scripted, pool):
        pool = UpstreamPool(pool.address, connect_timeout=5.0, keepalive_expiry=0.2)
        burst = await asyncio.gather(*(pool.request("GET", "/", [], None, deadline()) for _ in range(5)))
        await asyncio.gather(*(read_all(response) for response in burst))
        assert scripted.connections == 5
        await asyncio.sleep(0.05)
        assert closed == 0, "still within the keep-alive expiry"
        await asyncio.sleep(0.5)
        assert closed == 5
        pool.aclose()


async def test_a_connection_the_worker_closed_while_idle_is_dropped() -> None:
    async def one_then_close(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.head(reader)
        writer.write(OK)
        await writer.drain()

    async with worker(one_then_close) as (scripted, pool):
        assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"ok"
        await asyncio.sleep(0.1)  # the worker has closed it by now
        assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"ok"
        assert scripted.connections == 2


async def test_a_chunked_answer_streams_before_it_ends() -> None:
    more = asyncio.Event()

    async def chunked(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await more.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await scripted.head(reader)
        writer.write(OK)

    async with worker(chunked) as (scripted, pool):
        response = await pool.request("GET", "/", [], None, deadline())
        assert await response.next_chunk() == (b"first", False)
        more.set()
        assert await read_all(response) == b"second"
        assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"ok"
        assert scripted.connections == 1


async def test_an_answer_without_length_ends_with_its_connection() -> None:
    async def until_close(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.head(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()

    async with worker(until_close) as (scripted, pool):
        assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"all of it"
        assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"all of it"
        assert scripted.connections == 2


async def test_connection_close_is_honoured() -> None:
    async def closing(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(1)  # the pool, not the worker, must be the one to let go

    async with worker(closing) as (scripted, pool):
        for _ in range(2):
            assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"ok"
        assert scripted.connections == 2


async def test_an_interim_answer_is_skipped() -> None:
    async def early_hints(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.head(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        await writer.drain()
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")
        await answer_each(scripted, reader, writer)

    async with worker(early_hints) as (scripted, pool):
        response = await pool.request("GET", "/", [], None, deadline())
        assert response.status == 201
        assert [name for name, _ in response.headers] == [b"content-length"]
        assert await read_all(response) == b"done"
        assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"ok"
        assert scripted.connections == 1


async def test_head_ends_at_its_headers_and_the_connection_is_not_reused() -> None:
    async def head_then_answer(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await scripted.head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" if head.startswith(b"HEAD") else OK)
            await writer.drain()

    async with worker(head_then_answer) as (scripted, pool):
        response = await pool.request("HEAD", "/", [], None, deadline())
        assert (response.status, await read_all(response)) == (200, b"")
        assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"ok"
        assert scripted.connections == 2


async def test_refused_is_connect_failed_and_names_the_address() -> None:
    port = free_port()
    pool = UpstreamPool(f"http://127.0.0.1:{port}", connect_timeout=5.0, keepalive_expiry=4.0)
    with pytest.raises(ConnectFailed, match=rf"cannot connect to http://127.0.0.1:{port}: Connection refused"):
        await pool.request("GET", "/", [], None, deadline())


async def test_a_worker_hanging_up_at_once_fails_fast_whenever_it_hangs_up() -> None:
    async def hang_up(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with worker(hang_up) as (_, pool):
        for _ in range(20):
            # Before the pool's connection is made (refused) or after the request went (broken off): never a wait
            # for the deadline.
            with pytest.raises(UpstreamError):
                await pool.request("GET", "/", [], None, deadline(10))


async def test_connect_timeout_is_connect_failed() -> None:
    # A listener whose backlog is full never completes a new handshake; 192.0.2.0/24 (TEST-NET) is unroutable.
    pool = UpstreamPool("http://192.0.2.1:9", connect_timeout=0.2, keepalive_expiry=4.0)
    with pytest.raises(ConnectFailed, match=r"took longer than 0.2 s|cannot connect"):
        await pool.request("GET", "/", [], None, deadline())


async def test_no_head_by_the_deadline_is_a_timeout_and_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def silent(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.head(reader)
        await reader.read()  # returns at EOF: the pool closed the connection
        closed.set()

    async with worker(silent) as (_, pool):
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/", [], None, deadline(0.2))
        await asyncio.wait_for(closed.wait(), 5)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "closed the connection before its answer was complete"),
        (b"", "closed the connection without answering"),
        (b"SMTP ready\r\n\r\n", "not valid HTTP/1.1"),
    ],
)
async def test_a_broken_answer_is_an_upstream_error(answer: bytes, message: str) -> None:
    async def broken(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.head(reader)
        writer.write(answer)
        await writer.drain()

    async with worker(broken) as (_, pool):
        with pytest.raises(UpstreamError, match=message):
            await read_all(await pool.request("GET", "/", [], None, deadline()))


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


async def test_a_streamed_body_without_length_goes_chunked_and_one_with_length_as_is() -> None:
    bodies: list[bytes] = []

    async def upload(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await scripted.head(reader)
        if b"transfer-encoding: chunked" in head:
            bodies.append(await reader.readuntil(b"0\r\n\r\n"))
        else:
            bodies.append(await reader.readexactly(6))
        writer.write(OK)
        await answer_each(scripted, reader, writer)

    async with worker(upload) as (_, pool):
        await read_all(await pool.request("POST", "/", [], chunks(b"abc", b"", b"defg"), deadline()))
        assert bodies == [b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"]
    bodies.clear()
    async with worker(upload) as (_, pool):
        await read_all(await pool.request("POST", "/", [(b"content-length", b"6")], chunks(b"abc", b"def"), deadline()))
        assert bodies == [b"abcdef"]


async def test_a_whole_body_without_length_gets_one() -> None:
    async with worker(answer_each) as (scripted, pool):
        await read_all(await pool.request("POST", "/", [], b"hello", deadline()))
        assert scripted.heads[0].endswith(b"\r\ncontent-length: 5\r\n\r\n")


async def test_an_answer_before_the_upload_ends_leaves_the_connection_unused() -> None:
    async def early(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if (await scripted.head(reader)).startswith(b"POST"):
            writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await reader.read()  # what the pool sent of the body, until it closes the connection
        else:
            writer.write(OK)

    async def endless() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.01)
            yield b"x" * 1024

    async with worker(early) as (scripted, pool):
        response = await pool.request("POST", "/", [], endless(), deadline())
        assert response.status == 413
        assert await read_all(response) == b""
        assert await read_all(await pool.request("GET", "/", [], None, deadline())) == b"ok"
        assert scripted.connections == 2


async def test_a_large_answer_arrives_whole_through_flow_control() -> None:
    size = 8 * 1024 * 1024

    async def large(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = bytes(range(256)) * 256
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    async with worker(large) as (_, pool):
        response = await pool.request("GET", "/", [], None, deadline(20))
        largest, total = 0, 0
        while True:
            chunk, last = await response.next_chunk()
            largest, total = max(largest, len(chunk)), total + len(chunk)
            await asyncio.sleep(0.001)  # a slow reader, so the pool has to stop reading
            if last:
                break
        response.release()
        assert total == size
        assert largest <= 2 * 1024 * 1024, "reading stopped near the high-water mark, not at the end"


def test_an_address_must_be_http_with_a_port() -> None:
    for address in ("https://a:1", "http://a", "unix:///x"):
        with pytest.raises(ValueError, match="http://host:port"):
            UpstreamPool(address, connect_timeout=1.0, keepalive_expiry=1.0)


async def test_aclose_closes_connections_in_use() -> None:
    closed = asyncio.Event()

    async def hold(scripted: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await scripted.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        await reader.read()
        closed.set()

    async with worker(hold) as (_, pool):
        response = await pool.request("GET", "/", [], None, deadline())
        assert await response.next_chunk() == (b"a", False)
        pool.aclose()
        await asyncio.wait_for(closed.wait(), 5)
        with pytest.raises(UpstreamError):
            await read_all(response)
