"""Several servers on one real PostgreSQL database, each a `create_app` with its own context and bus: what one
commits wakes what waits on another at once, through LISTEN/NOTIFY, never through a poll. Every wait these tests
make is set far longer than the bound they allow (`FAR`), so an answer within the bound is a wake-up, not a timeout
or a periodic read; and a server that does not hold the control lease still routes what the others change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockyard.app import create_app
from dockyard.config import Settings
from dockyard.context import ServerContext
from dockyard.core.status import ContainerStatus
from dockyard.db.models import EndpointModel, IdcModel
from dockyard.gateway_app import create_gateway_app
from dockyard.serving.front import Front
from tests.api.test_endpoints import create
from tests.api.test_worker_webhooks import BASE, add_worker
from tests.conftest import ADMIN_TOKEN, Harness
from tests.fakes import FakeRuntime
from tests.pg import PostgresServer, postgres_available
from tests.reconcilers.conftest import make_containers, make_template, must_row

FAR = 60.0  # every wait and interval that a poll could hide behind
BOUND = 4.0  # what a wake-up through the bus may take here, on a loaded machine (it takes milliseconds)


@pytest.fixture
async def url(postgres: PostgresServer | None) -> str:
    if postgres is None:
        pytest.skip(f"PostgreSQL skipped: {postgres_available()}")
    return await postgres.create_database()


def settings_for(url: str, tmp_path: Path, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": url,
        "admin_token": ADMIN_TOKEN,
        "public_address": "127.0.0.1",
        "run_reconcilers": False,
        "engine_url": "unix:///nonexistent.sock",
        "job_take_wait_seconds": FAR,
        "gateway_sync_interval": FAR * 60,
    }
    return Settings(**{**base, **values})


@asynccontextmanager
async def server(settings: Settings, runtime: FakeRuntime | None = None) -> AsyncIterator[Harness]:
    """One server over `settings`, started (its lifespan run) until the block ends; its runtimes are `runtime`."""
    fake = runtime or FakeRuntime()

    def factory(idc: IdcModel, context: ServerContext) -> FakeRuntime:
        fake.installation_id = context.installation_id
        return fake

    app = create_app(settings, runtime_factory=factory)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        admin = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url=BASE, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        )
        harness = Harness(app=app, client=admin, admin=admin)
        yield harness


def as_client_of(harness: Harness, client: httpx.AsyncClient) -> httpx.AsyncClient:
    """`client`'s key, on `harness`'s server."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=harness.app),
        base_url=BASE,
        headers={"Authorization": client.headers["Authorization"]},
    )


async def within(bound: float, check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until `check()` holds, failing after `bound` seconds."""
    async with asyncio.timeout(bound):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def test_a_job_queued_on_one_server_wakes_a_take_held_on_another_and_a_runsync_on_a_third(
    url: str, tmp_path: Path
) -> None:
    settings = settings_for(url, tmp_path)
    async with (
        server(settings) as a,
        server(settings.model_copy()) as b,
        server(settings.model_copy()) as c,
        await a.new_client("acme") as on_a,
        as_client_of(b, on_a) as on_b,
        as_client_of(c, on_a) as on_c,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=b.app), base_url=BASE) as raw_b,
    ):
        endpoint_id = await create(on_a, type="async")
        worker = await add_worker(a, raw_b, endpoint_id, sdk="RUNPOD")  # its SDK calls server B

        # runsync on C: the job it queues is handed to the take held on B, and the result posted to B answers C.
        held = asyncio.create_task(worker.take())
        await asyncio.sleep(0.3)
        assert not held.done()
        runsync = asyncio.create_task(
            on_c.post(f"/v2/{endpoint_id}/runsync", params={"wait": int(FAR * 1000)}, json={"input": {"n": 1}})
        )
        taken = await asyncio.wait_for(held, BOUND)
        assert taken.status_code == 200, taken.text
        job_id = taken.json()["id"]
        assert taken.json()["input"] == {"n": 1}
        assert not runsync.done()
        assert (await worker.done(job_id, {"output": {"echo": 1}})).status_code == 200
        # C reads the database again every few seconds anyway: the bound is well inside that slice.
        answer = await asyncio.wait_for(runsync, BOUND)
        assert answer.json()["id"] == job_id
        assert (answer.json()["status"], answer.json()["output"]) == ("COMPLETED", {"echo": 1})

        # A job submitted through A's API ends a take held on B.
        held = asyncio.create_task(worker.take())
        await asyncio.sleep(0.3)
        assert not held.done()
        submitted = await on_a.post(f"/v2/{endpoint_id}/run", json={"input": {"n": 2}})
        assert submitted.status_code == 200, submitted.text
        taken = await asyncio.wait_for(held, BOUND)
        assert taken.json()["id"] == submitted.json()["id"]

        # A cancel through A answers the worker's stop poll held on B.
        stop_poll = asyncio.create_task(worker.stop_signals())
        await asyncio.sleep(0.3)
        assert not stop_poll.done()
        cancelled = await on_a.post(f"/v2/{endpoint_id}/cancel/{submitted.json()['id']}")
        assert cancelled.json()["status"] == "CANCELLED", cancelled.text
        stop = await asyncio.wait_for(stop_poll, BOUND)
        assert stop.json() == {"jobsToStop": [submitted.json()["id"]]}
        await on_b.aclose()


async def test_a_container_created_on_a_follower_is_placed_by_the_leader_at_once(url: str, tmp_path: Path) -> None:
    settings = settings_for(url, tmp_path, run_reconcilers=True, reconcile_interval=FAR)
    leader_runtime = FakeRuntime()
    async with server(settings, leader_runtime) as leader:
        await within(BOUND * 2, lambda: _passed(leader))
        async with server(settings.model_copy()) as follower, await follower.new_client("acme") as on_follower:
            (container_id,) = await make_containers(on_follower, await make_template(on_follower))

            async def running() -> bool:
                return (await must_row(follower, container_id)).status == ContainerStatus.RUNNING

            await within(BOUND, running)  # the containers loop's next tick is FAR away
            assert [obj.labels["dockyard.id"] for obj in leader_runtime.objects.values()] == [container_id]
            assert await _passed(follower, "containers") is False  # the follower ran no pass


async def _passed(harness: Harness, loop: str = "containers") -> bool:
    """Whether `harness`'s server finished a pass of `loop`: it leads, and the pass that taking the lease started
    is over, so what comes next is seen by a pass that a wake-up starts."""
    passes = harness.context.registry.get_sample_value(
        "dockyard_reconcile_passes_total", {"loop": loop, "result": "ok"}
    )
    return bool(passes)


async def test_an_endpoint_changed_on_one_server_reaches_a_followers_table_at_once(url: str, tmp_path: Path) -> None:
    settings = settings_for(url, tmp_path, run_reconcilers=True, reconcile_interval=FAR)
    async with server(settings) as leader:
        await within(BOUND * 2, lambda: _passed(leader, "endpoints"))
        async with server(settings.model_copy()) as follower, await leader.new_client("acme") as on_leader:
            endpoint_id = await create(on_leader, worker_config={"min_replicas": 0, "max_replicas": 1})

            async def served(limit: int | None = None) -> bool:
                route = follower.routes.get(endpoint_id)
                return route is not None and limit in (None, route.config.max_concurrent_per_worker)

            await within(BOUND, served)  # read at the follower's start, or on the bus: its periodic sync is hours away
            assert not await served(3)
            body = {"worker_config": {"min_replicas": 0, "max_replicas": 1, "max_concurrent_per_worker": 3}}
            for _ in range(10):  # the leader's loops write the row too: a conflicting update is answered 409
                answer = await on_leader.put(f"/gpus/v2/endpoints/{endpoint_id}", json=body)
                if answer.status_code != 409:
                    break
            assert answer.status_code == 200, answer.text
            await within(BOUND, lambda: served(3))


async def test_a_server_started_beside_a_leader_routes_every_endpoint_before_it_serves(
    url: str, tmp_path: Path
) -> None:
    # A server restarted while another leads answered 404 for every endpoint until its first try for the lease
    # switched it to a follower (seen under SIGKILLs in tests/test_chaos.py): its table is read before it serves.
    settings = settings_for(url, tmp_path, run_reconcilers=True, reconcile_interval=FAR, lease_seconds=FAR)
    async with server(settings) as leader, await leader.new_client("acme") as on_leader:
        await within(BOUND * 2, lambda: _passed(leader, "endpoints"))
        endpoint_id = await create(on_leader, worker_config={"min_replicas": 0, "max_replicas": 1})
        async with server(settings.model_copy()) as late:
            assert endpoint_id in late.routes  # no wait: its lifespan, which ends before it serves, read the table


@asynccontextmanager
async def standalone_gateway(settings: Settings) -> AsyncIterator[Front]:
    front = create_gateway_app(settings)
    assert isinstance(front, Front)
    async with front.api.router.lifespan_context(front.api):  # type: ignore[attr-defined]
        yield front


async def test_a_standalone_gateway_learns_of_endpoints_at_once_and_its_demand_wakes_the_leaders_autoscaler(
    url: str, tmp_path: Path
) -> None:
    settings = settings_for(url, tmp_path, run_reconcilers=True, reconcile_interval=FAR, autoscale_interval=FAR)
    async with server(settings) as leader:
        await within(BOUND * 2, lambda: _passed(leader, "autoscaler"))
        async with (
            standalone_gateway(settings.model_copy()) as gateway,
            await leader.new_client("acme") as on_leader,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gateway),
                base_url=BASE,
                headers={"Authorization": on_leader.headers["Authorization"]},
            ) as on_gateway,
        ):
            endpoint_id = await create(on_leader, worker_config={"min_replicas": 0, "max_replicas": 1})

            async def served() -> bool:
                return endpoint_id in gateway.routes

            await within(BOUND, served)  # the gateway's periodic sync is hours away

            async def wanted() -> bool:
                async with leader.context.db.read() as session:
                    row = await session.get(EndpointModel, endpoint_id)
                    return row is not None and row.desired_replicas == 1

            assert not await wanted()
            request = asyncio.create_task(on_gateway.get(f"/{endpoint_id}/hello"))  # waits for a worker
            try:
                await within(BOUND, wanted)  # the autoscaler's next tick is FAR away
            finally:
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
