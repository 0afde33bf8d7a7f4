"""Job webhook deliveries over a real database and real sockets: delivered, retried with backoff, refused where
webhooks may not go (the SSRF attacks as found: loopback in its spellings, a name for it, the server's own admin
API, the cloud metadata address), claimed once, made again after a stop cut one off, fair between organizations
while one's receivers hang (and the reaper unaffected), and never with a URL's credentials in a log or an error."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dockyard.app import build_loops
from dockyard.core.loops import LoopName
from dockyard.core.status import JobStatus, WebhookState
from dockyard.db.base import utcnow
from dockyard.db.models import JobModel
from dockyard.reconcilers.job_webhooks import WebhookDeliveries
from dockyard.reconcilers.jobs import JobReaper
from dockyard.reconcilers.supervisor import Supervisor
from tests.api.test_admin import assert_error
from tests.api.test_jobs import finish, job_routes, make_endpoint, must_job, submit, take
from tests.conftest import Harness
from tests.live import serving

__all__ = ["job_routes"]  # the API tests' autouse fixture, so that `run` is served here too

ALLOW = "DOCKYARD_WEBHOOK_ALLOWED_HOSTS"


class Hooks:
    """A webhook receiver on a real socket: answers the scripted status codes in turn, records each body; with
    `echo`, its answer quotes the URL it was called at (query included), as a careless receiver's error might."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.echo = False
        self.bodies: list[Any] = []
        self.lock = threading.Lock()

    async def receive(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self.lock:
            self.bodies.append(body)
            code = self.codes[min(len(self.bodies), len(self.codes)) - 1]
        return JSONResponse({"called": str(request.url)} if self.echo else {}, status_code=code)


@pytest.fixture
def hooks() -> Iterator[tuple[Hooks, str]]:
    receiver = Hooks([200])
    app = Starlette(routes=[Route("/hook", receiver.receive, methods=["POST"])])
    with serving(app) as url:
        yield receiver, f"{url}/hook"


def port_of(url: str) -> int:
    port = httpx.URL(url).port
    assert port is not None
    return port


class Stalling:
    """An HTTP receiver on a real socket in the test's own loop: it accepts every connection and reads what comes,
    never answers the first `hang` connections, and answers 200 on the later ones."""

    def __init__(self, hang: int) -> None:
        self.hang = hang
        self.accepted = 0
        self.open = 0  # connections the client has not closed
        self.answered = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        try:
            if self.accepted <= self.hang:
                while await reader.read(65536):
                    pass  # until the client leaves
                return
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            await reader.readexactly(int(length.group(1)) if length else 0)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            self.answered += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def stalling(hang: int) -> AsyncIterator[tuple[Stalling, str]]:
    receiver = Stalling(hang)
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield receiver, f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def pool(harness: Harness, allowed_hosts: str = "loopback", **settings: Any) -> AsyncIterator[WebhookDeliveries]:
    """A delivery pool under these settings; by default it may reach loopback, where these tests' receivers are."""
    for name, value in {"webhook_allowed_hosts": allowed_hosts, **settings}.items():
        setattr(harness.context.settings, name, value)
    deliveries = WebhookDeliveries(harness.context, interval=0.1)
    try:
        yield deliveries
    finally:
        await deliveries.close()


async def deliver(deliveries: WebhookDeliveries) -> None:
    """One pass, and the deliveries it started, to their end."""
    await deliveries.reconcile_once()
    await asyncio.gather(*deliveries.deliveries)


async def set_job(harness: Harness, job_id: str, **values: Any) -> None:
    async with harness.context.db.write() as session:
        await session.execute(update(JobModel).where(JobModel.id == job_id).values(**values))


async def finished_with_webhook(harness: Harness, client: httpx.AsyncClient, url: str, endpoint_id: str = "") -> str:
    endpoint_id = endpoint_id or await make_endpoint(client)
    job_id = await submit(client, endpoint_id, {"input": 1, "webhook": url})
    await take(harness, endpoint_id)
    await finish(harness, job_id, JobStatus.COMPLETED, output={"answer": 42})
    return job_id


async def until(what: str, check: Callable[[], Awaitable[bool]], deadline: float = 30.0) -> None:
    """Wait for `check()` while the loop runs the pool; fail naming `what` after `deadline` s."""
    end = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline} s: {what}")
        await asyncio.sleep(0.05)


async def test_the_server_runs_the_pool_beside_the_reaper(harness: Harness) -> None:
    loops = {loop.name: loop for loop in build_loops(harness.context, harness.routes)}
    deliveries = loops[LoopName.JOB_WEBHOOKS]
    assert isinstance(deliveries, WebhookDeliveries)
    assert isinstance(loops[LoopName.JOBS], JobReaper)
    await deliveries.close()


async def test_webhook_delivered(harness: Harness, client: httpx.AsyncClient, hooks: tuple[Hooks, str]) -> None:
    receiver, url = hooks
    async with pool(harness) as deliveries:
        job_id = await finished_with_webhook(harness, client, url)
        await deliver(deliveries)
        row = await must_job(harness, job_id)
        assert (row.webhook_state, row.webhook_attempts, row.webhook_error) == (WebhookState.DELIVERED, 1, "")
        assert len(receiver.bodies) == 1
        assert receiver.bodies[0]["id"] == job_id
        assert (receiver.bodies[0]["status"], receiver.bodies[0]["output"]) == ("COMPLETED", {"answer": 42})
        await deliver(deliveries)
        assert len(receiver.bodies) == 1  # delivered once


async def test_webhook_retries_with_backoff_then_fails(
    harness: Harness, client: httpx.AsyncClient, hooks: tuple[Hooks, str]
) -> None:
    receiver, url = hooks
    receiver.codes = [500]
    async with pool(harness, webhook_max_attempts=3) as deliveries:
        job_id = await finished_with_webhook(harness, client, url)
        for attempt in (1, 2):
            await deliver(deliveries)
            row = await must_job(harness, job_id)
            assert (row.webhook_state, row.webhook_attempts) == (WebhookState.PENDING, attempt)
            assert row.webhook_error.startswith(f"POST {url} answered 500")
            assert row.webhook_next_at is not None
            wait = (row.webhook_next_at - row.modified_at).total_seconds()
            assert 2 ** (attempt - 1) - 0.5 < wait <= 2 ** (attempt - 1)  # 1 s, then 2 s
            await deliver(deliveries)  # not due yet: nothing is sent
            assert len(receiver.bodies) == attempt
            await set_job(harness, job_id, webhook_next_at=utcnow())
        await deliver(deliveries)
    row = await must_job(harness, job_id)
    assert (row.webhook_state, row.webhook_attempts) == (WebhookState.FAILED, 3)
    assert "answered 500" in row.webhook_error
    assert len(receiver.bodies) == 3


async def test_webhook_unreachable_is_an_error(harness: Harness, client: httpx.AsyncClient) -> None:
    with serving(Starlette()) as url:
        gone = f"{url}/hook"
    async with pool(harness) as deliveries:
        job_id = await finished_with_webhook(harness, client, gone)
        await deliver(deliveries)
    row = await must_job(harness, job_id)
    assert (row.webhook_state, row.webhook_attempts) == (WebhookState.PENDING, 1)
    assert row.webhook_error.startswith(f"POST {gone} failed: ConnectError")


def refusal(what: str) -> str:
    return f"refused: {what}; the operator may allow it with {ALLOW}"


@pytest.mark.parametrize(
    "spelling",
    ["127.0.0.1:{port}", "localhost:{port}", "127.1:{port}", "2130706433:{port}", "admin API", "169.254.169.254"],
)
async def test_ssrf_webhooks_are_refused_at_run_or_at_delivery(
    harness: Harness, client: httpx.AsyncClient, hooks: tuple[Hooks, str], spelling: str
) -> None:
    """The attack as found: a tenant's webhook at the server's own host, its admin API, or the cloud metadata
    service. What `run` can judge without DNS it refuses, naming `webhook`; a name is refused where it is
    connected to, the reason on the job. The receiver on 127.0.0.1 gets nothing either way."""
    receiver, url = hooks
    if spelling == "admin API":
        target = f"{harness.context.settings.resolved_public_url}/admin/v1/organizations"
    else:
        target = f"http://{spelling.format(port=port_of(url))}/hook"
    async with pool(harness, allowed_hosts="external") as deliveries:
        endpoint_id = await make_endpoint(client)
        answer = await client.post(f"/v2/{endpoint_id}/run", json={"input": 1, "webhook": target})
        if spelling.startswith("localhost"):
            job_id = answer.json()["id"]
            await take(harness, endpoint_id)
            await finish(harness, job_id, JobStatus.COMPLETED, output=1)
            await deliver(deliveries)
            row = await must_job(harness, job_id)
            assert (row.webhook_state, row.webhook_attempts) == (WebhookState.FAILED, 1)
            loopback = re.escape(refusal("localhost resolves to ADDRESS, a loopback address"))
            assert re.fullmatch(loopback.replace("ADDRESS", r"(127\.0\.0\.1|::1)"), row.webhook_error)
        else:
            body = assert_error(answer, 422, "webhook")
            kind = "a cloud metadata" if spelling.startswith("169") else "a loopback"
            assert body["details"][0]["message"].endswith(f"is {kind} address; the operator may allow it with {ALLOW}")
    assert receiver.bodies == []


@pytest.mark.parametrize(
    ("spelling", "why"),
    [
        ("127.0.0.1:{port}", "127.0.0.1 is a loopback address"),
        ("127.1:{port}", "127.0.0.1 is a loopback address"),
        ("2130706433:{port}", "127.0.0.1 is a loopback address"),
        ("0x7f.1:{port}", "127.0.0.1 is a loopback address"),
        ("[::ffff:127.0.0.1]:{port}", "::ffff:7f00:1 (IPv4 127.0.0.1) is a loopback address"),
        ("0.0.0.0:{port}", "0.0.0.0 is an unspecified address"),
        ("169.254.169.254", "169.254.169.254 is a cloud metadata address"),
        ("[fd00:ec2::254]", "fd00:ec2::254 is a cloud metadata address"),
        ("10.0.0.1:{port}", "10.0.0.1 is a private address"),
    ],
)
async def test_delivery_refuses_every_spelling_that_run_would_have(
    harness: Harness, client: httpx.AsyncClient, hooks: tuple[Hooks, str], spelling: str, why: str
) -> None:
    """A job recorded before webhooks were checked at `run` (or by any other way) is judged again where the
    connection is made; a refusal is final: FAILED at once with the reason, not retried."""
    receiver, url = hooks
    target = f"http://{spelling.format(port=port_of(url))}/hook"
    async with pool(harness, allowed_hosts="external") as deliveries:
        job_id = await finished_with_webhook(harness, client, "http://hooks.example/done")
        await set_job(harness, job_id, webhook=target)
        await deliver(deliveries)
        row = await must_job(harness, job_id)
        assert (row.webhook_state, row.webhook_attempts, row.webhook_next_at) == (WebhookState.FAILED, 1, None)
        assert row.webhook_error == refusal(why)
    assert receiver.bodies == []


@pytest.mark.parametrize("allowed", ["loopback", "127.0.0.0/8", "external,localhost"])
async def test_the_allow_list_lets_a_local_receiver_have_it(
    harness: Harness, client: httpx.AsyncClient, hooks: tuple[Hooks, str], allowed: str
) -> None:
    receiver, url = hooks
    async with pool(harness, allowed_hosts=allowed) as deliveries:
        job_id = await finished_with_webhook(harness, client, f"http://localhost:{port_of(url)}/hook")
        await deliver(deliveries)
    row = await must_job(harness, job_id)
    assert (row.webhook_state, row.webhook_error) == (WebhookState.DELIVERED, "")
    assert [body["id"] for body in receiver.bodies] == [job_id]


async def test_two_pools_deliver_a_job_once(
    harness: Harness, client: httpx.AsyncClient, hooks: tuple[Hooks, str]
) -> None:
    """Two servers' pools (a change of leader) claim with guarded writes: the job is posted once."""
    receiver, url = hooks
    async with pool(harness) as first, pool(harness) as second:
        job_id = await finished_with_webhook(harness, client, url)
        await asyncio.gather(first.reconcile_once(), second.reconcile_once())
        await asyncio.gather(*first.deliveries, *second.deliveries)
    row = await must_job(harness, job_id)
    assert (row.webhook_state, row.webhook_attempts) == (WebhookState.DELIVERED, 1)
    assert len(receiver.bodies) == 1


async def test_a_delivery_cut_off_by_a_stop_is_made_again(harness: Harness, client: httpx.AsyncClient) -> None:
    async with stalling(hang=1) as (receiver, url):
        async with pool(harness) as first:
            job_id = await finished_with_webhook(harness, client, url)
            await first.reconcile_once()

            async def connected() -> bool:
                return receiver.accepted == 1

            await until("the first delivery reaches the receiver", connected)
        # The server stopped mid-delivery: the job keeps its claim, then is due again once the claim ran out.
        row = await must_job(harness, job_id)
        assert (row.webhook_state, row.webhook_attempts) == (WebhookState.PENDING, 1)
        assert row.webhook_next_at is not None
        assert row.webhook_next_at > utcnow() + timedelta(seconds=30)
        async with pool(harness) as second:
            await deliver(second)
            assert receiver.accepted == 1  # still claimed: not taken by another pass
            await set_job(harness, job_id, webhook_next_at=utcnow())
            await deliver(second)
    row = await must_job(harness, job_id)
    assert (row.webhook_state, row.webhook_attempts, row.webhook_error) == (WebhookState.DELIVERED, 2, "")
    assert (receiver.accepted, receiver.answered) == (2, 1)


async def test_a_claim_that_ran_out_on_the_last_attempt_fails(harness: Harness, client: httpx.AsyncClient) -> None:
    async with pool(harness, webhook_max_attempts=2) as deliveries:
        job_id = await finished_with_webhook(harness, client, "http://hooks.example/done")
        await set_job(harness, job_id, webhook_attempts=2)  # claimed for its last attempt, then the server died
        await deliver(deliveries)
    row = await must_job(harness, job_id)
    assert (row.webhook_state, row.webhook_attempts) == (WebhookState.FAILED, 2)
    assert row.webhook_error == "given up after 2 attempts; the last one ended with the server that made it"


async def webhook_states(harness: Harness, endpoint_id: str) -> dict[WebhookState, int]:
    async with harness.context.db.read() as session:
        rows = await session.execute(
            select(JobModel.webhook_state, func.count())
            .where(JobModel.endpoint_id == endpoint_id)
            .group_by(JobModel.webhook_state)
        )
        return {state: count for state, count in rows}


async def test_hanging_receivers_of_one_org_hold_up_neither_another_org_nor_the_reaper(
    harness: Harness, client: httpx.AsyncClient, hooks: tuple[Hooks, str]
) -> None:
    """The stall as found: 64 webhooks of org A to a receiver that accepts and never answers. Org B's webhook is
    delivered, and B's job with a 1 s execution timeout is TIMED_OUT, while every one of A's still hangs."""
    receiver, url = hooks
    settings = harness.context.settings
    settings.webhook_allowed_hosts = "loopback"
    settings.webhook_timeout = 300.0  # A's receivers hang for the whole test
    per_org = settings.webhook_concurrency_per_org
    reaper, deliveries = JobReaper(harness.context, interval=0.1), WebhookDeliveries(harness.context, interval=0.1)
    supervisor = Supervisor(harness.context.db, CollectorRegistry())
    waker, harness.context.waker = harness.context.waker, supervisor.wake
    other = await harness.new_client("beta")
    try:
        async with stalling(hang=10**6) as (hanging, hanging_url):
            endpoint_a = await make_endpoint(client)
            for _ in range(64):
                await finished_with_webhook(harness, client, hanging_url, endpoint_a)
            await supervisor.start([reaper, deliveries])

            async def a_hangs() -> bool:
                return hanging.open >= per_org

            await until("org A's deliveries hang", a_hangs)
            endpoint_b = await make_endpoint(other)
            late = await submit(other, endpoint_b, {"input": 1, "policy": {"executionTimeout": 5000}})
            await set_job(harness, late, execution_timeout_ms=1000)  # under RunPod's 5 s minimum, as found: 1 s
            await take(harness, endpoint_b, "w-late")
            hooked = await finished_with_webhook(harness, other, url, endpoint_b)
            harness.context.wake(LoopName.JOB_WEBHOOKS)  # as a worker's job-done does

            async def b_delivered() -> bool:
                return bool(receiver.bodies)

            await until("org B's webhook is delivered", b_delivered)
            assert [body["id"] for body in receiver.bodies] == [hooked]
            assert (hanging.accepted, hanging.open, hanging.answered) == (per_org, per_org, 0)  # A's own slots only
            assert await webhook_states(harness, endpoint_a) == {WebhookState.PENDING: 64}

            async def b_timed_out() -> bool:
                return (await must_job(harness, late)).status == JobStatus.TIMED_OUT

            await until("org B's job is TIMED_OUT", b_timed_out)
            assert (hanging.open, hanging.answered) == (per_org, 0)  # A's still hang
            assert await webhook_states(harness, endpoint_a) == {WebhookState.PENDING: 64}
            await supervisor.stop()
    finally:
        harness.context.waker = waker
        await other.aclose()


async def test_scarce_slots_go_round_robin_between_organizations(harness: Harness, client: httpx.AsyncClient) -> None:
    """Two slots, three organizations with deliveries due: one slot each for two of them, then the third goes
    first, whatever the order their jobs came in."""
    clients = [client, await harness.new_client("beta"), await harness.new_client("gamma")]
    try:
        async with (
            stalling(hang=10**6) as (_, hanging_url),
            pool(harness, webhook_concurrency=2, webhook_concurrency_per_org=2) as deliveries,
        ):
            jobs = [await finished_with_webhook(harness, tenant, hanging_url) for tenant in clients for _ in range(3)]
            served: list[set[str]] = []
            for _ in range(2):
                await deliveries.reconcile_once()
                served.append(set(deliveries.deliveries.values()))
                for task in deliveries.deliveries:
                    task.cancel()
                await asyncio.gather(*deliveries.deliveries, return_exceptions=True)
                async with harness.context.db.write() as session:  # the claims ran out
                    await session.execute(update(JobModel).values(webhook_next_at=utcnow()))
        assert len(served[0]) == 2
        orgs = {(await must_job(harness, job_id)).org_id for job_id in jobs}
        assert (orgs - served[0]) <= served[1]
        assert len(served[1]) == 2
    finally:
        for other in clients[1:]:
            await other.aclose()


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_failed_delivery_writes_no_credentials(
    harness: Harness,
    client: httpx.AsyncClient,
    hooks: tuple[Hooks, str],
    caplog: pytest.LogCaptureFixture,
    scheme: str,
) -> None:
    """The URL's userinfo and query values appear nowhere: not in the log line, not in the stored error, not even
    where the receiver's answer quoted them (http: a 500 quoting the URL; https: the plain receiver fails TLS)."""
    receiver, url = hooks
    receiver.codes, receiver.echo = [500], True
    port = port_of(url)
    secret_url = f"{scheme}://hook-user:pa55-s3cret@127.0.0.1:{port}/hook?token=tok-s3cret"
    async with pool(harness, webhook_max_attempts=1) as deliveries:
        job_id = await finished_with_webhook(harness, client, secret_url)
        with caplog.at_level(logging.WARNING, logger="dockyard"):
            await deliver(deliveries)
    row = await must_job(harness, job_id)
    assert row.webhook_state == WebhookState.FAILED
    shown = f"{scheme}://***@127.0.0.1:{port}/hook?token=***"
    assert shown in row.webhook_error
    assert shown in caplog.text
    for secret in ("hook-user", "pa55-s3cret", "tok-s3cret"):
        assert secret not in row.webhook_error
        assert secret not in caplog.text
    if scheme == "http":
        assert len(receiver.bodies) == 1
        assert f'answered 500: {{"called":"http://127.0.0.1:{port}/hook?token=***"}}' in row.webhook_error
