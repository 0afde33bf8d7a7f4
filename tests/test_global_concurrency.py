"""`max_concurrent_per_worker` across gateway processes, on real PostgreSQL and real sockets: three stand-alone
gateways (`dockyard gateway`'s app, each served by uvicorn) on one database route one sync endpoint whose worker,
an HTTP server on the host, counts the requests it holds at once. 64 concurrent requests spread round-robin over
the three are all answered, and the worker never holds more than its limit of 2. With the global limit off, each
gateway holds the limit on its own and the same worker counts more than 2: the counter can see a breach."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from dockyard.config import Settings
from dockyard.core.status import EndpointStatus, EndpointType, WorkerStatus
from dockyard.db.migrate import migrate
from dockyard.db.models import EndpointModel, WorkerModel
from dockyard.db.session import Database
from dockyard.gateway_app import create_gateway_app
from dockyard.services import keys
from tests.live import serving
from tests.pg import PostgresServer

LIMIT = 2
REQUESTS = 64
GATEWAYS = 3


class CountingWorker:
    """A worker on the host that holds each request a moment and counts how many it holds at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holding = 0
        self.most = 0
        self.served = 0
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path != "/health":
                    with worker.lock:
                        worker.holding += 1
                        worker.most = max(worker.most, worker.holding)
                    time.sleep(0.03)
                    with worker.lock:
                        worker.holding -= 1
                        worker.served += 1
                body = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    @contextmanager
    def running(self) -> Iterator[CountingWorker]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


async def endpoint_with_worker(url: str, port: int) -> tuple[str, str]:
    """An organization's key, and its sync endpoint (limit 2 per worker) with one ready worker on `port`."""
    await migrate(url)
    db = Database(url)
    try:
        async with db.write() as session:
            org = await keys.get_or_create_org(session, "acme")
            member = await keys.get_or_create_member(session, org, "default")
            _, key = await keys.create_key(session, org, member)
            endpoint = EndpointModel(
                org_id=org.id,
                type=EndpointType.SYNC,
                name="counted",
                product_id="serverless.cpu",
                idc_id="local",
                spec={},
                worker_config={"request_timeout": 60, "max_concurrent_per_worker": LIMIT},
                policy={},
                status=EndpointStatus.RUNNING,
            )
            session.add(endpoint)
            await session.flush()
            ports = [{"containerPort": 8080, "port": port, "protocol": "TCP", "serving": True, "healthPath": "/health"}]
            session.add(
                WorkerModel(
                    endpoint_id=endpoint.id,
                    org_id=org.id,
                    generation=1,
                    status=WorkerStatus.READY,
                    health=True,
                    published_ports=ports,
                )
            )
            return key, endpoint.id
    finally:
        await db.dispose()


async def send_all(urls: list[str], key: str, endpoint_id: str) -> list[int]:
    """REQUESTS requests at once, round-robin over the gateways at `urls`; their status codes."""
    limits = httpx.Limits(max_connections=REQUESTS)
    async with httpx.AsyncClient(timeout=90, limits=limits, headers={"Authorization": f"Bearer {key}"}) as client:

        async def one(i: int) -> int:
            answer = await client.get(f"{urls[i % len(urls)]}/{endpoint_id}/work")
            return answer.status_code

        return await asyncio.gather(*(one(i) for i in range(REQUESTS)))


async def routed_everywhere(urls: list[str], key: str, endpoint_id: str) -> None:
    """Wait until each gateway has read the endpoint and its worker (their route sync)."""
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        for url in urls:
            deadline = time.monotonic() + 30
            while (await client.get(f"{url}/{endpoint_id}/health")).status_code != 200:
                assert time.monotonic() < deadline, f"{url} never served the endpoint"
                await asyncio.sleep(0.1)


async def run_three_gateways(tmp_path: Path, url: str, *, global_concurrency: bool) -> CountingWorker:
    worker = CountingWorker()
    key, endpoint_id = await endpoint_with_worker(url, worker.port)
    settings = Settings(
        data_dir=tmp_path,
        database_url=url,
        global_concurrency=global_concurrency,
        slot_lease_seconds=1.5,
        gateway_sync_interval=0.2,
        gateway_report_interval=0.2,
    )
    with worker.running(), ExitStack() as stack:
        urls = [stack.enter_context(serving(create_gateway_app(settings))) for _ in range(GATEWAYS)]
        await routed_everywhere(urls, key, endpoint_id)
        statuses = await send_all(urls, key, endpoint_id)
    assert statuses == [200] * REQUESTS
    assert worker.served == REQUESTS
    return worker


@pytest.fixture
async def database(postgres: PostgresServer | None) -> str:
    if postgres is None:
        pytest.skip("PostgreSQL is not available here")
    return await postgres.create_database()


async def test_a_workers_limit_holds_across_three_gateways(tmp_path: Path, database: str) -> None:
    worker = await run_three_gateways(tmp_path, database, global_concurrency=True)
    assert 1 <= worker.most <= LIMIT


async def test_with_the_global_limit_off_three_gateways_exceed_it(tmp_path: Path, database: str) -> None:
    worker = await run_three_gateways(tmp_path, database, global_concurrency=False)
    assert worker.most > LIMIT
