"""The multi_server group: two `dockyard server` processes on one PostgreSQL (bench/postgres.py), as
docs/load-balancing.md runs them, and what that costs or buys.

- Submissions: durable `run` submissions per second, by the async_jobs group's method (wrk POSTs `run` to an
  endpoint no worker takes from; the durable count is the endpoint's `inQueue` before and after), with one wrk on
  each server at once.
- Hand-off across servers: one warm worker (bench/job_worker.py) whose webhooks reach server B only, so its
  job-take is held there; each job is submitted with `run` on server A, one at a time. From the job's
  `created_at` to its claim (`started_at`) and to the worker's clock when it read the job.
- Gateway: two `dockyard gateway` processes in front of one no-op worker, wrk on both at once, with
  `DOCKYARD_GLOBAL_CONCURRENCY` 0 and then 1: the cost of holding `max_concurrent_per_worker` across gateways.
- Failover: the lease holder is killed with SIGKILL `FAILOVER_KILLS` times (and started again each time); from
  the kill to the first reconcile pass on the other server, seen in its `dockyard_reconcile_passes` counter."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import select

from bench import podman, processes, wrk
from bench.async_jobs import INPUT, SUBMIT_CONNECTIONS, _endpoint, _job_times, _queued, _wrk_post, build_worker_image
from bench.dockyard_server import START_TIMEOUT_S, create_key
from bench.dockyard_target import _endpoint_request
from bench.group import Section, Settings
from bench.latency import percentile
from bench.postgres import postgres
from dockyard.client import Client
from dockyard.config import new_token
from dockyard.db.models import LeaseModel, SettingModel
from dockyard.db.session import Database
from dockyard.reconcilers.supervisor import LEASE_NAME
from dockyard.services.worker_runspec import CONTAINER_HOST

HANDOFF_JOBS = 20
# A job-take held on server B is woken by a job committed on A through the bus (LISTEN/NOTIFY); were that signal
# lost, the take would end at this wait and the worker take again, so a hand-off near this figure says so. Shorter
# than the default 20 s only so that this group ends in minutes even then.
TAKE_WAIT_S = 5
HANDOFF_POLL_S = 0.005
GATEWAY_CONNECTIONS = 64  # over the two gateways
FAILOVER_KILLS = 20
FAILOVER_TIMEOUT_S = 90.0
LEASE_SECONDS = "3"
PASSES = re.compile(r"^dockyard_reconcile_passes_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


@dataclass
class Node:
    """One `dockyard server` or `dockyard gateway` process, restartable on its port."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = processes.start(self.command, self.log, self.env)
        processes.wait_http(f"{self.url}/healthz", self.process, self.log, START_TIMEOUT_S)

    def kill(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process)


@dataclass
class Results:
    submissions_per_s: float | None = None
    submissions: int = 0
    claimed_ms: list[float] = field(default_factory=list)
    received_ms: list[float] = field(default_factory=list)
    gateway: dict[str, wrk.Measurement] = field(default_factory=dict)  # by the setting's value
    failover_s: list[float] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


@contextmanager
def started(node: Node) -> Iterator[Node]:
    try:
        node.start()
        yield node
    finally:
        node.stop()


def server_node(workdir: Path, name: str, shared: dict[str, str], port: int) -> Node:
    data = workdir / name
    data.mkdir(mode=0o700)
    env = {**shared, "DOCKYARD_DATA_DIR": str(data), "DOCKYARD_PORT": str(port)}
    command = [sys.executable, "-m", "dockyard", "server", "--host", "0.0.0.0", "--port", str(port)]
    return Node(name, command, env, port, data / "server.log")


def gateway_node(workdir: Path, name: str, shared: dict[str, str], global_limit: str) -> Node:
    data = workdir / f"{name}-{global_limit}"
    data.mkdir(mode=0o700)
    port = processes.free_port()
    env = {**shared, "DOCKYARD_DATA_DIR": str(data), "DOCKYARD_GLOBAL_CONCURRENCY": global_limit}
    command = [sys.executable, "-m", "dockyard", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    return Node(name, command, env, port, data / "gateway.log")


async def lease_holder_pid(database_url: str) -> int | None:
    """The process id of the server holding the control loops' lease, from the lease row (its holder is the
    supervisor's `host:pid:nonce`); None when the lease has run out."""
    db = Database(database_url)
    try:
        async with db.read() as session:
            row = await session.scalar(select(LeaseModel).where(LeaseModel.name == LEASE_NAME))
    finally:
        await db.dispose()
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    return int(row.holder.split(":")[1]) if expires > datetime.now(UTC) else None


def reconcile_passes(node: Node, token: str) -> float:
    """Every reconcile pass `node` has run (all loops, all results), from its `/metrics`."""
    answer = httpx.get(f"{node.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    answer.raise_for_status()
    return sum(float(value) for value in PASSES.findall(answer.text))


def measure_submissions(a: Node, b: Node, key: str, settings: Settings, workdir: Path, results: Results) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    script = workdir / "run.lua"
    body = '{"input": {"prompt": "bench"}}'
    script.write_text(f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n")
    with Client(a.url, key) as client:
        endpoint_id = str(client.create_endpoint(_endpoint("bench-queue", podman.BASE_IMAGE, 0))["id"])

    def both(duration_s: float) -> list[float]:
        seconds: list[float] = []

        def one(node: Node) -> None:
            seconds.append(_wrk_post(f"{node.url}/v1/{endpoint_id}/run", headers, duration_s, script)[1])

        threads = [threading.Thread(target=one, args=(node,)) for node in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return seconds

    with httpx.Client(base_url=a.url, headers=headers, timeout=30) as api:
        both(settings.warmup_s)
        before = _queued(api, endpoint_id)
        seconds = both(settings.duration_s)
        time.sleep(0.5)
        results.submissions = _queued(api, endpoint_id) - before
    results.submissions_per_s = results.submissions / max(seconds)
    print(f"bench:   {results.submissions_per_s:,.0f} durable run/s over two servers", flush=True)


def measure_handoffs(a: Node, key: str, database_url: str, results: Results) -> None:
    image = build_worker_image()
    headers = {"Authorization": f"Bearer {key}"}
    with Client(a.url, key) as client:
        endpoint_id = str(client.create_endpoint(_endpoint("bench-handoff", image, 1))["id"])
        client.wait_for_endpoint(endpoint_id, timeout=START_TIMEOUT_S)
    job_ids = []
    with httpx.Client(base_url=a.url, headers=headers, timeout=30) as api:
        time.sleep(1.0)  # the worker's first job-take is held on B
        for _ in range(HANDOFF_JOBS):
            answer = api.post(f"/v1/{endpoint_id}/run", json={"input": INPUT})
            answer.raise_for_status()
            job_id = str(answer.json()["id"])
            deadline = time.monotonic() + TAKE_WAIT_S * 4
            while api.get(f"/v1/{endpoint_id}/status/{job_id}").json()["status"] != "COMPLETED":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} did not complete within {TAKE_WAIT_S * 4} s")
                time.sleep(HANDOFF_POLL_S)
            job_ids.append(job_id)
            time.sleep(0.05)  # the worker back in its held job-take on B
    for created, claimed, received in asyncio.run(_job_times(database_url, job_ids)):
        results.claimed_ms.append((claimed - created).total_seconds() * 1000)
        results.received_ms.append((received - created.timestamp()) * 1000)
    print(f"bench:   hand-off across servers p50 {percentile(results.received_ms, 0.5):.1f} ms", flush=True)


def measure_gateways(
    workdir: Path, shared: dict[str, str], a: Node, key: str, settings: Settings, results: Results
) -> None:
    with Client(a.url, key) as client:
        endpoint_id = str(client.create_endpoint(_endpoint_request(podman.build_noop_image()))["id"])
        client.wait_for_endpoint(endpoint_id, timeout=START_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {key}"}
    for global_limit in ("0", "1"):
        with ExitStack() as stack:
            gateways = [
                stack.enter_context(started(gateway_node(workdir, f"gateway-{i}", shared, global_limit)))
                for i in (1, 2)
            ]
            urls = [f"{gateway.url}/{endpoint_id}/noop" for gateway in gateways]
            for url in urls:
                _wait_ok(url, headers)
            runs: list[wrk.Measurement] = []

            def drive(url: str, duration_s: float, into: list[wrk.Measurement]) -> None:
                into.append(wrk.run(url, GATEWAY_CONNECTIONS // 2, duration_s, headers))

            for duration_s, into in ((settings.warmup_s, []), (settings.duration_s, runs)):
                threads = [threading.Thread(target=drive, args=(url, duration_s, into)) for url in urls]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            results.gateway[global_limit] = _combined(runs)
            rate = results.gateway[global_limit].requests_per_s
            print(f"bench:   gateways, global limit {global_limit}: {rate:,.0f} req/s", flush=True)


def _combined(runs: list[wrk.Measurement]) -> wrk.Measurement:
    """Two simultaneous wrk runs as one: their rates and errors summed, the worse of their percentiles."""
    first, second = runs
    return wrk.Measurement(
        connections=first.connections + second.connections,
        requests_per_s=first.requests_per_s + second.requests_per_s,
        p50_ms=max(first.p50_ms, second.p50_ms),
        p99_ms=max(first.p99_ms, second.p99_ms),
        non_2xx=first.non_2xx + second.non_2xx,
        socket_errors=first.socket_errors + second.socket_errors,
    )


def _wait_ok(url: str, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(url, headers=headers, timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise processes.StartFailed(f"{url} did not answer 200")
        time.sleep(0.2)


def measure_failover(nodes: list[Node], database_url: str, token: str, results: Results) -> None:
    def holder() -> Node | None:
        pid = asyncio.run(lease_holder_pid(database_url))
        return next((node for node in nodes if node.process is not None and node.process.pid == pid), None)

    for _ in range(FAILOVER_KILLS):
        leader = _until(holder, FAILOVER_TIMEOUT_S, "a server holding the lease")
        other = next(node for node in nodes if node is not leader)
        before = reconcile_passes(other, token)
        leader.kill()
        killed = time.monotonic()
        _until(partial(_passed, other, token, before), FAILOVER_TIMEOUT_S, "a pass on the other server")
        results.failover_s.append(time.monotonic() - killed)
        leader.start()
    print(
        f"bench:   failover p50 {percentile(results.failover_s, 0.5):.2f} s, max {max(results.failover_s):.2f} s",
        flush=True,
    )


def _passed(node: Node, token: str, before: float) -> bool:
    return reconcile_passes(node, token) > before


def _until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout_s:g} s: {what}")
        time.sleep(every_s)
    return value


def _measure(settings: Settings, workdir: Path) -> Results:
    results = Results()
    print("bench: two servers on PostgreSQL", flush=True)
    try:
        with podman.engine_service(workdir) as engine_url, ExitStack() as stack:
            database_url = stack.enter_context(postgres())
            token = new_token()
            a_port, b_port = processes.free_port(), processes.free_port()
            shared = {
                "DOCKYARD_DATABASE_URL": database_url,
                "DOCKYARD_ENGINE_URL": engine_url,
                "DOCKYARD_SECRET_KEY": Fernet.generate_key().decode(),
                "DOCKYARD_METRICS_TOKEN": token,
                "DOCKYARD_LOG_LEVEL": "warning",
                "DOCKYARD_LEASE_SECONDS": LEASE_SECONDS,
                "DOCKYARD_JOB_TAKE_WAIT_SECONDS": str(TAKE_WAIT_S),
                "DOCKYARD_QUOTA_QUEUED_JOBS": str(2**31 - 1),
                # Every worker's webhooks reach server B: its job-takes are held there.
                "DOCKYARD_WORKER_WEBHOOK_URL": f"http://{CONTAINER_HOST}:{b_port}",
            }
            a = server_node(workdir, "server-a", shared, a_port)
            b = server_node(workdir, "server-b", shared, b_port)
            stack.enter_context(started(a))  # migrates the database before B starts
            stack.enter_context(started(b))
            key = create_key({**os.environ, **a.env}, workdir)
            steps: list[tuple[str, Callable[[], None]]] = [
                ("submissions", lambda: measure_submissions(a, b, key, settings, workdir, results)),
                ("hand-off", lambda: measure_handoffs(a, key, database_url, results)),
                ("gateway", lambda: measure_gateways(workdir, shared, a, key, settings, results)),
                ("failover", lambda: measure_failover([a, b], database_url, token, results)),
            ]
            try:
                for name, step in steps:
                    try:
                        step()
                    except Exception as exc:  # reported in the section; the next step still runs
                        print(f"bench: {name} failed:\n{traceback.format_exc()}", flush=True)
                        results.broken.append(f"{name}: {type(exc).__name__}: {exc}")
            finally:
                _remove_installation(engine_url, database_url)
    except Exception as exc:  # PostgreSQL, the engine or a server did not start: nothing was measured
        print(f"bench: the servers failed:\n{traceback.format_exc()}", flush=True)
        results.broken.append(f"the servers failed: {type(exc).__name__}: {exc}")
    return results


def _remove_installation(engine_url: str, database_url: str) -> None:
    async def installation() -> str | None:
        db = Database(database_url)
        try:
            async with db.read() as session:
                row = await session.get(SettingModel, "installation_id")
                return None if row is None else row.value
        finally:
            await db.dispose()

    if found := asyncio.run(installation()):
        podman.remove_installation_containers(engine_url, found)


def run(settings: Settings, workdir: Path) -> Section:
    results = _measure(settings, workdir)
    return Section(markdown=render(results, settings), broken=results.broken)


def _ms(samples: list[float], fraction: float) -> str:
    return f"{percentile(samples, fraction):.1f}" if samples else "n/a"


def render(results: Results, settings: Settings) -> str:
    off, on = results.gateway.get("0"), results.gateway.get("1")
    parts = [
        "## Two servers on PostgreSQL",
        "",
        "Two `dockyard server` processes on one PostgreSQL 15 (a private server, fsync on) and the local Podman, "
        f"each with its own data dir, `DOCKYARD_LEASE_SECONDS={LEASE_SECONDS}`.",
        "",
        f"Submissions: as the async jobs group, with one wrk (-t{wrk.THREADS}, {SUBMIT_CONNECTIONS} connections) on "
        f"each server at once for {settings.duration_s:g} s after a {settings.warmup_s:g} s warm-up; durable "
        "submissions are the endpoint's `inQueue` after less before, over the longer wrk's measured seconds.",
        "",
        f"Hand-off across servers: one warm worker whose webhooks reach server B only; {HANDOFF_JOBS} jobs submitted "
        f"with `run` on server A one at a time, each polled on A until COMPLETED. `DOCKYARD_JOB_TAKE_WAIT_SECONDS="
        f"{TAKE_WAIT_S}`: where B's held take is not woken by A's submission, the take ends at that wait.",
        "",
        f"Gateway: two `dockyard gateway` processes in front of one no-op worker, wrk with {GATEWAY_CONNECTIONS // 2} "
        "connections on each at once, `DOCKYARD_GLOBAL_CONCURRENCY` 0 then 1 (the gateways restarted between).",
        "",
        f"Failover: the lease holder killed with SIGKILL {FAILOVER_KILLS} times and started again; from the kill to "
        "the first reconcile pass of the other server (its `dockyard_reconcile_passes` counter, polled every 20 ms).",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| durable `run` submissions/s, two servers | "
        f"{f'{results.submissions_per_s:,.0f}' if results.submissions_per_s is not None else 'n/a'} |",
        f"| hand-off A -> B, created -> claimed, p50 / p99 (ms) | {_ms(results.claimed_ms, 0.5)} / "
        f"{_ms(results.claimed_ms, 0.99)} |",
        f"| hand-off A -> B, created -> at the worker, p50 / p99 (ms) | {_ms(results.received_ms, 0.5)} / "
        f"{_ms(results.received_ms, 0.99)} |",
    ]
    for label, run in (("off", off), ("on", on)):
        if run is not None:
            parts.append(
                f"| gateways, global limit {label}: req/s, p50 / p99 (ms), errors | {run.requests_per_s:,.0f}, "
                f"{run.p50_ms:.2f} / {run.p99_ms:.2f}, {run.errors} |"
            )
    failover = [seconds * 1000 for seconds in results.failover_s]
    parts += [
        f"| failover, kill -> first pass elsewhere, p50 / max (ms) | {_ms(failover, 0.5)} / {_ms(failover, 1.0)} |",
        "",
    ]
    return "\n".join(parts)
